"""Viewer latency, offscreen: open-to-first-slice, slice-change time, GUI stalls during analysis.

Usage::

    QT_QPA_PLATFORM=offscreen python benchmarks/viewer_latency.py FOLDER [--changes 100] [--analyze]

Prints one JSON object:

* ``drop_to_first_slice_s``: from calling ``MainWindow.open_path`` (what a drop
  does) until the first slice is on screen (set and painted); target <= 0.3 s.
* ``drop_to_volume_s``: until the whole series is loaded.
* ``slice_change_ms``: median / p95 / max over ``--changes`` slice changes, each
  ``SliceView.set_slice`` plus ``processEvents`` (which paints; ``paints_per_change``
  says so), lung preset, at the series' size; target median <= 16 ms.
* ``mpr_slice_change_ms``: the same in the 2x2 layout (axial, coronal, sagittal panes
  with the linked crosshair and the z-profile), per pane: ``axial``, ``coronal`` and
  ``sagittal`` each change their own plane (``--changes`` jumps, + processEvents, which
  repaints the pane and the crosshair lines of the others); target median <= 16 ms each.
  With ``--mpr-slices N`` the panes show a volume of N slices made by repeating the
  series' slices at 0.75 mm (e.g. 512: coronal and sagittal images 512 x 512 too, the
  worst case of a thin-slice series); ``image_shapes`` says what was shown.
* ``reference``: measured in the same run on the same slices: the core's
  ``window_to_uint8`` alone, and pyqtgraph's convenience ``ImageView.setImage``
  (int16 data, levels set, + processEvents), with the viewer/ImageView ratio.
* ``torch_warm_up_gui_gap_ms``: GUI-timer gaps while the viewer imports torch in
  the background after the first study appears (so no analysis pays for it).
* with ``--analyze``: ``analysis`` - the longest gap between ticks of a 5 ms
  QTimer on the GUI thread while the lesion analysis runs in the worker and the
  benchmark keeps scrolling every 30 ms (target <= 50 ms), the analysis time,
  and slice-change times with the lesion overlay on afterwards (``slice_change_with_overlay_ms``;
  ``mpr_slice_change_with_overlay_ms``: per pane of the 2x2 layout, lung outline on too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from PySide6.QtCore import QElapsedTimer, QEvent, QEventLoop, QObject, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


class _PaintCounter(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Paint:
            self.count += 1
        return False


def _stats_ms(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1000.0
    return {"median": round(float(np.median(a)), 3), "p95": round(float(np.percentile(a, 95)), 3),
            "max": round(float(a.max()), 3), "n": int(a.size)}


def _pump_until(app: QApplication, condition, timeout_s: float) -> bool:
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.0005)
    return False


def _other_thread_tops(depth: int = 3) -> list[str]:
    me = threading.get_ident()
    tops = []
    for tid, frame in sys._current_frames().items():
        if tid == me:
            continue
        names = []
        while frame is not None and len(names) < depth:
            names.append(f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}")
            frame = frame.f_back
        tops.append(" < ".join(names))
    return tops


def _gaps_until(signal, timeout_s: float) -> list[float]:
    """Gaps (ms) between ticks of a 5 ms GUI timer until ``signal`` fires."""
    loop = QEventLoop()
    signal.connect(lambda *_: loop.quit())
    clock = QElapsedTimer()
    gaps: list[float] = []
    last = [0.0]

    def tick() -> None:
        now = clock.nsecsElapsed() / 1e6
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    clock.start()
    timer.start()
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    timer.stop()
    return gaps[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--analyze", action="store_true", help="also measure GUI stalls during an analysis")
    parser.add_argument("--device", default="cpu", help="analysis device (auto|cpu|cuda)")
    parser.add_argument("--model", default=None, help="analysis model (unet|deeplab)")
    parser.add_argument("--mpr-slices", type=int, default=0,
                        help="time the 2x2 panes on a volume of this many slices (repeated, 0.75 mm); 0: the series")
    args = parser.parse_args(argv)

    app = QApplication.instance() or QApplication(sys.argv[:1])
    import pyqtgraph as pg

    from ctscreen.imaging.windowing import window_to_uint8
    from ctscreen.viewer.main_window import MainWindow
    from ctscreen.viewer.settings import ViewerSettings

    settings_dir = tempfile.TemporaryDirectory(prefix="ctscreen-bench-")
    window = MainWindow(settings=ViewerSettings(settings_dir.name), interactive=False)
    window.resize(1360, 860)
    window.show()
    _pump_until(app, lambda: False, 0.3)
    view = window.slice_view
    painter = _PaintCounter()
    view.graphics.viewport().installEventFilter(painter)

    # -- drop to first slice ----------------------------------------------------------------------
    # The GUI thread idles in an event loop, as in the app; the slice view reports each
    # finished repaint, the first one with an image is "first slice displayed".
    marks: dict[str, float] = {}
    loaded: list[object] = []
    failed: list[str] = []
    loop = QEventLoop()

    def on_painted() -> None:
        if view.image_item.image is not None and "first" not in marks and "t0" in marks:
            marks["first"] = time.perf_counter() - marks["t0"]

    view.graphics.painted.connect(on_painted)
    window.volumeLoaded.connect(lambda v: (loaded.append(v), loop.quit()))
    window.loadFailed.connect(lambda m: (failed.append(m), loop.quit()))
    QTimer.singleShot(600_000, loop.quit)
    marks["t0"] = time.perf_counter()
    window.open_path(args.folder)
    loop.exec()
    t_volume = time.perf_counter() - marks["t0"]
    t_first = marks.get("first", float("nan"))
    if failed or not loaded:
        print(json.dumps({"error": failed[0] if failed else "timed out"}))
        return 2
    volume = loaded[0]
    n = volume.shape[0]
    window.set_preset("lung")

    # The viewer imports torch in the background a second after the first study appears;
    # wait for it (and record how the GUI thread fared meanwhile) before timing slice changes.
    warm_gaps = _gaps_until(window.analysis.warmedUp, 120) if not window.analysis.warm else []
    _pump_until(app, lambda: False, 0.3)

    # -- slice changes ----------------------------------------------------------------------------
    order = [(i * 7) % n for i in range(1, args.changes + 1)]  # jumps, so every change differs
    order = [k if k != order[i - 1] else (k + 1) % n for i, k in enumerate(order)]
    times, paints = [], painter.count
    for k in order:
        t = time.perf_counter()
        view.set_slice(k)
        app.processEvents()
        times.append(time.perf_counter() - t)
    paints_per_change = (painter.count - paints) / len(order)

    # -- the same in the multiplanar layout, pane by pane ---------------------------------------------
    layout = window.reading.layout
    shown = volume
    if args.mpr_slices:
        import dataclasses

        reps = -(-args.mpr_slices // n)
        hu = np.repeat(volume.hu, reps, axis=0)[:args.mpr_slices]
        shown = dataclasses.replace(volume, hu=hu, spacing_mm=(0.75,) + tuple(volume.spacing_mm[1:]), z_mm=(),
                                    sop_instance_uids=(), instance_numbers=(), headers=(), source_files=())
        window.show_volume(shown)
    window.reading.set_layout("2x2")
    _pump_until(app, lambda: False, 0.3)
    mpr: dict[str, object] = {}
    for plane, pane in layout.views.items():
        count = {"axial": shown.shape[0], "coronal": shown.shape[1], "sagittal": shown.shape[2]}[plane]
        jumps = [(i * 7) % count for i in range(1, args.changes + 1)]
        jumps = [k if k != jumps[i - 1] else (k + 1) % count for i, k in enumerate(jumps)]
        samples = []
        for k in jumps:
            t = time.perf_counter()
            pane.set_slice(k)
            app.processEvents()
            samples.append(time.perf_counter() - t)
        mpr[plane] = _stats_ms(samples)
    mpr["image_shapes"] = {p: list(v.image_item.image.shape[:2]) for p, v in layout.views.items()}
    window.reading.set_layout("axial")
    _pump_until(app, lambda: False, 0.2)

    # -- references on the same slices ------------------------------------------------------------
    raw = []
    for k in order:
        t = time.perf_counter()
        window_to_uint8(volume.hu[k], 1500, -600)
        raw.append(time.perf_counter() - t)
    image_view = pg.ImageView()
    image_view.resize(1000, 800)
    image_view.show()
    image_view.setImage(volume.hu[order[0]], autoLevels=False, levels=(-1350, 150), autoRange=True)
    _pump_until(app, lambda: False, 0.2)
    iv = []
    for k in order:
        t = time.perf_counter()
        image_view.setImage(volume.hu[k], autoLevels=False, levels=(-1350, 150), autoRange=False,
                            autoHistogramRange=False)
        app.processEvents()
        iv.append(time.perf_counter() - t)
    image_view.close()
    image_view.deleteLater()
    del image_view

    result: dict[str, object] = {
        "folder": os.path.abspath(args.folder),
        "shape": list(volume.shape),
        "drop_to_first_slice_s": round(t_first, 4),
        "drop_to_volume_s": round(t_volume, 4),
        "slice_change_ms": _stats_ms(times),
        "paints_per_change": round(paints_per_change, 2),
        "mpr_slice_change_ms": mpr,
        "torch_warm_up_gui_gap_ms": {"max": round(max(warm_gaps), 2), "over_50ms": sum(g > 50 for g in warm_gaps),
                                     "n": len(warm_gaps)} if warm_gaps else None,
        "reference": {
            "window_to_uint8_ms": _stats_ms(raw),
            "pyqtgraph_ImageView_setImage_ms": _stats_ms(iv),
            "viewer_over_ImageView_median": round(float(np.median(times) / np.median(iv)), 3),
            "mpr_pane_over_ImageView_median": {p: round(float(mpr[p]["median"] / 1000.0 / np.median(iv)), 3)
                                               for p in ("axial", "coronal", "sagittal")},
        },
        "targets": {"drop_to_first_slice_s": 0.3, "slice_change_median_ms": 16.0,
                    "analysis_max_gui_gap_ms": 50.0},
        "platform": {"python": platform.python_version(), "qt_platform": os.environ.get("QT_QPA_PLATFORM"),
                     "cpus": os.cpu_count()},
    }

    # -- GUI responsiveness during an analysis ----------------------------------------------------
    if args.analyze:
        result["analysis"] = _measure_analysis(app, window, args)

    print(json.dumps(result, indent=2), flush=True)  # before closing: the figures are in hand
    window.close()
    window.deleteLater()
    app.processEvents()
    return 0


def _measure_analysis(app: QApplication, window, args) -> dict[str, object]:
    analysis = getattr(window, "analysis", None)
    if analysis is None:
        return {"error": "this viewer has no analysis controller"}
    window.configure_analysis(model=args.model, device=args.device)
    outcome: list[str] = []
    loop = QEventLoop()
    analysis.finished_ok.connect(lambda *_: (outcome.append("done"), loop.quit()))
    analysis.failed.connect(lambda *_: (outcome.append("failed"), loop.quit()))
    analysis.cancelled.connect(lambda *_: (outcome.append("cancelled"), loop.quit()))

    # A 5 ms timer on the GUI thread; any gap much longer than 5 ms is a stall the user feels.
    clock = QElapsedTimer()
    gaps: list[float] = []
    last = [0.0]
    stage = [""]
    analysis.progress.connect(lambda p: stage.__setitem__(0, str(getattr(p, "message", ""))))
    stalls: list[dict[str, object]] = []

    def tick() -> None:
        now = clock.nsecsElapsed() / 1e6
        gap = now - last[0]
        gaps.append(gap)
        last[0] = now
        if gap > 50 and len(stalls) < 20:
            # What the other threads were doing when the GUI thread got to run again.
            stalls.append({"at_s": round(now / 1000, 2), "gap_ms": round(gap, 1), "stage": stage[0],
                           "threads": _other_thread_tops()})

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    view = window.slice_view
    n = view.volume.shape[0]
    scrolls: list[float] = []

    def scroll() -> None:  # a user scrolling while the analysis runs
        t = time.perf_counter()
        view.set_slice((view.slice_index + 1) % n)
        scrolls.append(time.perf_counter() - t)

    scroller = QTimer()
    scroller.setInterval(30)
    scroller.timeout.connect(scroll)

    t0 = time.perf_counter()
    clock.start()
    timer.start()
    scroller.start()
    window.analysis_ui.start()
    QTimer.singleShot(1_800_000, loop.quit)
    loop.exec()
    elapsed = time.perf_counter() - t0
    timer.stop()
    scroller.stop()
    gap = np.asarray(gaps[1:] or [0.0])
    out: dict[str, object] = {
        "outcome": outcome[0] if outcome else "timed out",
        "device": args.device,
        "model": args.model or "default",
        "analysis_s": round(elapsed, 2),
        "gui_gap_ms": {"max": round(float(gap.max()), 2), "p99": round(float(np.percentile(gap, 99)), 2),
                       "median": round(float(np.median(gap)), 2), "over_50ms": int((gap > 50).sum()),
                       "n": int(gap.size)},
        "slice_change_during_analysis_ms": _stats_ms(scrolls) if scrolls else None,
        "error": window.last_error if outcome and outcome[0] != "done" else "",
        "stalls_over_50ms": stalls,
    }
    if outcome and outcome[0] == "done":
        # Slice changes with the lesion overlay on, as a reader pages through the result.
        times = []
        for i in range(1, 101):
            t = time.perf_counter()
            view.set_slice((i * 7) % n)
            app.processEvents()
            times.append(time.perf_counter() - t)
        out["slice_change_with_overlay_ms"] = _stats_ms(times)
        # The same in the 2x2 layout, lesion overlay and lung outline on, pane by pane.
        window.analysis_ui.lung_action.setChecked(True)
        window.reading.set_layout("2x2")
        _pump_until(app, lambda: False, 0.3)
        mpr = {}
        for plane, pane in window.reading.layout.views.items():
            count = pane.slider.maximum() + 1
            samples = []
            for i in range(1, 101):
                t = time.perf_counter()
                pane.set_slice((i * 7) % count)
                app.processEvents()
                samples.append(time.perf_counter() - t)
            mpr[plane] = _stats_ms(samples)
        out["mpr_slice_change_with_overlay_ms"] = mpr
    return out


if __name__ == "__main__":
    sys.exit(main())
