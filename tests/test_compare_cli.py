"""``ctscreen compare``: two analysis folders in, comparison.json/.csv/.png out, atomic and refusing overwrite."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from test_compare import LUL, RLL, phantom_result

from ctscreen.cli import main
from ctscreen.imaging.result import CONSOLIDATION, GGO
from ctscreen.io.export_report import write_report_json
from ctscreen.io.nifti import write_nifti


def _analysis_folder(path, result):
    path.mkdir()
    write_report_json(result, path / "report.json")
    write_nifti(result, path)
    return path


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    prior = phantom_result(lesions=[(RLL, 14.0, GGO), (LUL, 18.0, CONSOLIDATION)])
    current = phantom_result(shift_mm=(12.0, -8.0, 37.0), z_top=-10.0, nz=100, dz=2.0,
                             lesions=[(RLL, 22.0, GGO), (LUL, 9.0, CONSOLIDATION)])
    return _analysis_folder(root / "prior", prior), _analysis_folder(root / "current", current), prior, current


def test_compare_writes_json_csv_png(studies, tmp_path, capsys):
    p, c, prior, current = studies
    out = tmp_path / "out"
    assert main(["compare", str(p), str(c), "--out", str(out)]) == 0
    line = capsys.readouterr().out
    assert "worse" in line and "Research use only" in line and "\n" not in line.strip()
    data = json.loads((out / "comparison.json").read_text())
    assert data["registration"]["offset_mm"] == pytest.approx([-12.0, 8.0, -37.0], abs=1.5)
    rows = {r["region"]: r for r in data["rows"]}
    voxel_p, voxel_c = prior.volume.voxel_volume_ml, current.volume.voxel_volume_ml
    assert rows["both"]["prior"]["lesion_ml"] == pytest.approx(np.count_nonzero(prior.lesion) * voxel_p, rel=1e-6)
    assert rows["both"]["current"]["lesion_ml"] == pytest.approx(np.count_nonzero(current.lesion) * voxel_c, rel=1e-6)
    assert rows["right_lower"]["direction"] == "worse" and rows["left_upper"]["direction"] == "better"
    assert "Research use only" in data["research_notice"]
    with open(out / "comparison.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["region"] for r in table][:3] == ["both", "right", "left"] and len(table) == 9
    assert float(table[0]["change_lesion_ml"]) == pytest.approx(
        rows["both"]["change"]["lesion_ml"], rel=1e-3)
    img = cv2.imread(str(out / "comparison.png"))
    assert img is not None and img.shape[1] > img.shape[0] * 0.4
    # overlays drawn: GGO amber and consolidation magenta both appear
    rgb = img[..., ::-1].reshape(-1, 3).astype(int)
    assert (np.abs(rgb - [255, 200, 0]).sum(axis=1) < 60).any()
    # no overwrite without --force, and nothing was changed by the refusal
    before = (out / "comparison.json").read_bytes()
    assert main(["compare", str(p), str(c), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "comparison.json").read_bytes() == before
    assert main(["compare", str(p), str(c), "--out", str(out), "--force"]) == 0


def test_compare_bad_input_is_one_line(studies, tmp_path, capsys):
    p, _c, _prior, _current = studies
    assert main(["compare", str(p), str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_dicom_folders_are_analysed_first(studies, tmp_path, capsys, monkeypatch):
    """DICOM folders go through the pipeline (model loaded once, Grad-CAM off) before the comparison."""
    import ctscreen.inference.models as models
    import ctscreen.inference.pipeline as pipeline
    from test_export_fixtures import write_synthetic_series

    _p, _c, prior, current = studies
    write_synthetic_series(tmp_path / "a")
    write_synthetic_series(tmp_path / "b")
    loads, runs = [], []
    monkeypatch.setattr(models, "load_model", lambda name=None, device="auto": loads.append((name, device)) or "M")

    def fake_analyze(info, options):
        runs.append((info.slice_count, options.model, options.cam))
        yield pipeline.Progress(stage="segmentation", done=1, total=1, fraction=1.0)
        return prior if len(runs) == 1 else current

    monkeypatch.setattr(pipeline, "analyze", fake_analyze)
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "--device", "cpu"]) == 0
    assert loads == [(None, "cpu")] and runs == [(6, "M", "none"), (6, "M", "none")]
    data = json.loads((out / "comparison.json").read_text())
    assert {r["region"]: r["direction"] for r in data["rows"]}["right_lower"] == "worse"
