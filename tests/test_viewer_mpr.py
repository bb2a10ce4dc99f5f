"""The reading workstation in the window (offscreen): layouts, linked crosshair, tools, navigator, PNG."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import math
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPointF
from PySide6.QtGui import QImage

from ctscreen import RESEARCH_NOTICE
from ctscreen.imaging import planes
from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import CONSOLIDATION, GGO, LEFT_LUNG, RIGHT_LUNG, AnalysisResult
from ctscreen.imaging.volume import Volume
from ctscreen.viewer.display import Window
from ctscreen.viewer.main_window import MainWindow
from ctscreen.viewer.settings import ViewerSettings

pytestmark = pytest.mark.gui

NZ, NY, NX = 24, 64, 80
SPACING = (2.5, 0.7, 0.8)


def phantom() -> Volume:
    """Air with a 10 x 40 x 50 voxel block of 40 HU (25 x 28 x 40 mm) and a 0/100 HU split region."""
    hu = np.full((NZ, NY, NX), -1000, dtype=np.int16)
    hu[4:14, 10:50, 20:70] = 40
    hu[18, 20:40, 20:40] = 0
    hu[18, 20:40, 40:60] = 100
    return Volume(hu=hu, spacing_mm=SPACING, origin_mm=(-30.0, -20.0, 100.0),
                  z_mm=tuple(100.0 - 2.5 * k for k in range(NZ)), series_description="phantom")


def fake_result(volume: Volume) -> AnalysisResult:
    lung = np.zeros(volume.shape, np.uint8)
    lung[:, 5:60, 2:38] = RIGHT_LUNG
    lung[:, 5:60, 42:78] = LEFT_LUNG
    lesion = np.zeros(volume.shape, np.uint8)
    lesion[2:5, 10:14, 5:10] = GGO               # 60 voxels, right upper
    lesion[16:22, 20:30, 50:60] = GGO            # 600 voxels, left lower, consolidation core
    lesion[18:20, 22:26, 52:56] = CONSOLIDATION
    cam = {k: np.full(volume.shape[1:], 0.8, np.float16) for k in (17, 18)}
    return AnalysisResult(volume=volume, lung=lung, lesion=lesion, lesion_prob=lesion.astype(np.float16) / 2,
                          measurements=measure_volume(volume, lesion, lung), model_name="fake",
                          model_version="test", device="cpu", cam=cam, cam_outside_fraction={17: 0.1, 18: 0.1})


@pytest.fixture
def window(qtbot, tmp_path) -> MainWindow:
    win = MainWindow(settings=ViewerSettings(tmp_path / "settings"), interactive=False)
    qtbot.addWidget(win)
    win.resize(1360, 860)
    win.show()
    qtbot.waitExposed(win)
    # No background torch import (the viewer warms up 1.5 s after a study appears): it would still be
    # importing, changing sys.modules, while the next test is set up. These tests never need torch.
    win.analysis_ui._warm_timer.timeout.disconnect()
    win.show_volume(phantom())
    return win


def test_layouts_show_the_planes_with_true_spacing(window, qtbot):
    layout = window.reading.layout
    assert window.centralWidget() is layout and layout.name == "axial"
    assert not layout.frames["coronal"].isVisible() and layout.coronal.volume is None  # not fed while hidden
    for name, shown in (("1x3", {"axial", "coronal", "sagittal"}), ("2x2", {"axial", "coronal", "sagittal", "profile"}),
                        ("axial", {"axial"})):
        window.reading.layout_actions[name].trigger()
        qtbot.wait(10)
        assert layout.name == name
        assert {k for k, f in layout.frames.items() if f.isVisible()} == shown
    window.reading.set_layout("mpr")
    assert layout.name == "2x2"
    cor, sag = layout.coronal, layout.sagittal
    assert cor.volume is window.slice_view.volume and sag.volume is window.slice_view.volume
    assert cor.image_item.image.shape == (NZ, NX) and sag.image_item.image.shape == (NZ, NY)
    # Pixels keep their size: 2.5 mm slices are 2.5 mm tall on screen, whatever the column size.
    rect = cor.image_item.mapRectToParent(cor.image_item.boundingRect())
    assert (rect.width(), rect.height()) == pytest.approx((NX * 0.8, NZ * 2.5))
    rect = sag.image_item.mapRectToParent(sag.image_item.boundingRect())
    assert (rect.width(), rect.height()) == pytest.approx((NY * 0.7, NZ * 2.5))
    assert (cor.orient_top.textItem.toPlainText(), cor.orient_left.textItem.toPlainText()) == ("S", "R")
    assert (sag.orient_left.textItem.toPlainText(), sag.orient_bottom.textItem.toPlainText()) == ("A", "I")
    # The grey levels are the volume's plane through the window's LUT.
    assert np.array_equal(cor.image_item.image, cor._lut.to_uint8(window.slice_view.volume.hu[:, cor.slice_index]))
    with pytest.raises(ValueError, match="unknown layout"):
        window.reading.set_layout("3x3")
    # The layout is remembered for the next window (same settings).
    again = MainWindow(settings=window.settings, interactive=False)
    qtbot.addWidget(again)
    assert again.reading.layout.name == "2x2"


def test_crosshair_links_the_panes(window, qtbot):
    window.reading.set_layout("1x3")
    layout = window.reading.layout
    axial, cor, sag = layout.axial, layout.coronal, layout.sagittal
    # A click in the axial pane at row 30, column 55 moves the coronal and sagittal planes there.
    axial.clicked.emit(QPointF(55.5 * 0.8, 30.5 * 0.7))
    assert (cor.slice_index, sag.slice_index) == (30, 55)
    assert layout.link.point == (axial.slice_index, 30, 55)
    # Scrolling the coronal pane moves its plane; the axial crosshair's horizontal line follows.
    cor.scroll_by(3)
    assert cor.slice_index == 33 and layout.link.point[1] == 33
    assert layout.link.lines["axial"][1].value() == pytest.approx(33.5 * 0.7)
    # A click in the sagittal pane (row = slice 7, column = y 12) moves the axial and coronal planes.
    sag.clicked.emit(QPointF(12.2 * 0.7, 7.5 * 2.5))
    assert (axial.slice_index, cor.slice_index, sag.slice_index) == (7, 12, 55)
    assert layout.link.lines["coronal"][1].value() == pytest.approx(7.5 * 2.5)
    # Window/level linked by default, not when unlinked.
    axial.set_window(Window.preset("mediastinum"))
    assert cor.window == sag.window == Window.preset("mediastinum")
    window.reading.link_window_action.setChecked(False)
    axial.set_window(Window.preset("bone"))
    assert cor.window == Window.preset("mediastinum")
    # Zoom linked on request: the other panes take the same mm per screen pixel.
    window.reading.link_zoom_action.setChecked(True)
    axial.view_box.scaleBy((0.5, 0.5))
    axial.view_box.sigRangeChangedManually.emit([True, True])
    scale = axial.view_box.viewRect().width() / axial.view_box.width()
    assert cor.view_box.viewRect().width() / cor.view_box.width() == pytest.approx(scale, rel=0.02)
    # Back to one pane: the link stands still, axial scrolling costs nothing in the hidden panes.
    window.reading.set_layout("axial")
    axial.set_slice(15)
    assert cor.slice_index == 12 and not layout.link.lines["axial"][0].isVisible()


def test_overlays_in_every_plane(window, qtbot):
    window.reading.set_layout("1x3")
    result = fake_result(window.slice_view.volume)
    window.analysis_ui._on_finished(result)  # what a finished analysis does
    window.analysis_ui.cam_action.setChecked(True)
    layout = window.reading.layout
    cor_layers = layout.overlays["coronal"]
    layout.link.set_point((18, 24, 54))
    assert cor_layers.result is result and cor_layers.lesion_item.isVisible()
    rgba = cor_layers.lesion_item.image
    assert rgba.shape == (NZ, NX, 4)
    assert rgba[18, 54, 3] == 255 and rgba[0, 0, 3] == 0  # consolidation core voxel shown, air not
    assert cor_layers.cam_item.isVisible() and cor_layers.cam_item.image[17].max() == pytest.approx(0.8, abs=1e-3)
    assert cor_layers.cam_item.image[5].max() == 0  # no map on that slice: transparent
    # The sagittal pane reads x-major copies: the same pixels as the direct cut, and a map computed
    # later (as Grad-CAM on demand adds them) shows up.
    sag_layers = layout.overlays["sagittal"]
    x = layout.sagittal.slice_index
    assert np.array_equal(sag_layers.lesion_item.image[..., 3] > 0, result.lesion[:, :, x] > 0)
    assert np.array_equal(sag_layers.cam_item.image, planes.cam_plane(result.cam, "sagittal", x, result.lesion.shape))
    result.cam[20] = np.full(result.lesion.shape[1:], 0.3, np.float16)
    layout.sagittal.set_slice(x + 1)
    assert sag_layers.cam_item.image[20].max() == pytest.approx(0.3, abs=1e-3)
    window.analysis_ui.lesions_action.setChecked(False)  # toggles reach every pane
    assert not cor_layers.lesion_item.isVisible() and not layout.overlays["sagittal"].lesion_item.isVisible()


def test_ruler_roi_probe_on_the_phantom(window, qtbot):
    window.reading.set_layout("1x3")
    tools = window.reading.tools
    layout = window.reading.layout
    layout.link.set_point((8, 30, 40))
    # Ruler across the block in the axial pane, drawn with the drag the mouse gives: 50 columns of 0.8 mm.
    window.reading.tool_actions["ruler"].trigger()
    axial = layout.axial
    assert axial.drag_handler is not None
    handler = axial.drag_handler
    handler(axial, QPointF(20 * 0.8, 30.0), QPointF(45 * 0.8, 30.0), True, False)
    handler(axial, QPointF(20 * 0.8, 30.0), QPointF(70 * 0.8, 30.0), False, True)
    (key, ruler), = tools.store.items.items()
    assert ruler.length_mm == pytest.approx(40.0, abs=1e-9) and ruler.plane == "axial" and ruler.index == 8
    # Down the block in the coronal pane: 10 slices of 2.5 mm.
    tools.add_ruler("coronal", (30.0, 4 * 2.5), (30.0, 14 * 2.5))
    assert tools.store.items[2].length_mm == pytest.approx(25.0, abs=1e-9)
    # Ellipse ROI centred on the 0 / 100 HU border of slice 18.
    axial.set_slice(18)
    key = tools.add_ellipse("axial", (40 * 0.8, 30 * 0.7), (4.0, 3.5))
    s = tools.store.items[key].stats
    n = sum(((j + 0.5) * 0.8 - 32.0) ** 2 / 16 + ((i + 0.5) * 0.7 - 21.0) ** 2 / 12.25 <= 1
            for i in range(NY) for j in range(NX))
    assert s.pixel_count == n and s.mean_hu == 50.0 and (s.min_hu, s.max_hu) == (0.0, 100.0)
    assert s.sd_hu == pytest.approx(50.0 * math.sqrt(n / (n - 1)))
    assert s.area_mm2 == pytest.approx(math.pi * 4.0 * 3.5)
    # Freehand ROI drawn with the mouse's drag around the 0 / 100 border: a 10 x 8 pixel rectangle.
    window.reading.tool_actions["freehand"].trigger()
    corners = [(35 * 0.8, 25 * 0.7), (45 * 0.8, 25 * 0.7), (45 * 0.8, 33 * 0.7), (35 * 0.8, 33 * 0.7)]
    start = QPointF(*corners[0])
    axial.drag_handler(axial, start, start, True, False)
    for c in corners[1:]:
        axial.drag_handler(axial, start, QPointF(*c), False, False)
    axial.drag_handler(axial, start, QPointF(*corners[-1]), False, True)
    free = tools.store.items[max(tools.store.items)]
    assert free.kind == "freehand" and free.stats.pixel_count == 80 and free.stats.mean_hu == 50.0
    assert free.stats.area_mm2 == pytest.approx(10 * 0.8 * 8 * 0.7)
    # Probe: a click with the probe tool reads the voxel and does not move the crosshair.
    window.reading.tool_actions["probe"].trigger()
    before = layout.link.point
    layout.coronal.clicked.emit(QPointF(25 * 0.8 + 0.1, 5 * 2.5 + 0.1))
    probe = tools.store.items[max(tools.store.items)]
    assert probe.kind == "probe" and probe.hu == 40.0 and probe.voxel == (5, layout.coronal.slice_index, 25)
    assert layout.link.point == before
    # Listed, drawn only on their own plane, deletable; a new study starts an empty list.
    table = tools.panel.table
    assert table.rowCount() == 5
    graphics = tools._graphics[1][1]
    assert not graphics[0].isVisible()  # the first ruler is on slice 8, the axial pane is on 18
    axial.set_slice(8)
    assert graphics[0].isVisible()
    table.selectRow(0)
    tools.delete_selected()
    assert table.rowCount() == 4 and 1 not in tools.store.items
    assert graphics[0].scene() is None
    assert [d["kind"] for d in tools.store.to_dicts()] == ["ruler", "ellipse", "freehand", "probe"]
    window.show_volume(phantom())
    assert len(tools.store) == 0 and table.rowCount() == 0


def test_lesion_navigator(window, qtbot):
    window.reading.set_layout("2x2")
    result = fake_result(window.slice_view.volume)
    window.analysis_ui._on_finished(result)
    nav = window.reading.navigator
    with qtbot.waitSignal(nav.lesionsReady, timeout=20000):  # found in a background worker
        window.reading._on_result(result)  # the controller's finished_ok does this in the app
    assert [les.voxel_count for les in nav.lesions] == [600, 60]
    assert nav.table.rowCount() == 2 and nav.table.item(0, 2).text() == "left"
    assert nav.table.item(0, 4).text() == "mixed" and nav.table.item(1, 3).text() == "R upper"
    assert nav.lesions[0].volume_ml == pytest.approx(600 * 2.5 * 0.7 * 0.8 / 1000)
    window.reading.next_lesion_action.trigger()
    layout = window.reading.layout
    first = nav.lesions[0].centre_voxel
    assert layout.link.point == first
    assert (layout.axial.slice_index, layout.coronal.slice_index, layout.sagittal.slice_index) == first
    window.reading.next_lesion_action.trigger()
    assert layout.axial.slice_index == nav.lesions[1].centre_voxel[0]
    window.reading.previous_lesion_action.trigger()
    assert layout.link.point == first
    # The z-profile shows the per-slice areas; a click there would ask for the slice.
    ys = layout.profile.ggo_curve.getData()[0]
    assert ys[17] == pytest.approx(100 * 0.7 * 0.8 / 100.0)
    window.show_volume(phantom())
    assert nav.table.rowCount() == 0


def test_save_view_png(window, qtbot, tmp_path):
    window.reading.set_layout("1x3")
    out = tmp_path / "view.png"
    window.reading.save_png(out)
    image = QImage(str(out))
    layout = window.reading.layout
    assert image.width() == layout.width() and image.height() > layout.height()  # + the notice band
    with pytest.raises(FileExistsError):
        window.reading.save_png(out)
    window.reading.save_png(out, force=True)
    # The notice is written in its red into the band under the panes.
    band = image.copy(0, layout.height(), image.width(), image.height() - layout.height())
    reds = [band.pixelColor(x, y) for x in range(0, min(band.width(), 400)) for y in range(band.height())]
    assert any(c.red() > 200 and c.green() < 150 and c.blue() < 150 for c in reds)
    assert RESEARCH_NOTICE.startswith("Research use only")


def test_cli_screenshot_mpr_layout(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from conftest import synthetic_series

    series = synthetic_series(tmp_path, n=12, rows=32, cols=40)
    out = tmp_path / "mpr.png"
    env = dict(os.environ, CTSCREEN_SETTINGS_DIR=str(tmp_path / "settings"), QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", "import sys; from ctscreen.cli import main; sys.exit(main())",
                           "view", str(series.folder), "--layout", "mpr", "--screenshot", str(out)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    image = QImage(str(out))
    assert image.width() > 1000 and image.height() > 700


def test_analysis_ui_does_not_import_the_window(window):
    """No import cycle: AnalysisUi gets what it needs through the AnalysisHost protocol."""
    import ast
    import inspect

    import ctscreen.viewer.analysis_ui as analysis_ui

    tree = ast.parse(inspect.getsource(analysis_ui))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "ctscreen.viewer.main_window" not in imported
    # The window provides every member the protocol names.
    members = list(analysis_ui.AnalysisHost.__annotations__) + ["show_error", "begin_task", "task_progress",
                                                                  "end_task"]
    assert [m for m in members if not hasattr(window, m)] == []


def test_reader_measurements_go_into_report_json(window, qtbot, tmp_path):
    import json
    import types

    volume = window.slice_view.volume

    def runner(request, cancel):
        yield types.SimpleNamespace(stage="segmentation", done=0, total=1, fraction=0.0, eta_s=0.0, message="")
        return fake_result(request.volume)

    window.analysis.runner = runner
    with qtbot.waitSignal(window.analysis.finished_ok, timeout=20000):
        assert window.analysis_ui.start()
    qtbot.waitUntil(lambda: not window.analysis.busy, timeout=10000)
    assert window.analysis.result.volume is volume
    window.reading.tools.add_ruler("axial", (16.0, 10.0), (56.0, 10.0))
    out = tmp_path / "report.json"
    with qtbot.waitSignal(window.analysis_ui.exporter.finished, timeout=20000):
        assert window.analysis_ui.export("report_json", str(out))
    report = json.loads(out.read_text())
    (ruler,) = report["reader_measurements"]
    assert ruler["kind"] == "ruler" and ruler["length_mm"] == 40.0 and ruler["plane"] == "axial"
    # Without reader measurements the key is absent (CLI reports stay as they were).
    window.reading.tools.clear()
    out2 = tmp_path / "report2.json"
    with qtbot.waitSignal(window.analysis_ui.exporter.finished, timeout=20000):
        assert window.analysis_ui.export("report_json", str(out2))
    assert "reader_measurements" not in json.loads(out2.read_text())
