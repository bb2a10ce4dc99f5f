"""The viewer, driven as a user would: real P001 series, real widgets, offscreen."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QEvent, QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage, QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication, QMessageBox

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import Cancelled
from ctscreen.imaging.volume import Volume
from ctscreen.imaging.windowing import window_to_uint8
from ctscreen.viewer.display import Window, WindowLut
from ctscreen.viewer.main_window import MainWindow
from ctscreen.viewer.settings import ViewerSettings
from ctscreen.viewer.worker import GeneratorWorker

pytestmark = pytest.mark.gui

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
P001 = DATA / "covid-ct-md" / "P001"
needs_p001 = pytest.mark.skipif(not P001.is_dir(), reason="../shared/data/dicom/covid-ct-md/P001 not present")


@pytest.fixture(scope="module")
def p001() -> Volume:
    if not P001.is_dir():
        pytest.skip("P001 not present")
    from ctscreen.io.dicom import load_series
    return load_series(P001)


def small_volume(n: int = 5) -> Volume:
    """A 5x40x60 volume, 0.5 x 1.0 mm pixels (non-square), HU -600 at [k, 10, 20]."""
    hu = np.full((n, 40, 60), -1000, dtype=np.int16)
    hu[:, 10, 20] = -600
    hu[:, 30, 50] = 40
    return Volume(hu=hu, spacing_mm=(2.0, 1.0, 0.5), origin_mm=(-15.0, -20.0, 100.0),
                  # columns: slices go to the feet, rows to posterior, columns to the patient's left
                  direction=np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),
                  z_mm=tuple(100.0 - 2.0 * k for k in range(n)), patient_id="SYN-1",
                  series_description="synthetic")


@pytest.fixture
def window(qtbot, tmp_path) -> MainWindow:
    win = MainWindow(settings=ViewerSettings(tmp_path / "settings"), interactive=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitExposed(win)
    return win


def wheel(view, notches: int, modifiers=Qt.KeyboardModifier.NoModifier) -> None:
    viewport = view.graphics.viewport()
    pos = QPointF(viewport.width() / 2, viewport.height() / 2)
    ev = QWheelEvent(pos, viewport.mapToGlobal(pos), QPoint(0, 0), QPoint(0, 120 * notches),
                     Qt.MouseButton.NoButton, modifiers, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(viewport, ev)


def viewport_point(view, x_mm: float, y_mm: float) -> QPoint:
    scene = view.view_box.mapViewToScene(QPointF(x_mm, y_mm))
    return view.graphics.mapFromScene(scene)


# -- PySide6 6.12 on Python 3.11 --------------------------------------------------------------------


def test_many_qt_calls_do_not_exhaust_none_true_false(qtbot):
    """Void Qt calls and Signal.emit drop references to None/True/False on PySide6 6.12 + Python 3.11;
    without ctscreen.viewer's work-around 10,000 of them abort the interpreter (none_dealloc)."""
    from PySide6.QtWidgets import QLabel

    from ctscreen.viewer._qt_compat import pyside_leaks_singletons

    label = QLabel()
    worker = GeneratorWorker(_counting, 1)
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for i in range(20000):
        label.setText("x")  # returns None
        worker.finished.emit()  # returns True
    if pyside_leaks_singletons():  # the work-around's reserve is in place
        assert sys.getrefcount(None) > 1 << 30 and sys.getrefcount(True) > 1 << 30
    else:  # a PySide6 without the bug (the pinned < 6.12) loses nothing
        assert sys.getrefcount(None) >= none_before - 100
        assert sys.getrefcount(True) >= true_before - 100


# -- worker ------------------------------------------------------------------------------------------


def _counting(n: int, cancel: threading.Event, fail_at: int | None = None):
    for i in range(n):
        if cancel.is_set():
            raise Cancelled("stop")
        if i == fail_at:
            raise ValueError("broken at %d" % i)
        yield i
    return "done"


def test_worker_yields_then_returns_on_gui_thread(qtbot):
    worker = GeneratorWorker(_counting, 5)
    seen, threads = [], []
    worker.yielded.connect(lambda i: (seen.append(i), threads.append(threading.current_thread())))
    with qtbot.waitSignal(worker.returned, timeout=5000) as ret, qtbot.waitSignal(worker.finished, timeout=5000):
        worker.start()
    assert ret.args == ["done"]
    assert seen == [0, 1, 2, 3, 4]
    assert all(t is threading.main_thread() for t in threads)


def test_worker_error_and_cancel(qtbot):
    worker = GeneratorWorker(_counting, 5, fail_at=2)
    with qtbot.waitSignal(worker.errored, timeout=5000) as err:
        worker.start()
    assert isinstance(err.args[0], ValueError)
    worker.wait()

    gate = threading.Event()

    def slow(cancel):
        yield 1
        gate.wait(5)
        yield 2
        return "result that must not arrive"

    worker = GeneratorWorker(slow)
    returned = []
    worker.returned.connect(returned.append)
    with qtbot.waitSignal(worker.errored, timeout=5000) as err:
        worker.start()
        worker.cancel()
        gate.set()
    assert isinstance(err.args[0], Cancelled)
    qtbot.waitUntil(lambda: not worker.is_running, timeout=5000)
    assert returned == []


# -- display --------------------------------------------------------------------------------------------


def test_lut_equals_core_windowing():
    rng = np.random.default_rng(0)
    hu = rng.integers(-32768, 32767, size=(64, 64), dtype=np.int16)
    hu[0, :6] = [-600, -1350, 150, -32768, 32767, 0]
    for name in ("lung", "mediastinum", "bone", "soft"):
        lut = WindowLut(Window.preset(name))
        w, lev = Window.preset(name).width, Window.preset(name).level
        np.testing.assert_array_equal(lut.to_uint8(hu), window_to_uint8(hu, w, lev))
    assert abs(int(WindowLut(Window.preset("lung")).to_uint8(np.array([-600], np.int16))[0]) - 127.5) <= 1


# -- slice view on an in-memory volume ------------------------------------------------------------------


def test_aspect_orientation_and_presets(window, qtbot):
    vol = small_volume()
    window.show_volume(vol)
    view = window.slice_view
    rect = view.image_item.mapRectToParent(view.image_item.boundingRect())
    assert (rect.width(), rect.height()) == pytest.approx((30.0, 40.0))  # 60 x 0.5 mm, 40 x 1.0 mm
    # Row 0 is at the top: a point lower on the screen has a larger row.
    top, bottom = viewport_point(view, 10, 5), viewport_point(view, 10, 35)
    assert top.y() < bottom.y()
    assert view.orient_left.textItem.toPlainText() == "R" and view.orient_right.textItem.toPlainText() == "L"
    assert view.image_item.image[10, 20] in (127, 128)  # HU -600 is mid-grey in the lung window
    assert view.image_item.levels is not None and tuple(view.image_item.levels) == (0, 255)
    window.activateWindow()
    qtbot.keyClick(view.graphics, Qt.Key.Key_2)  # mediastinum W350/L40
    assert window.slice_view.window.name == "mediastinum"
    assert view.image_item.image[10, 20] == 0 and view.image_item.image[30, 50] in (127, 128)
    assert window.preset_actions["mediastinum"].isChecked()
    assert "W 350" in view.text_bottom_left.textItem.toPlainText()
    assert window.settings.window_preset == "mediastinum"


def test_right_drag_changes_window(window, qtbot):
    window.show_volume(small_volume())
    view = window.slice_view
    before = view.window
    viewport = view.graphics.viewport()
    start = QPointF(viewport.width() / 2, viewport.height() / 2)
    right = Qt.MouseButton.RightButton
    QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseButtonPress, start, viewport.mapToGlobal(start),
                                                 right, right, Qt.KeyboardModifier.NoModifier))
    for step in range(1, 11):
        p = start + QPointF(8 * step, -5 * step)
        QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseMove, p, viewport.mapToGlobal(p),
                                                     Qt.MouseButton.NoButton, right, Qt.KeyboardModifier.NoModifier))
    QApplication.sendEvent(viewport, QMouseEvent(QEvent.Type.MouseButtonRelease, p, viewport.mapToGlobal(p),
                                                 right, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier))
    after = view.window
    assert after.name == "custom"
    assert after.width > before.width  # dragged right: wider
    assert after.level < before.level  # dragged up: lower level
    assert not any(a.isChecked() for a in window.preset_actions.values())
    assert view.image_item.image[10, 20] == WindowLut(after).to_uint8(np.array([-600], np.int16))[0]


def test_cursor_readout_shows_hu_and_patient_position(window, qtbot):
    vol = small_volume()
    window.show_volume(vol, slice_index=2)
    view = window.slice_view
    row, col = 30, 50
    pos = viewport_point(view, (col + 0.5) * 0.5, (row + 0.5) * 1.0)
    qtbot.mouseMove(view.graphics.viewport(), pos)
    qtbot.waitUntil(lambda: view.cursor_info is not None and (view.cursor_info.row, view.cursor_info.col) == (row, col),
                    timeout=3000)
    info = view.cursor_info
    assert info.hu == 40
    expected = np.array(vol.origin_mm) + vol.direction @ (np.array([2, row, col]) * np.array(vol.spacing_mm))
    assert info.patient_xyz_mm == pytest.approx(tuple(expected))
    assert "HU 40" in window.cursor_label.text()
    assert "HU 40" in view.text_bottom_right.textItem.toPlainText()


def test_zoom_pan_reset(window, qtbot):
    window.show_volume(small_volume())
    view = window.slice_view
    before = view.view_box.viewRange()
    wheel(view, 2, Qt.KeyboardModifier.ControlModifier)
    zoomed = view.view_box.viewRange()
    assert zoomed[0][1] - zoomed[0][0] < before[0][1] - before[0][0]
    assert view.slice_index == 0  # ctrl+wheel zooms, it does not scroll
    window.reset_view_action.trigger()
    assert view.view_box.viewRange()[0] == pytest.approx(before[0], abs=1e-6)


# -- the real series --------------------------------------------------------------------------------------


@needs_p001
def test_open_p001_scroll_and_tags(window, qtbot):
    previews = []
    window.loader.progress.connect(lambda p: p.first_slice is not None and previews.append(p.first_slice.shape))
    with qtbot.waitSignal(window.volumeLoaded, timeout=60000) as loaded:
        window.open_path(P001)
    vol = loaded.args[0]
    view = window.slice_view
    assert vol.shape == (148, 512, 512)
    assert previews == [(512, 512)]  # the first slice was shown before the volume arrived
    assert view.slice_index == 0 and "Im 1 / 148" in view.text_top_right.textItem.toPlainText()
    assert RESEARCH_NOTICE in window.windowTitle()
    assert window.notice_label.isVisible() and window.notice_label.text() == RESEARCH_NOTICE
    assert window.settings.recent_folders()[0] == str(P001)
    qtbot.waitUntil(lambda: not window.progress.isVisible() and not window.cancel_button.isVisible(), timeout=5000)

    wheel(view, -3)  # three notches towards the user: three slices on
    assert view.slice_index == 3
    graphics = view.graphics
    qtbot.keyClick(graphics, Qt.Key.Key_Down)
    assert view.slice_index == 4
    qtbot.keyClick(graphics, Qt.Key.Key_PageDown)
    assert view.slice_index == 14
    qtbot.keyClick(graphics, Qt.Key.Key_Up)
    assert view.slice_index == 13
    assert view.slider.value() == 13
    text = view.text_top_right.textItem.toPlainText()
    assert "Im 14 / 148" in text and f"Z {vol.z_mm[13]:.1f} mm" in text
    qtbot.keyClick(graphics, Qt.Key.Key_End)
    assert view.slice_index == 147
    qtbot.keyClick(graphics, Qt.Key.Key_Home)
    assert view.slice_index == 0
    view.slider.setValue(70)
    assert view.slice_index == 70

    # The displayed grey levels are the core's windowing of this slice.
    np.testing.assert_array_equal(view.image_item.image, window_to_uint8(vol.hu[70], 1500, -600))
    # The tag panel follows the slice (after its short debounce).
    qtbot.waitUntil(lambda: window.tag_panel.find_value("SOPInstanceUID") == vol.sop_instance_uids[70],
                    timeout=3000)
    assert window.tag_panel.find_value("PatientPosition") == str(vol.headers[70].PatientPosition)
    window.tag_panel.filter_edit.setText("position")
    hits = window.tag_panel.tree.findItems("PatientPosition", Qt.MatchFlag.MatchExactly, 1)
    assert hits and not hits[0].isHidden()
    uid_item = window.tag_panel.tree.findItems("SOPInstanceUID", Qt.MatchFlag.MatchExactly, 1)[0]
    assert uid_item.isHidden()


@needs_p001
def test_drop_folder_opens_it(window, qtbot):
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(P001))])
    ev = QDropEvent(QPointF(100, 100), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                    Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.volumeLoaded, timeout=60000):
        window.dropEvent(ev)
    assert window.slice_view.volume.shape[0] == 148


def test_folder_without_dicom_shows_error_and_stays_usable(qtbot, tmp_path):
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    win = MainWindow(settings=ViewerSettings(tmp_path / "settings"), interactive=True)
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.loadFailed, timeout=20000) as failed:
        win.open_path(empty)
    message = failed.args[0]
    assert str(empty) in message and "CT series" in message
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert len(boxes) == 1 and str(empty) in boxes[0].text()
    assert message in win.statusBar().currentMessage()
    boxes[0].accept()
    assert not win.progress.isVisible() and not win.loader.busy
    # Still usable: an in-memory volume shows and scrolls.
    win.show_volume(small_volume())
    win.slice_view.scroll_by(2)
    assert win.slice_view.slice_index == 2


def test_several_series_fill_the_browser(window, qtbot):
    folder = DATA / "edge-cases"
    if not folder.is_dir():
        pytest.skip("edge-cases not present")
    with qtbot.waitSignal(window.volumeLoaded, timeout=60000):
        window.open_path(folder)
    browser = window.series_browser
    assert window.series_dock.isVisible()
    assert browser.list.count() > 2
    assert "series in this folder" in browser.header.text()
    current = browser.list.currentItem()
    assert current is not None and current.font().bold()
    # Opening another series from the browser loads it.
    other = next(i for i in range(browser.list.count()) if browser.list.item(i) is not current)
    with qtbot.waitSignals([window.volumeLoaded], timeout=60000, raising=False):
        browser.list.itemActivated.emit(browser.list.item(other))
    assert window.loader.current_series is browser.series[other]


def test_settings_remember_recent_and_geometry(tmp_path, qtbot):
    settings = ViewerSettings(tmp_path / "s")
    for i in range(12):
        settings.add_recent_folder(f"/data/study{i}")
    assert settings.recent_folders()[0] == str(Path("/data/study11")) and len(settings.recent_folders()) == 10
    win = MainWindow(settings=settings, interactive=False)
    qtbot.addWidget(win)
    win.resize(900, 700)
    win.set_preset("bone")
    win.close()
    again = ViewerSettings(tmp_path / "s")
    assert again.window_preset == "bone" and again.geometry() is not None
    win2 = MainWindow(settings=again, interactive=False)
    qtbot.addWidget(win2)
    assert win2.slice_view.window.name == "bone"
    assert win2.recent_menu.actions()[0].text() == str(Path("/data/study11"))


# -- the command line ---------------------------------------------------------------------------------------


def _run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CTSCREEN_SETTINGS_DIR=str(tmp_path / "settings"))
    code = "import sys; from ctscreen.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=240)


@needs_p001
@pytest.mark.slow
def test_screenshot_cli(tmp_path):
    out = tmp_path / "shots" / "p001.png"
    proc = _run_cli("view", str(P001), "--slice", "70", "--window", "lung", "--screenshot", str(out),
                    tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (1360, 860)
    assert out.stat().st_size > 50_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_screenshot_cli_fails_cleanly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.png"
    proc = _run_cli("view", str(empty), "--screenshot", str(out), tmp_path=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ctscreen view: error:")]
    assert len(lines) == 1 and str(empty) in lines[0]
    assert not out.exists()


@needs_p001
def test_cancel_loading_keeps_window_usable(window, qtbot):
    with qtbot.waitSignal(window.loadCancelled, timeout=30000):
        window.open_path(P001)
        window.cancel_button.click()
    qtbot.waitUntil(lambda: not window.loader.busy, timeout=10000)
    assert window.slice_view.volume is None
    assert not window.progress.isVisible() and not window.cancel_button.isVisible()
    assert "cancelled" in window.statusBar().currentMessage().lower()
    with qtbot.waitSignal(window.volumeLoaded, timeout=60000):
        window.open_path(P001)


def test_worker_outlives_its_owner(qtbot):
    """Dropping every reference to a running worker must not destroy its QThread (Qt aborts)."""
    import gc

    gate = threading.Event()

    def slow(cancel):
        gate.wait(5)
        yield 1
        return 2

    done = []
    worker = GeneratorWorker(slow)
    worker.finished.connect(lambda: done.append(True))
    worker.start()
    del worker
    gc.collect()
    gate.set()
    qtbot.waitUntil(lambda: bool(done), timeout=5000)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (-1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)])
def test_readout_matches_stored_pixel_geometry(window, qtbot, tmp_path, orientation):
    """Whatever order the files store an axial slice in, the screen shows R on the left and A at the
    top, and the readout of a screen pixel names the LPS position and HU of the stored pixel drawn there."""
    from conftest import synthetic_series

    series = synthetic_series(tmp_path, n=4, rows=6, cols=8, orientation=orientation)
    with qtbot.waitSignal(window.volumeLoaded, timeout=30000) as loaded:
        window.open_path(series.folder)
    vol = loaded.args[0]
    view = window.slice_view
    assert (view.orient_left.textItem.toPlainText(), view.orient_right.textItem.toPlainText()) == ("R", "L")
    assert (view.orient_top.textItem.toPlainText(), view.orient_bottom.textItem.toPlainText()) == ("A", "P")
    view.set_slice(2)
    sy, sx = vol.spacing_mm[1], vol.spacing_mm[2]
    for row, col in [(0, 0), (1, 5), (vol.shape[1] - 1, vol.shape[2] - 1)]:
        info = view.info_at((col + 0.5) * sx, (row + 0.5) * sy)
        matches = [(k, i, j) for k in range(4) for i in range(series.stored[k].shape[0])
                   for j in range(series.stored[k].shape[1])
                   if np.allclose(series.stored_pixel_lps(k, i, j), info.patient_xyz_mm, atol=1e-3)]
        assert len(matches) == 1
        k, i, j = matches[0]
        assert info.hu == float(series.stored[k][i, j]) - 1024  # slope 1, intercept -1024
