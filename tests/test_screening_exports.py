"""The screening verdict in report.json, report.csv, the CLI summary and the montage header."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ctscreen import RESEARCH_NOTICE
from ctscreen.imaging.screening import assess_result, with_classifier
from ctscreen.io import export, export_png
from ctscreen.io.export_report import CSV_COLUMNS, SLICE_FIELDS, STUDY_CSV_COLUMNS

from test_analyze_cli import _run, chest_folder, tiny_model  # noqa: F401 - module fixtures reused here
from test_export_fixtures import synthetic_result
from test_export_report import documented_keys

PROBS = {"covid19": 0.81, "other_pneumonia": 0.12, "no_pneumonia": 0.07}


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    r = synthetic_result(tmp_path_factory.mktemp("screening"))
    s = with_classifier(assess_result(r), PROBS, (2, 3), "classifier", "test-7")
    return dataclasses.replace(r, screening=s)


def test_report_json_screening_object_follows_the_schema(res, tmp_path):
    doc = documented_keys()
    rep = json.loads(export.write_report_json(res, tmp_path / export.REPORT_JSON).read_text("utf-8"))
    s = rep["screening"]
    assert list(s) == doc["screening"]
    assert s["category"] == res.screening.category
    assert s["probabilities"] == PROBS and s["verdict"] == "covid19"
    assert s["model_version"] == "test-7" and s["notice"] == RESEARCH_NOTICE
    assert s["top_slice_numbers"] == [3, 4]
    for c in s["criteria"]:
        assert list(c) == doc["screening.criteria[]"]
    by_key = {c["key"]: c for c in s["criteria"]}
    assert by_key["burden"]["value"] == pytest.approx(res.measurements.percent_involved)
    assert set(s["decided_by"]) == {c["key"] for c in s["criteria"] if c["decisive"]}


def test_report_without_screening_has_null(res):
    rep = export.build_report(dataclasses.replace(res, screening=None))
    assert rep["screening"] is None


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_csv_rows_carry_the_verdict_and_notice(res, tmp_path):
    rows = _read_csv(export.write_report_csv(res, tmp_path / "r.csv"))
    assert tuple(rows[0]) == CSV_COLUMNS and rows[0][-3:] == list(STUDY_CSV_COLUMNS)
    assert len(rows) - 1 == len(res.measurements.rows) > 0
    for line in rows[1:]:
        assert line[-3:] == [res.screening.category, "covid19 0.81", RESEARCH_NOTICE]


def test_csv_without_lesions_still_has_the_verdict(res, tmp_path):
    from ctscreen.imaging.measurements import measure_volume

    none = np.zeros_like(res.lesion)
    empty = dataclasses.replace(res, lesion=none, measurements=measure_volume(res.volume, none, res.lung))
    empty = dataclasses.replace(empty, screening=assess_result(empty))
    rows = _read_csv(export.write_report_csv(empty, tmp_path / "r.csv"))
    assert len(rows) == 2
    assert rows[1][:len(SLICE_FIELDS)] == [""] * len(SLICE_FIELDS)
    assert rows[1][-3:] == ["negative", "", RESEARCH_NOTICE]


def test_montage_header_shows_the_verdict_beside_the_notice(res, monkeypatch):
    drawn: list[str] = []
    real = export_png._put_text
    monkeypatch.setattr(export_png, "_put_text", lambda img, text, *a, **k: (drawn.append(text), real(img, text, *a, **k)))
    img = export_png.render_montage(res)
    joined = " ".join(drawn)
    assert f"Screening verdict - {RESEARCH_NOTICE}" in drawn
    assert f"RSNA category: {res.screening.category_label}" in joined
    assert "COVID-19 0.81 / other 0.12 / none 0.07" in joined
    for text in drawn:  # wrapped to the montage's width
        assert export_png._text_size(text)[0] <= img.shape[1]
    drawn.clear()
    export_png.render_montage(dataclasses.replace(res, screening=None))
    assert not any("Screening" in t for t in drawn)


def test_cli_summary_line_has_the_verdict(res, tmp_path):
    from ctscreen.cli.analyze import summary

    line = summary(res, tmp_path, [tmp_path / "report.json"], 1.0)
    assert "\n" not in line
    assert f"RSNA {res.screening.category}" in line
    assert "classifier COVID-19 0.81 / other 0.12 / none 0.07" in line
    assert "research use only - not for diagnosis" in line


def test_cli_missing_classifier_fails_before_any_work(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu", "--classifier", str(tmp_path / "nope.pt"))
    assert code == 2 and stdout == "" and not out.exists()
    assert "nope.pt" in stderr and len(stderr.strip().splitlines()) == 1


def test_cli_classifier_none_writes_the_category_alone(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, _ = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model, "--device", "cpu",
                           "--cam", "none", "--no-seg", "--png", "none", "--classifier", "none")
    assert code == 0
    s = json.loads((out / export.REPORT_JSON).read_text("utf-8"))["screening"]
    assert s["category"] in ("typical", "indeterminate", "atypical", "negative")
    assert s["probabilities"] == {} and s["verdict"] == ""
    assert f"RSNA {s['category']}" in stdout and "no classifier probabilities" in stdout
