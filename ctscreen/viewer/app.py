"""``ctscreen view``: start the viewer, or render one screenshot offscreen and exit."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from ctscreen import RESEARCH_NOTICE

#: The longest a ``--screenshot`` run waits for loading (and analysis) before giving up.
SCREENSHOT_TIMEOUT_S = float(os.environ.get("CTSCREEN_SCREENSHOT_TIMEOUT_S", "600"))
SCREENSHOT_SIZE = (1360, 860)


def apply_reading_room_theme(app: QApplication) -> None:
    """Fusion with a dark palette: a bright frame around a CT image dazzles in a reading room."""
    app.setStyle("Fusion")
    palette = QPalette()
    dark, base, text = QColor(37, 40, 44), QColor(24, 26, 29), QColor(222, 224, 226)
    for role, colour in (
        (QPalette.ColorRole.Window, dark), (QPalette.ColorRole.WindowText, text),
        (QPalette.ColorRole.Base, base), (QPalette.ColorRole.AlternateBase, QColor(32, 35, 38)),
        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, QColor(48, 52, 57)),
        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, QColor(250, 250, 230)),
        (QPalette.ColorRole.ToolTipText, QColor(20, 20, 20)), (QPalette.ColorRole.Highlight, QColor(42, 110, 170)),
        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255)), (QPalette.ColorRole.Link, QColor(90, 170, 240)),
        (QPalette.ColorRole.PlaceholderText, QColor(130, 134, 138)),
    ):
        palette.setColor(role, colour)
    for role in (QPalette.ColorRole.WindowText, QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 120, 120))
    app.setPalette(palette)


def _application() -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(sys.argv[:1])
    app.setOrganizationName("ctscreen")
    app.setApplicationName("ctscreen")
    app.setApplicationDisplayName("ctscreen")
    apply_reading_room_theme(app)
    # pyqtgraph's antialias option would make every repaint draw the slice with smooth
    # scaling, about three times slower; the slice view must follow the mouse wheel.
    return app  # type: ignore[return-value]


def _wait_for(signals: dict[str, object], timeout_s: float, trigger=None) -> str:
    """Run the event loop until one of ``signals`` fires; returns its name, or "timeout".

    ``trigger`` is called once the signals are connected (it may emit one at once).
    """
    loop = QEventLoop()
    fired: list[str] = []
    for name, signal in signals.items():
        signal.connect(lambda *_, n=name: (fired.append(n), loop.quit()))  # type: ignore[attr-defined]
    if trigger is not None:
        trigger()
    if fired:
        return fired[0]
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    return fired[0] if fired else "timeout"


def save_png_atomically(pixmap, out: str | os.PathLike) -> None:
    """Write ``pixmap`` as PNG to ``out`` via a temporary file in the same folder and a rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}-", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        if not pixmap.save(tmp, "PNG"):
            raise OSError(f"could not encode the screenshot as PNG in {out.parent}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a screenshot is an ordinary file
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _screenshot(window, args: Namespace) -> int:
    from ctscreen.viewer.main_window import MainWindow

    assert isinstance(window, MainWindow)
    window.resize(*SCREENSHOT_SIZE)
    window.show()
    deadline = time.monotonic() + SCREENSHOT_TIMEOUT_S
    if args.folder:
        outcome = _wait_for({"loaded": window.volumeLoaded, "failed": window.loadFailed,
                             "cancelled": window.loadCancelled}, SCREENSHOT_TIMEOUT_S)
        if outcome != "loaded":
            reason = window.last_error or f"loading {outcome}"
            print(f"ctscreen view: error: {reason}", file=sys.stderr)
            return 2
        if getattr(args, "analyze", False):
            analysis = window.analysis
            outcome = _wait_for({"done": analysis.finished_ok, "failed": analysis.failed,
                                 "cancelled": analysis.cancelled}, max(1.0, deadline - time.monotonic()),
                                trigger=window.analysis_ui.start)
            if outcome != "done":
                reason = window.last_error or f"analysis {outcome}"
                print(f"ctscreen view: error: {reason}", file=sys.stderr)
                return 2
            if getattr(args, "slice", None) is None:
                # Without --slice, show the slice with the most lesion, as a reader would first look.
                rows = list(analysis.result.measurements.rows)
                if rows:
                    window.slice_view.set_slice(max(rows, key=lambda r: r.lesion_area_mm2).index)
                navigator = window.reading.navigator
                if window.reading.layout.name != "axial":
                    if navigator.busy:
                        _wait_for({"ready": navigator.lesionsReady}, max(1.0, deadline - time.monotonic()))
                    navigator.go_to(0)  # the planes through the largest lesion
    # Let layouts, docks and the deferred tag refresh settle before grabbing.
    end = time.monotonic() + 0.4
    app = QApplication.instance()
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
    try:
        save_png_atomically(window.grab(), args.screenshot)
    except OSError as exc:
        print(f"ctscreen view: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _join_workers(timeout_s: float = 60.0) -> None:
    """Stop background work before the interpreter exits (a running QThread must not be destroyed)."""
    from ctscreen.viewer.worker import running_workers

    for worker in running_workers():
        worker.cancel()
    for worker in running_workers():
        worker.wait(timeout_s)


def run_view(args: Namespace) -> int:
    """Open the viewer on ``args.folder`` (optional); with ``--screenshot`` save a PNG and exit.

    Returns the process exit code.
    """
    screenshot = getattr(args, "screenshot", None)
    if screenshot and "QT_QPA_PLATFORM" not in os.environ:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    app = _application()
    from ctscreen.viewer.main_window import MainWindow

    settings = None
    if screenshot and not os.environ.get("CTSCREEN_SETTINGS_DIR"):
        # A screenshot must not depend on (or change) the user's remembered layout.
        from ctscreen.viewer.settings import ViewerSettings
        tmp_settings = tempfile.TemporaryDirectory(prefix="ctscreen-settings-")
        settings = ViewerSettings(tmp_settings.name)
    window = MainWindow(settings=settings, interactive=not screenshot)
    window.configure_analysis(model=getattr(args, "model", None), device=getattr(args, "device", None))
    if getattr(args, "window", None):
        window.set_preset(args.window)
    if getattr(args, "layout", None):
        window.reading.set_layout(args.layout)
    if args.folder:
        window.open_path(args.folder, getattr(args, "series", None), getattr(args, "slice", None))
    if screenshot:
        try:
            return _screenshot(window, args)
        finally:
            window.close()
            _join_workers()
    window.show()
    if args.folder and getattr(args, "analyze", False):
        def analyze_once(_volume) -> None:  # only the study named on the command line
            window.volumeLoaded.disconnect(analyze_once)
            window.analysis_ui.start()
        window.volumeLoaded.connect(analyze_once)
    print(RESEARCH_NOTICE, file=sys.stderr)
    code = int(app.exec())
    _join_workers()
    return code
