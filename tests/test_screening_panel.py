"""The Screening panel of the Results dock (offscreen): category, criteria, probabilities, top slices, Grad-CAMs."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import dataclasses

import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt

from ctscreen import RESEARCH_NOTICE
from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import AnalysisResult
from ctscreen.imaging.screening import assess_result, with_classifier
from ctscreen.imaging.volume import Volume
from ctscreen.viewer.results_panel import ResultsPanel
from ctscreen.viewer.screening_panel import ScreeningPanel, cam_picture

from test_screening_rules import SPACING, chest, peripheral_ggo

pytestmark = pytest.mark.gui
PROBS = {"covid19": 0.72, "other_pneumonia": 0.2, "no_pneumonia": 0.08}
TOP = (40, 44)


@pytest.fixture(scope="module")
def result() -> AnalysisResult:
    hu, lung = chest()
    lesion = peripheral_ggo(lung)
    hu[lesion == 1] = -600
    vol = Volume(hu=hu, spacing_mm=SPACING, z_mm=tuple(-2.5 * k for k in range(hu.shape[0])))
    seg_cam = {k: (lesion[k] > 0).astype(np.float16) for k in (40, 44)}
    r = AnalysisResult(volume=vol, lung=lung, lesion=lesion, lesion_prob=(lesion > 0).astype(np.float16),
                       measurements=measure_volume(vol, lesion, lung), model_name="fake", model_version="1",
                       device="cpu", cam=seg_cam, cam_layer="decoder4", thorax_box=(4, 124, 2, 174))
    return dataclasses.replace(r, screening=with_classifier(assess_result(r), PROBS, TOP, "classifier", "t-3"))


def fake_compute(job, cancel):
    """Stands in for the classifier's Grad-CAM: a bright square in the right lung."""
    yield "gradcam"
    cam = np.zeros(job.result.volume.shape[1:], np.float16)
    cam[50:70, 30:60] = 1.0
    return job, cam


def test_panel_shows_category_criteria_probabilities_and_jumps(qtbot, result):
    panel = ScreeningPanel(compute=fake_compute)
    qtbot.addWidget(panel)
    panel.resize(520, 900)
    panel.show()
    panel.set_result(result)
    s = result.screening
    head = panel.header.text()
    assert "Typical appearance" in head and RESEARCH_NOTICE in head
    for c in s.criteria:
        if c.decisive:
            assert c.label in head
    assert panel.table.rowCount() == len(s.criteria)
    for r, c in enumerate(s.criteria):
        item = panel.table.item(r, 0)
        assert item.font().bold() == c.decisive
        assert panel.table.item(r, 1).text() == c.value_text()
        assert panel.table.item(r, 2).text() == {True: "yes", False: "no", None: "–"}[c.met]
        assert panel.table.item(r, 3).text() == c.threshold
    for key, p in PROBS.items():
        assert panel.bars[key].value() == round(1000 * p) and panel.bars[key].text() == f"{p:.2f}"
    assert [b.text() for b in panel.top_buttons] == [str(k + 1) for k in TOP]
    with qtbot.waitSignal(panel.sliceRequested) as jump:
        qtbot.mouseClick(panel.top_buttons[1], Qt.MouseButton.LeftButton)
    assert jump.args == [TOP[1]]

    # the slice on screen: the segmentation's map at once, the classifier's once computed off the GUI thread
    with qtbot.waitSignal(panel.cam.mapReady, timeout=5000) as ready:
        panel.set_current_slice(40)
        assert "computing" in panel.clf_caption.text()
    assert ready.args == [40]
    assert "slice 41" in panel.clf_caption.text() and "computing" not in panel.clf_caption.text()
    assert "lesion view (framed)" in panel.clf_caption.text()  # slice 41 has a lesion: the view the score used
    assert "decoder4" in panel.seg_caption.text() and not panel.seg_cam.pixmap().isNull()
    assert panel.cam.map_for(40) is not None
    panel.set_current_slice(3)  # no segmentation map there
    assert "no map on this slice" in panel.seg_caption.text() and "whole slice" in panel.clf_caption.text()
    panel.shutdown(5.0)  # as the window's shutdown hooks call it


def test_without_classifier_the_panel_says_why(qtbot, result):
    warn = "No classifier probabilities (classifier weights not found: x.pt); the screening verdict has ..."
    r = dataclasses.replace(result, screening=assess_result(result), warnings=(warn,))
    panel = ScreeningPanel(compute=fake_compute)
    qtbot.addWidget(panel)
    panel.show()
    panel.set_result(r)
    assert panel.prob_box.isHidden() and "classifier weights not found" in panel.prob_note.text()
    assert panel.top_buttons == []
    panel.set_current_slice(40)
    assert "no classifier ran" in panel.clf_caption.text()
    assert not panel.cam._timer.isActive() and panel.cam._worker is None


def test_results_dock_has_the_verdict_line_and_screening_tab(qtbot, result):
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.show()
    panel.set_result(result)
    line = panel.verdict.text()
    assert panel.verdict.isVisible()
    assert "Typical appearance" in line and "COVID-19 pneumonia" in line and "0.72" in line
    assert RESEARCH_NOTICE in line
    assert panel.tabs.tabText(1) == "Screening"
    panel.verdict.linkActivated.emit("#screening")
    assert panel.tabs.currentWidget() is panel.screening
    with qtbot.waitSignal(panel.sliceRequested) as jump:
        panel.screening.top_buttons[0].click()
    assert jump.args == [TOP[0]]
    # hidden behind the Lesions tab the panel draws nothing and computes nothing while the user scrolls
    panel.tabs.setCurrentIndex(0)
    assert not panel.screening.isVisible()
    panel.set_current_slice(44)
    assert panel.screening.index == 44 and not panel.screening.cam._timer.isActive()
    assert "slice 45" not in panel.screening.seg_caption.text()
    panel.tabs.setCurrentWidget(panel.screening)  # shown again: the slice on screen is drawn
    assert "slice 45" in panel.screening.seg_caption.text()
    panel.set_result(None)
    assert not panel.verdict.isVisible() and panel.screening.table.rowCount() == 0
    panel.screening.shutdown()


def test_cam_picture_blends_the_map_and_crops_to_the_box():
    hu = np.full((100, 120), -850, np.int16)
    cam = np.zeros((100, 120), np.float32)
    cam[40:60, 50:70] = 1.0
    plain = cam_picture(hu, None, size_px=120)
    hot = cam_picture(hu, cam, size_px=120)
    assert plain.shape == hot.shape == (100, 120, 3)
    assert np.all(plain[50, 60] == plain[0, 0])  # grey
    assert not np.all(hot[50, 60] == hot[0, 0]) and np.all(hot[0, 0] == plain[0, 0])
    cropped = cam_picture(hu, cam, box=(40, 60, 50, 70), size_px=40)
    assert cropped.shape == (40, 40, 3)


def test_cam_picture_frames_the_lesion_view_in_white():
    hu = np.full((100, 100), -850.0, np.float32)
    plain = cam_picture(hu, None, size_px=100)
    framed = cam_picture(hu, None, size_px=100, frame=(20, 60, 30, 70))
    diff = np.any(framed != plain, axis=2)
    assert diff[20, 30:70].all() and diff[20:60, 30].all() and not diff[40, 50] and not diff[5, 5]
    assert (framed[20, 45] == 255).all()
