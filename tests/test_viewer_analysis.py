"""Analysis in the viewer: overlays, results dock, cancel, exports (offscreen).

Most tests drive the window with a stand-in analysis generator that returns a
result with known lesions (the measurements are the real ones), so they are
quick and exact; two run the real pipeline on the CPU.
"""

from __future__ import annotations

import json

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QApplication

from ctscreen.errors import Cancelled
from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import CONSOLIDATION, GGO, AnalysisResult
from ctscreen.imaging.volume import Volume
from ctscreen.inference.camlayers import default_layer
from ctscreen.viewer.analysis import shipped_models
from ctscreen.viewer.main_window import MainWindow
from ctscreen.viewer.settings import ViewerSettings

pytestmark = pytest.mark.gui

P001 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "covid-ct-md" / "P001"
LESION_SLICES = range(60, 75)
FLAGGED_SLICE = 70


@pytest.fixture(scope="module")
def p001() -> Volume:
    if not P001.is_dir():
        pytest.skip("P001 not present")
    from ctscreen.io.dicom import load_series
    return load_series(P001)


def fake_result(volume: Volume, cam_layer: str = "decoder4") -> AnalysisResult:
    """Lungs as two boxes, a GGO disc on slices 60-74 with a consolidation core on 68-71."""
    nz, ny, nx = volume.shape
    lung = np.zeros(volume.shape, np.uint8)
    lung[40:110, 150:400, 80:250] = 1   # patient's right = screen left
    lung[40:110, 150:400, 270:440] = 2
    yy, xx = np.mgrid[:ny, :nx]
    disc = (yy - 260) ** 2 + (xx - 160) ** 2 < 40 ** 2
    core = (yy - 260) ** 2 + (xx - 160) ** 2 < 15 ** 2
    lesion = np.zeros(volume.shape, np.uint8)
    for k in LESION_SLICES:
        lesion[k][disc] = GGO
    for k in range(68, 72):
        lesion[k][core] = CONSOLIDATION
    cam = {k: np.clip(disc.astype(np.float32) * 0.9 + 0.05, 0, 1) for k in LESION_SLICES}
    outside = {k: 0.1 for k in LESION_SLICES}
    outside[FLAGGED_SLICE] = 0.8
    return AnalysisResult(volume=volume, lung=lung, lesion=lesion, lesion_prob=lesion.astype(np.float16) / 2,
                          measurements=measure_volume(volume, lesion, lung), model_name="fake",
                          model_version="test-1", device="cpu", cam=cam, cam_outside_fraction=outside,
                          cam_layer=cam_layer, timings_s={"segmentation": 0.1})


def fake_runner(steps: int = 5, gate: threading.Event | None = None):
    """An analysis generator with the pipeline's shape: progress ticks, then the result."""
    def run(request, cancel: threading.Event):
        for i in range(steps):
            if gate is not None and i == 2:
                gate.wait(10)
            if cancel.is_set():
                raise Cancelled("analysis cancelled by the user; nothing was saved")
            yield types.SimpleNamespace(stage="segmentation", done=i, total=steps, fraction=i / steps,
                                        eta_s=float(steps - i), message=f"segmentation {i}/{steps}")
        # maps at the layer asked for, as the pipeline makes them (None: the model's default layer)
        return fake_result(request.volume, request.cam_layer or default_layer("unet"))
    return run


@pytest.fixture
def window(qtbot, tmp_path, p001) -> MainWindow:
    win = MainWindow(settings=ViewerSettings(tmp_path / "settings"), interactive=False)
    qtbot.addWidget(win)
    win.resize(1360, 860)
    win.show()
    qtbot.waitExposed(win)
    win.show_volume(p001)
    return win


def run_fake(window, qtbot, **kw) -> AnalysisResult:
    window.analysis.runner = fake_runner(**kw)
    with qtbot.waitSignal(window.analysis.finished_ok, timeout=20000) as done:
        assert window.analysis_ui.start()
    qtbot.waitUntil(lambda: not window.analysis.busy, timeout=10000)
    return done.args[0]


def test_overlays_results_and_jumps(window, qtbot):
    ui = window.analysis_ui
    assert not ui.lesions_action.isEnabled() and not ui.export_menu.isEnabled()  # nothing to show yet
    result = run_fake(window, qtbot)
    view = window.slice_view

    # Totals, table and plot.
    totals = ui.results.totals.text()
    m = result.measurements
    assert f"{m.lesion_volume_ml:,.1f} mL" in totals and "GGO" in totals and "/ 30" in totals
    assert "activation mostly outside the lung" in totals and str(FLAGGED_SLICE + 1) in totals
    assert ui.results.table.rowCount() == len(LESION_SLICES) == len(m.rows)
    assert not window.progress.isVisible()

    # Clicking a row shows that slice, with a non-empty lesion overlay.
    row = 5
    item = ui.results.table.item(row, 0)
    ui.results.table.cellClicked.emit(row, 0)
    k = int(item.data(Qt.ItemDataRole.UserRole))
    assert view.slice_index == k == LESION_SLICES[0] + 5
    overlay = ui.overlays.lesion_item
    assert overlay.isVisible() and overlay.image is not None
    assert (overlay.image[..., 3] > 0).sum() == (result.lesion[k] > 0).sum()
    # ...placed exactly on the image (same millimetre rectangle)...
    image_rect = view.image_item.mapRectToParent(view.image_item.boundingRect())
    assert overlay.mapRectToParent(overlay.boundingRect()) == image_rect
    # ...and on screen: the lesion's centre pixel turns yellow where the image was grey.
    centre_mm = QPointF(160.5 * view.volume.spacing_mm[2], 260.5 * view.volume.spacing_mm[1])
    centre = view.graphics.mapFromScene(view.view_box.mapViewToScene(centre_mm))
    pixel = view.graphics.grab().toImage().pixelColor(centre)
    assert pixel.red() > pixel.blue() + 40 and pixel.green() > pixel.blue() + 40, pixel.name()
    assert ui.overlays.legend.isVisible()
    assert ui.results.marker.value() == pytest.approx(p001_z(view, k))

    # The plot jumps too; the marker follows.
    ui.results._request_z(view.volume.z_mm[FLAGGED_SLICE])
    assert view.slice_index == FLAGGED_SLICE

    # Contours draw fewer pixels than the fill; O hides the lesions.
    filled = (overlay.image[..., 3] > 0).sum()
    ui.contour_action.trigger()
    contour = (overlay.image[..., 3] > 0).sum()
    assert 0 < contour < filled
    ui.lesions_action.trigger()
    assert not overlay.isVisible() and not ui.overlays.legend.isVisible()
    ui.lesions_action.trigger()
    assert overlay.isVisible()

    # Opacity slider, lung outline, Grad-CAM with the flag on slice 71.
    ui.lesion_opacity.setValue(80)
    assert overlay.opacity() == pytest.approx(0.8)
    ui.lung_action.trigger()
    assert ui.overlays.lung_item.isVisible() and (ui.overlays.lung_item.image[..., 3] > 0).any()
    ui.cam_action.trigger()
    assert ui.overlays.cam_item.isVisible() and ui.overlays.cam_bar.isVisible()
    assert "outside the lung" in ui.overlays.cam_flag.textItem.toPlainText()
    view.set_slice(FLAGGED_SLICE - 2)
    assert not ui.overlays.cam_flag.isVisible() or "outside" not in ui.overlays.cam_flag.textItem.toPlainText()
    view.set_slice(10)  # no lesion, no map
    assert not overlay.image[..., 3].any() and not ui.overlays.cam_item.isVisible()


def p001_z(view, k: int) -> float:
    return float(view.volume.z_mm[k])


def test_cancel_keeps_previous_result(window, qtbot):
    ui = window.analysis_ui
    first = run_fake(window, qtbot)
    rows_before = ui.results.table.rowCount()
    gate = threading.Event()
    window.analysis.runner = fake_runner(steps=6, gate=gate)
    returned = []
    window.analysis.finished_ok.connect(returned.append)
    with qtbot.waitSignal(window.analysis.cancelled, timeout=20000):
        assert ui.start()
        qtbot.waitUntil(lambda: window.progress.isVisible() and window.progress.value() > 0, timeout=5000)
        assert not ui.analyze_action.isEnabled() and not ui.model_combo.isEnabled()
        window.cancel_button.click()
        gate.set()
    qtbot.waitUntil(lambda: not window.analysis.busy, timeout=10000)
    assert returned == []
    assert window.analysis.result is first and ui.overlays.result is first  # not half-replaced
    assert ui.results.table.rowCount() == rows_before
    assert "cancelled" in window.statusBar().currentMessage().lower()
    assert not window.progress.isVisible() and ui.analyze_action.isEnabled()
    window.slice_view.scroll_by(3)  # still usable
    assert window.slice_view.slice_index == 3


def test_new_volume_drops_result(window, qtbot):
    run_fake(window, qtbot)
    ui = window.analysis_ui
    vol = window.slice_view.volume
    small = Volume(hu=np.asarray(vol.hu[:3]).copy(), spacing_mm=vol.spacing_mm, z_mm=vol.z_mm[:3])
    window.show_volume(small)
    assert window.analysis.result is None and ui.overlays.result is None
    assert ui.results.table.rowCount() == 0 and not ui.overlays.lesion_item.isVisible()
    assert not ui.export_menu.isEnabled()


def test_switching_study_mid_analysis_drops_it(window, qtbot):
    gate = threading.Event()
    window.analysis.runner = fake_runner(steps=6, gate=gate)
    returned = []
    window.analysis.finished_ok.connect(returned.append)
    assert window.analysis_ui.start()
    qtbot.waitUntil(lambda: window.progress.isVisible(), timeout=5000)
    vol = window.slice_view.volume
    other = Volume(hu=np.asarray(vol.hu[:4]).copy(), spacing_mm=vol.spacing_mm, z_mm=vol.z_mm[:4])
    window.show_volume(other)  # e.g. the user opened another study
    gate.set()
    qtbot.waitUntil(lambda: not window.analysis.busy and not window.progress.isVisible(), timeout=10000)
    assert returned == [] and window.analysis.result is None
    assert window.analysis_ui.overlays.result is None and window.analysis_ui.results.table.rowCount() == 0


def test_exports_ask_before_overwriting(window, qtbot, tmp_path):
    run_fake(window, qtbot)
    ui = window.analysis_ui
    asked: list[list[Path]] = []
    answer = [False]
    ui.exporter.ask_overwrite = lambda existing: (asked.append(existing), answer[0])[1]
    report = tmp_path / "out" / "report.json"
    report.parent.mkdir()

    with qtbot.waitSignal(ui.exporter.finished, timeout=20000):
        assert ui.export("report_json", str(report))
    assert not ui.exporter.busy  # free again as soon as it says it finished
    assert report.exists() and asked == []
    report.write_text("keep me")
    assert not ui.export("report_json", str(report))  # declined
    assert asked == [[report]] and report.read_text() == "keep me"
    answer[0] = True
    qtbot.waitUntil(lambda: not ui.exporter.busy, timeout=5000)
    with qtbot.waitSignal(ui.exporter.finished, timeout=20000):
        assert ui.export("report_json", str(report))
    assert report.read_text().lstrip().startswith("{")

    window.slice_view.set_slice(LESION_SLICES[3])
    png = tmp_path / "out" / "slice.png"
    qtbot.waitUntil(lambda: not ui.exporter.busy, timeout=5000)
    with qtbot.waitSignal(ui.exporter.finished, timeout=20000):
        assert ui.export("slice_png", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folder = tmp_path / "pngs"
    qtbot.waitUntil(lambda: not ui.exporter.busy, timeout=5000)
    with qtbot.waitSignal(ui.exporter.finished, timeout=60000) as msg:
        assert ui.export("lesion_pngs", str(folder))
    assert len(list(folder.glob("slice_*.png"))) == len(LESION_SLICES)
    assert f"Wrote {len(LESION_SLICES)}" in msg.args[0]


def test_patient_identity_in_exports_only_when_asked(window, qtbot, tmp_path):
    run_fake(window, qtbot)
    ui = window.analysis_ui
    assert not ui.include_patient_action.isChecked() and ui.exporter.include_patient is False
    plain, named = tmp_path / "plain.json", tmp_path / "named.json"
    with qtbot.waitSignal(ui.exporter.finished, timeout=20000):
        assert ui.export("report_json", str(plain))
    ui.include_patient_action.setChecked(True)
    qtbot.waitUntil(lambda: not ui.exporter.busy, timeout=5000)
    with qtbot.waitSignal(ui.exporter.finished, timeout=20000):
        assert ui.export("report_json", str(named))
    assert "patient_name" not in json.loads(plain.read_text())["series"]
    assert "patient_name" in json.loads(named.read_text())["series"]


def test_analysis_of_unanalysable_volume_says_why(qtbot, tmp_path):
    win = MainWindow(settings=ViewerSettings(tmp_path / "s"), interactive=False)
    qtbot.addWidget(win)
    vol = Volume(hu=np.zeros((2, 32, 32), np.int16), spacing_mm=(10.0, 1.0, 1.0),
                 not_analysable_reason="too few slices for a 3-D analysis")
    win.show_volume(vol)
    with qtbot.waitSignal(win.analysis.failed, timeout=5000) as failed:
        win.analysis_ui.start()
    assert "too few slices" in failed.args[0] and "too few slices" in win.last_error


# -- the real pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A UNet with random weights, in the model file format: exercises the real pipeline's plumbing."""
    torch = pytest.importorskip("torch")
    from ctscreen.inference import models, nets
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random_unet.pt"
    return models.save_model(nets.build("unet"), "unet", path, {"version": "random-for-tests"})


@pytest.mark.slow
def test_real_pipeline_cancel_mid_way(window, qtbot, random_weights):
    window.configure_analysis(model=str(random_weights), device="cpu")
    progress = []
    window.analysis.progress.connect(progress.append)
    with qtbot.waitSignal(window.analysis.cancelled, timeout=120000):
        assert window.analysis_ui.start()
        qtbot.waitUntil(lambda: any(getattr(p, "stage", "") == "segmentation" for p in progress), timeout=120000)
        window.cancel_work()
    qtbot.waitUntil(lambda: not window.analysis.busy, timeout=60000)
    assert window.analysis.result is None and window.analysis_ui.overlays.result is None
    assert window.analysis_ui.results.table.rowCount() == 0
    assert window.analysis_ui.analyze_action.isEnabled()


@pytest.mark.slow
@pytest.mark.skipif(not shipped_models(), reason="no shipped model weights in ctscreen/resources/models")
def test_real_analysis_on_cpu(window, qtbot):
    window.configure_analysis(device="cpu")
    with qtbot.waitSignal(window.analysis.finished_ok, timeout=900000) as done:
        assert window.analysis_ui.start()
    result = done.args[0]
    ui = window.analysis_ui
    assert "mL" in ui.results.totals.text()
    assert ui.results.table.rowCount() == len(result.measurements.rows) > 0
    k = max(result.measurements.rows, key=lambda r: r.lesion_area_mm2).index
    ui.results.sliceRequested.emit(k)
    QApplication.processEvents()
    assert ui.overlays.lesion_item.isVisible() and (ui.overlays.lesion_item.image[..., 3] > 0).any()


@pytest.mark.slow
@pytest.mark.skipif(not shipped_models() or not P001.is_dir(), reason="needs shipped weights and P001")
def test_screenshot_cli_with_analysis(tmp_path):
    import subprocess
    import sys

    from PySide6.QtGui import QImage

    out = tmp_path / "analysed.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CTSCREEN_SETTINGS_DIR=str(tmp_path / "settings"))
    code = "import sys; from ctscreen.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "view", str(P001), "--analyze", "--device", "cpu",
                           "--screenshot", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    image = QImage(str(out))
    assert (image.width(), image.height()) == (1360, 860)
    # The view jumped to the slice with the most lesion and draws it: some pixels are the GGO yellow.
    yellow = sum(1 for y in range(60, 830, 3) for x in range(0, 880, 3)
                 if (c := image.pixelColor(x, y)).red() > 180 and c.green() > 150 and c.blue() < 90)
    assert yellow > 50


@pytest.mark.slow
def test_cam_layer_box_computes_the_picked_layer_on_demand(window, qtbot, random_weights):
    """After an analysis, another CAM layer's map is computed off the GUI thread for the slice on screen."""
    from ctscreen.inference.camlayers import CAM_LAYERS
    from ctscreen.inference.gradcam import gradcam_for_result
    from ctscreen.inference.models import load_model
    from ctscreen.viewer.cam_on_demand import compute_cam

    ui = window.analysis_ui
    combo = ui.cam_layer_combo
    assert combo.parent() is not None and ui.cam_toolbar.widgetForAction(ui.cam_action) is not None
    # every activation-map control is on screen at the default width (they used to be cut off)
    window.resize(1360, 860)
    window.show()
    QApplication.processEvents()
    for widget in (ui.cam_layer_combo, ui.cam_method_combo, ui.cam_opacity):
        assert widget.isVisible() and ui.cam_toolbar.rect().contains(widget.geometry()), widget.objectName()
    window.configure_analysis(model=str(random_weights), device="cpu")  # a UNet file: the UNet layers
    assert [combo.itemData(i) for i in range(combo.count())] == list(CAM_LAYERS["unet"])
    # decoder1 is the default since issue 9; the fake result below was made at decoder4
    assert combo.currentData() == "decoder1" and "(default)" in combo.itemData(0, Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentIndex(combo.findData("decoder4"))
    result = run_fake(window, qtbot)  # maps at decoder4 on the lesion slices
    view = window.slice_view
    k = LESION_SLICES[4]
    view.set_slice(k)
    ui.cam_action.setChecked(True)
    cam_item = ui.overlays.cam_item
    analysis_map = np.array(cam_item.image)
    assert "Grad-CAM at decoder4" in ui.results.totals.text()

    threads, messages = [], []
    main_thread = threading.current_thread()

    def recording_compute(job, cancel):
        threads.append(threading.current_thread())
        return (yield from compute_cam(job, cancel))

    ui.cam.compute = recording_compute
    window.statusBar().messageChanged.connect(messages.append)
    with qtbot.waitSignal(ui.cam.displayChanged, timeout=120000, check_params_cb=lambda r: k in r.cam):
        combo.setCurrentIndex(combo.findData("decoder2"))
        assert any(m.startswith("Grad-CAM (decoder2)") for m in messages)  # said while it runs
    assert threads and main_thread not in threads
    assert ui.controller.cam_layer == "decoder2"  # ...and the next Analyze uses it
    expected, share = gradcam_for_result(load_model(str(random_weights), device="cpu"), result, k, "decoder2")
    shown = np.asarray(cam_item.image)
    assert cam_item.isVisible() and not np.allclose(shown, analysis_map)
    np.testing.assert_allclose(shown, expected, atol=5e-4)  # on-demand maps are kept as float16, like the result's
    totals = ui.results.totals.text()
    assert "Grad-CAM at decoder2" in totals and "Grad-CAM at decoder4" not in totals
    assert ui.overlays.result.cam_outside_fraction[k] == pytest.approx(share)
    flag = ui.overlays.cam_flag.textItem.toPlainText() if ui.overlays.cam_flag.isVisible() else ""
    assert ("outside the lung" in flag) == (share > AnalysisResult.CAM_OUTSIDE_FLAG)
    assert window.analysis.result is result and result.cam_layer == "decoder4"  # the analysis is unchanged

    # Scrolling: the next slice's map comes after a pause; back on k the cached map shows at once.
    view.set_slice(k + 1)
    qtbot.waitUntil(lambda: ui.cam.has_map("decoder2", k + 1) and not ui.cam.busy, timeout=120000)
    view.set_slice(k)
    np.testing.assert_allclose(np.asarray(cam_item.image), expected, atol=5e-4)  # the cached float16 map
    view.set_slice(10)  # no lesion: no map at any layer, nothing computed
    assert not ui.cam.needs(10) and not cam_item.isVisible()

    # Back to the analysis' layer: its own maps.
    view.set_slice(k)
    combo.setCurrentIndex(combo.findData("decoder4"))
    np.testing.assert_array_equal(np.asarray(cam_item.image), analysis_map)
    assert ui.overlays.result is result and "Grad-CAM at decoder4" in ui.results.totals.text()

    # A DeepLab model lists its own layers; they set the next Analyze, not this UNet result's maps.
    ui.model_combo.setCurrentIndex(ui.model_combo.findData("deeplab"))
    assert [combo.itemText(i) for i in range(combo.count())] == ["aspp", "decoder", "layer3", "layer2"]
    assert combo.currentData() == "aspp"
    combo.setCurrentIndex(combo.findData("decoder"))
    assert ui.controller.cam_layer == "decoder" and ui.cam.layer == "decoder4"


def test_analyze_tooltip_names_why_a_series_cannot_be_analysed(qtbot, tmp_path):
    win = MainWindow(settings=ViewerSettings(tmp_path / "s"), interactive=False)
    qtbot.addWidget(win)
    vol = Volume(hu=np.zeros((2, 32, 32), np.int16), spacing_mm=(10.0, 1.0, 1.0),
                 not_analysable_reason="too few slices for a 3-D analysis")
    win.show_volume(vol)
    assert "too few slices" in win.analysis_ui.analyze_action.toolTip()
    win.show_volume(Volume(hu=np.zeros((8, 32, 32), np.int16), spacing_mm=(2.0, 1.0, 1.0)))
    assert "F5" in win.analysis_ui.analyze_action.toolTip()
