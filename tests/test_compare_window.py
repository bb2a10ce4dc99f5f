"""Viewer: the follow-up comparison window and the NIfTI/PDF entries of File → Export.

Synthetic prior/current results with a known offset and known change (tests/test_compare.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytestmark = pytest.mark.gui

from test_compare import LUL, RLL, phantom_result  # noqa: E402

from ctscreen.imaging.result import CONSOLIDATION, GGO  # noqa: E402

SHOT_DIR = os.environ.get("CTSCREEN_SHOTS", "")


@pytest.fixture(scope="module")
def pair():
    prior = phantom_result(lesions=[(RLL, 14.0, GGO), (LUL, 18.0, CONSOLIDATION)])
    current = phantom_result(shift_mm=(12.0, -8.0, 37.0), z_top=-10.0, nz=100, dz=2.0,
                             lesions=[(RLL, 22.0, GGO), (LUL, 9.0, CONSOLIDATION)])
    return prior, current


def test_table_and_anatomical_sync(qtbot, pair, tmp_path):
    from ctscreen.viewer.compare_window import COLUMNS, CompareWindow

    prior, current = pair
    win = CompareWindow(quiet=True)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.comparisonReady, timeout=10000):
        win.start(prior, current)
    win.show()
    qtbot.waitExposed(win)
    cmp = win.comparison
    table = win.table
    assert table.rowCount() == 9 and table.columnCount() == len(COLUMNS)
    labels = [table.item(r, 0).text() for r in range(9)]
    assert labels[:3] == ["Both lungs", "Right lung", "Left lung"] and "R lower" in labels
    both = cmp.row("both")
    col = {name: i for i, name in enumerate(COLUMNS)}
    # the table shows the comparison's numbers
    assert table.item(0, col["Δ mL"]).data(256) == pytest.approx(both.change["lesion_ml"])
    assert table.item(0, col["Δ mL"]).text() == f"{both.change['lesion_ml']:+.1f}"
    assert table.item(0, col["Lesion (mL)"]).text() == f"{both.prior['lesion_ml']:.1f} → {both.current['lesion_ml']:.1f}"
    r_rl = labels.index("R lower")
    assert table.item(r_rl, col["Change"]).text() == "worse"
    assert table.item(labels.index("L upper"), col["Change"]).text() == "better"
    assert table.item(labels.index("R upper"), col["Change"]).text() == "unchanged"
    assert "Research use only" in win.summary.text() and "Research use only" in win.windowTitle()

    # scrolling the current pane moves the prior one to the slice with the same anatomy
    for k in (20, 45, 70):
        win.current_view.set_slice(k)
        want = cmp.map_current_to_prior(k)
        assert win.prior_view.slice_index == want
        z_anat = current.volume.z_mm[k] - 37.0  # the patient lay 37 mm further towards the head
        assert abs(prior.volume.z_mm[want] - z_anat) <= 2.0
        assert want != k  # not by slice number
    # and back: scrolling the prior pane moves the current one
    win.prior_view.set_slice(60)
    assert win.current_view.slice_index == cmp.map_prior_to_current(60)
    # unlinking stops the sync
    win.link_box.setChecked(False)
    before = win.prior_view.slice_index
    win.current_view.set_slice(10)
    assert win.prior_view.slice_index == before
    win.link_box.setChecked(True)

    # File → Save comparison writes what `ctscreen compare` writes, asking before overwriting
    assert win.save_action.isEnabled()
    out = tmp_path / "saved"
    out.mkdir()
    with qtbot.waitSignal(win.statusBar().messageChanged, timeout=20000,
                          check_params_cb=lambda m: m.startswith("Wrote")):
        assert win.save_comparison(str(out))
    qtbot.waitUntil(lambda: win._saver is None, timeout=5000)
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.json", "comparison.png"]
    win.ask_overwrite = lambda names: False
    assert not win.save_comparison(str(out))

    win.current_view.set_slice(int(np.argmax(current.lesion.reshape(100, -1).astype(bool).sum(axis=1))))
    qtbot.wait(50)
    shot = win.grab()
    assert not shot.isNull()
    path = os.path.join(SHOT_DIR or str(tmp_path), "compare_window.png")
    shot.save(path)
    assert os.path.getsize(path) > 10000


def test_analyses_a_study_that_needs_it(qtbot, pair, monkeypatch):
    """A Volume (not yet analysed) goes through the worker: the pipeline's generator, off the GUI thread."""
    import ctscreen.inference.pipeline as pipeline
    from ctscreen.viewer.compare_window import CompareWindow

    prior, current = pair
    calls = []

    def fake_analyze(volume, options):
        calls.append((volume, options.cam))
        yield pipeline.Progress(stage="segmentation", done=1, total=2, fraction=0.5)
        return current

    monkeypatch.setattr(pipeline, "analyze", fake_analyze)
    win = CompareWindow(quiet=True)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.comparisonReady, timeout=20000):
        win.start(prior, current.volume)
    qtbot.waitUntil(lambda: not win.busy, timeout=10000)
    assert calls and calls[0][0] is current.volume and calls[0][1] == "none"
    assert win.comparison.row("right_lower").direction == "worse"


def test_failure_is_reported_not_raised(qtbot, pair):
    import dataclasses

    from ctscreen.viewer.compare_window import CompareWindow

    prior, current = pair
    empty = dataclasses.replace(current, lung=np.zeros_like(current.lung))
    win = CompareWindow(quiet=True)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.failed, timeout=5000) as sig:
        win.start(prior, empty)
    assert "no lung" in sig.args[0] and win.comparison is None


def test_export_menu_writes_nifti_and_pdf(qtbot, pair, tmp_path):
    from PySide6.QtWidgets import QWidget

    from ctscreen.viewer.exports import EXPORT_KINDS, Exporter

    assert "nifti" in EXPORT_KINDS and "report_pdf" in EXPORT_KINDS
    prior, _ = pair
    parent = QWidget()
    qtbot.addWidget(parent)
    ex = Exporter(parent, lambda: {"slice_index": 0, "window": (1500, -600), "fill": True, "opacity": 0.5,
                                   "cam": False})
    with qtbot.waitSignal(ex.finished, timeout=20000) as sig:
        assert ex.export("nifti", prior, path=str(tmp_path / "nii"))
    assert "lesions.nii.gz" in sig.args[0]
    assert sorted(p.name for p in (tmp_path / "nii").iterdir()) == ["ct.nii.gz", "lesions.nii.gz", "lung.nii.gz"]
    qtbot.waitUntil(lambda: not ex.busy, timeout=5000)
    ex.reader_measurements = lambda: [{"id": 1, "kind": "ruler", "plane": "axial", "index": 4, "summary": "42.0 mm"}]
    with qtbot.waitSignal(ex.finished, timeout=20000):
        assert ex.export("report_pdf", prior, path=str(tmp_path / "r.pdf"))
    assert (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
    import shutil
    import subprocess
    if shutil.which("pdftotext"):  # the reader's measurements reach the PDF
        text = subprocess.run(["pdftotext", str(tmp_path / "r.pdf"), "-"], capture_output=True, text=True).stdout
        assert "ruler axial slice 5: 42.0 mm" in text
    # an existing file is not overwritten unless the user says yes
    qtbot.waitUntil(lambda: not ex.busy, timeout=5000)
    ex.ask_overwrite = lambda existing: False
    before = (tmp_path / "r.pdf").read_bytes()
    with qtbot.waitSignal(ex.finished, timeout=5000) as sig:
        assert not ex.export("report_pdf", prior, path=str(tmp_path / "r.pdf"))
    assert "nothing was overwritten" in sig.args[0] and (tmp_path / "r.pdf").read_bytes() == before


def test_file_menu_compare_with(qtbot, pair, tmp_path, monkeypatch):
    """File → Compare with…: refuses without a study; with one, opens the window beside it, analysing the
    current volume through the pipeline and re-opening the prior's analysis folder."""
    import ctscreen.inference.pipeline as pipeline
    from ctscreen.io.export_report import write_report_json
    from ctscreen.io.nifti import write_nifti
    from ctscreen.viewer import compare_window
    from ctscreen.viewer.main_window import MainWindow
    from ctscreen.viewer.settings import ViewerSettings

    prior, current = pair
    win = MainWindow(settings=ViewerSettings(tmp_path / "settings"), interactive=False)
    qtbot.addWidget(win)
    assert win.compare_action in win.file_menu.actions()
    errors = []
    monkeypatch.setattr(win, "show_error", lambda title, msg: errors.append(msg))
    win.compare_action.trigger()
    assert errors and "Open the current study first" in errors[0]

    folder = tmp_path / "prior_analysis"
    folder.mkdir()
    write_report_json(prior, folder / "report.json")
    write_nifti(prior, folder)
    monkeypatch.setattr(compare_window.QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))

    def fake_analyze(volume, options):
        yield pipeline.Progress(stage="segmentation", done=1, total=1, fraction=1.0)
        return current

    monkeypatch.setattr(pipeline, "analyze", fake_analyze)
    win.slice_view.set_volume(current.volume)
    win.compare_action.trigger()
    (cw,) = win._compare_windows
    qtbot.addWidget(cw)
    qtbot.waitUntil(lambda: cw.comparison is not None, timeout=20000)
    assert cw.comparison.registration.offset_mm == pytest.approx((-12.0, 8.0, -37.0), abs=1.5)
    assert cw.prior_view.volume.shape == prior.volume.shape
    cw.close()
    assert win._compare_windows == []  # a closed comparison no longer holds its studies
