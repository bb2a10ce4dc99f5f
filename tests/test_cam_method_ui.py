"""The viewer's CAM method box and menu (issue 9): choices, default, what the next Analyze and the
on-demand maps use. Fast: no network runs here (the on-demand computation is stood in)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from ctscreen.imaging.result import AnalysisResult  # noqa: E402
from ctscreen.imaging.volume import Volume  # noqa: E402
from ctscreen.inference.camlayers import CAM_METHOD_NAMES, DEFAULT_CAM_METHOD  # noqa: E402
from ctscreen.viewer.cam_on_demand import CamOnDemand  # noqa: E402
from ctscreen.viewer.main_window import MainWindow  # noqa: E402
from ctscreen.viewer.settings import ViewerSettings  # noqa: E402


def test_method_box_and_menu_set_the_next_analysis(qtbot, tmp_path):
    win = MainWindow(settings=ViewerSettings(tmp_path / "s"), interactive=False)
    qtbot.addWidget(win)
    ui = win.analysis_ui
    combo = ui.cam_method_combo
    assert [combo.itemData(i) for i in range(combo.count())] == list(CAM_METHOD_NAMES)
    assert combo.currentData() == DEFAULT_CAM_METHOD and ui.cam_method_actions[DEFAULT_CAM_METHOD].isChecked()
    ui.cam_method_actions["gradcam++"].trigger()  # the menu drives the box ...
    assert combo.currentData() == "gradcam++" and ui.controller.cam_method == "gradcam++"  # ... and the next run
    assert [n for n, a in ui.cam_method_actions.items() if a.isChecked()] == ["gradcam++"]


def _result() -> AnalysisResult:
    vol = Volume(hu=np.zeros((3, 16, 16), np.int16), spacing_mm=(2.0, 1.0, 1.0))
    z = np.zeros(vol.shape, np.uint8)
    return AnalysisResult(volume=vol, lung=z, lesion=z, lesion_prob=z.astype(np.float16), measurements=None,
                          model_name="m", model_version="1", device="cpu", cam={1: np.ones((16, 16), np.float16)},
                          cam_outside_fraction={1: 0.0}, cam_layer="decoder1", cam_method="seg-hirescam")


def test_on_demand_key_names_layer_and_method(qtbot):
    jobs = []

    def fake(job, cancel):
        jobs.append(job.layer)
        yield "gradcam"
        return job, np.full((16, 16), 0.5, np.float16), 0.25

    res = _result()
    cam = CamOnDemand(lambda: 1, compute=fake)
    cam.set_result(res)
    assert not cam.on_demand and cam.display_result() is res
    with qtbot.waitSignal(cam.displayChanged, timeout=10000, check_params_cb=lambda r: 1 in r.cam):
        cam.set_layer("decoder1@gradcam")
    shown = cam.display_result()
    assert jobs == ["decoder1@gradcam"]
    assert (shown.cam_layer, shown.cam_method) == ("decoder1", "gradcam") and shown.cam_outside_fraction[1] == 0.25
    cam.set_layer("decoder1")  # the analysis' own layer and method: its maps again
    assert cam.display_result() is res
    cam.shutdown()
