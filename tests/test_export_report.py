"""report.json follows docs/report-schema.md; report.csv holds the same rows."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import ExportError
from ctscreen.io import export
from ctscreen.io.export_report import CSV_COLUMNS, REPORT_SCHEMA_VERSION, SLICE_FIELDS

from test_export_fixtures import FAKE_ID, FAKE_NAME, synthetic_result

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "report-schema.md"
PATIENT_ONLY = {"patient_name", "patient_id"}
#: Top-level keys written only when given (the viewer's own measurements).
OPTIONAL_TOP_LEVEL = ["reader_measurements"]


def documented_keys() -> dict[str, list[str]]:
    """Section heading -> keys in the first column of its table."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in SCHEMA_DOC.read_text("utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip().strip("`")
            continue
        m = re.match(r"\|\s*`([a-z0-9_]+)`\s*\|", line)
        if current and m:
            sections.setdefault(current, []).append(m.group(1))
    return sections


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    r = synthetic_result(tmp_path_factory.mktemp("report"))
    k = export.lesion_slice_indices(r)[0]
    cam = np.zeros(r.volume.shape[1:], np.float32)
    return dataclasses.replace(r, cam={k: cam, k + 1: cam}, cam_outside_fraction={k: 0.8, k + 1: 0.1})


def test_report_has_exactly_the_documented_keys(res):
    doc = documented_keys()
    rep = export.build_report(res)
    assert list(rep) == [k for k in doc["Top level"] if k not in OPTIONAL_TOP_LEVEL]
    assert list(export.build_report(res, reader_measurements=[])) == doc["Top level"]
    assert set(rep["series"]) == set(doc["series"]) - PATIENT_ONLY
    assert set(rep["model"]) == set(doc["model"])
    assert set(doc["totals"]) <= set(rep["totals"]), "documented totals missing from Measurements.to_dict()"
    assert "rows" not in rep["totals"]
    assert set(rep["gradcam"]) == set(doc["gradcam"])
    assert doc["slices[]"] == list(SLICE_FIELDS)
    for row in rep["slices"]:
        assert list(row) == list(SLICE_FIELDS)
    assert f"Schema version: `{REPORT_SCHEMA_VERSION}`" in SCHEMA_DOC.read_text("utf-8")


def test_report_values(res, tmp_path):
    path = export.write_report_json(res, tmp_path / export.REPORT_JSON)
    rep = json.loads(path.read_text("utf-8"))
    vol = res.volume
    assert rep["schema_version"] == REPORT_SCHEMA_VERSION
    assert rep["ctscreen_version"] == __version__
    assert rep["research_notice"] == RESEARCH_NOTICE
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", rep["created"])
    s = rep["series"]
    assert s["series_instance_uid"] == vol.series_instance_uid and s["study_instance_uid"] == vol.study_instance_uid
    assert s["slice_count"] == vol.shape[0] and s["spacing_mm"] == pytest.approx(list(vol.spacing_mm))
    assert s["frame_of_reference_uid"] == vol.frame_of_reference_uid and s["modality"] == "CT"
    assert rep["model"] == {"name": res.model_name, "version": res.model_version, "device": res.device}
    assert rep["timings_s"] == res.timings_s
    assert rep["warnings"] == list(res.warnings)
    text = path.read_text("utf-8")
    assert FAKE_NAME not in text and "Doe" not in text and FAKE_ID not in text
    assert "NaN" not in text

    k = export.lesion_slice_indices(res)[0]
    assert rep["gradcam"]["computed_slices"] == [k, k + 1]
    assert rep["gradcam"]["flagged_slices"] == [{"index": k, "slice_number": k + 1,
                                                 "sop_instance_uid": vol.sop_instance_uids[k],
                                                 "instance_number": vol.instance_numbers[k],
                                                 "z_mm": pytest.approx(vol.z_mm[k]),
                                                 "outside_lung_fraction": 0.8}]


def test_slice_rows_match_the_measurements(res):
    rep = export.build_report(res)
    m = res.measurements
    assert len(rep["slices"]) == len(m.rows) > 0
    flagged = set(res.cam_flagged_slices())
    for got, row in zip(rep["slices"], m.rows):
        assert got["index"] == row.index and got["slice_number"] == row.index + 1
        assert got["sop_instance_uid"] == row.sop_instance_uid == res.volume.sop_instance_uids[row.index]
        assert got["instance_number"] == row.instance_number == res.volume.instance_numbers[row.index]
        assert got["z_mm"] == pytest.approx(res.volume.z_mm[row.index])
        for f in ("ggo_area_mm2", "consolidation_area_mm2", "lesion_area_mm2"):
            assert got[f] == pytest.approx(getattr(row, f))
        assert got["lungs"] == row.lungs and got["zone"] == row.zone
        pct = row.percent_of_slice_lung
        assert got["percent_of_slice_lung"] == (None if math.isnan(pct) else pytest.approx(pct))
        assert got["cam_flagged"] == (row.index in flagged)
    totals = m.to_dict()
    totals.pop("rows")
    assert rep["totals"] == totals


def test_patient_only_when_asked(res, tmp_path):
    rep = export.build_report(res, include_patient=True)
    assert rep["series"]["patient_name"] == FAKE_NAME and rep["series"]["patient_id"] == FAKE_ID


def test_csv_rows_and_header(res, tmp_path):
    path = export.write_report_csv(res, tmp_path / export.REPORT_CSV)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert "z [mm]" in rows[0] and "ggo_area [mm2]" in rows[0]
    assert len(rows) - 1 == len(res.measurements.rows)
    rep = export.build_report(res)
    for line, row in zip(rows[1:], rep["slices"]):
        assert line[SLICE_FIELDS.index("sop_instance_uid")] == row["sop_instance_uid"]
        assert float(line[SLICE_FIELDS.index("lesion_area_mm2")]) == pytest.approx(row["lesion_area_mm2"])


def test_reports_refuse_overwrite(res, tmp_path):
    export.write_report_json(res, tmp_path / "r.json")
    export.write_report_csv(res, tmp_path / "r.csv")
    with pytest.raises(ExportError, match="--force"):
        export.write_report_json(res, tmp_path / "r.json")
    with pytest.raises(ExportError, match="--force"):
        export.write_report_csv(res, tmp_path / "r.csv")
    export.write_report_json(res, tmp_path / "r.json", force=True)


def test_export_all_writes_everything_then_refuses(res, tmp_path):
    out = tmp_path / "out"
    written = export.export_all(res, out, png="lesions")
    names = sorted(p.name for p in written)
    assert names == sorted([export.REPORT_JSON, export.REPORT_CSV, export.SEG_NAME] +
                           [export.slice_png_name(k) for k in export.lesion_slice_indices(res)])
    assert export.existing_outputs(out, export.planned_outputs("lesions")) == sorted(written)
    with pytest.raises(ExportError, match="--force"):
        export.export_all(res, out, png="montage")
    assert len(export.export_all(res, out, png="montage", force=True)) == 4


def test_export_all_without_lesions_skips_the_seg(res, tmp_path):
    from ctscreen.imaging.measurements import measure_volume

    none = np.zeros_like(res.lesion)
    empty = dataclasses.replace(res, lesion=none, measurements=measure_volume(res.volume, none, res.lung))
    written = export.export_all(empty, tmp_path, png="montage")
    assert sorted(p.name for p in written) == sorted([export.REPORT_JSON, export.REPORT_CSV, export.MONTAGE_NAME])
    assert json.loads((tmp_path / export.REPORT_JSON).read_text())["slices"] == []
