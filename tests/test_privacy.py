"""No file path or file/folder name in report.json or the PDF unless the user asks (the brief's rule).

A hospital folder named after the patient (``Doe_John_1957``) must not reach the exports through
the loader's warnings, which name files so the user can find them on this machine.
"""

from __future__ import annotations

import dataclasses
import json

from ctscreen.io.export_report import build_report
from ctscreen.io.privacy import scrub_paths, source_names
from test_export_fixtures import synthetic_result


def _named_result(tmp_path):
    r = synthetic_result(tmp_path)
    folder = tmp_path / "Doe_John_1957"
    (tmp_path / "series").rename(folder)
    files = tuple(str(p) for p in sorted(folder.iterdir()))
    name = (folder.name + "/" + sorted(folder.iterdir())[1].name)
    vol = dataclasses.replace(r.volume, source_files=files,
                              warnings=(f"skipped 1 slice(s) ({name}): truncated",
                                        f"gap of 4.00 mm in {folder}"))
    return dataclasses.replace(r, volume=vol, warnings=("model file /home/dr_smith/models/mine.pt",)), folder


def test_report_json_has_no_paths_or_names_unless_asked(tmp_path):
    res, folder = _named_result(tmp_path)
    text = json.dumps(build_report(res))
    assert "Doe_John" not in text and "dr_smith" not in text and str(tmp_path) not in text
    rep = build_report(res)
    assert rep["series"]["volume_warnings"][0] == "skipped 1 slice(s) (<file>): truncated"
    assert rep["series"]["volume_warnings"][1] == "gap of 4.00 mm in <path>"
    assert rep["warnings"] == ["model file <path>"]
    asked = json.dumps(build_report(res, include_patient=True))
    assert "Doe_John_1957/" in asked and "/home/dr_smith/models/mine.pt" in asked


def test_pdf_footer_warnings_are_scrubbed(tmp_path):
    from ctscreen.io import report_pdf

    res, _ = _named_result(tmp_path)
    fig = report_pdf.build_report_figure(res)
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "warning(s)" in texts and "Doe_John" not in texts and "dr_smith" not in texts


def test_scrub_keeps_ordinary_words(tmp_path):
    (tmp_path / "Doe_John").mkdir()
    (tmp_path / "Doe_John" / "IM0001").write_bytes(b"x")
    names = source_names([str(tmp_path / "Doe_John" / "IM0001")])
    assert scrub_paths("slice IM0001 of Doe_John: gap of 2.0 mm", names) == "slice <file> of <file>: gap of 2.0 mm"
    assert scrub_paths("uneven slice spacing: 1.00 to 2.00 mm", names) == "uneven slice spacing: 1.00 to 2.00 mm"
