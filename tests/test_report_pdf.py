"""The one-page PDF report: rendered to PNG (pdftoppm, as a reader would see it) and checked.

Research use, not for diagnosis.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import types

import cv2
import numpy as np
import pytest

from test_compare import LUL, RLL, phantom_result

from ctscreen.errors import ExportError
from ctscreen.imaging.result import CONSOLIDATION, GGO
from ctscreen.io.report_pdf import key_slices, render_report_png, write_report_pdf

SCREENING = types.SimpleNamespace(
    category="typical", category_label="Typical appearance",
    reasons=("Bilateral ground-glass opacities in the lower zones decided the category.",),
    probabilities={"covid19": 0.91, "other_pneumonia": 0.06, "no_pneumonia": 0.03},
    model_name="clf-test", model_version="9.9")


@pytest.fixture(scope="module")
def result():
    r = phantom_result(lesions=[(RLL, 14.0, GGO), (LUL, 18.0, CONSOLIDATION)])
    vol = dataclasses.replace(r.volume, patient_name="Doe^Jane", patient_id="PAT-0042",
                              series_description="phantom series")
    return dataclasses.replace(r, volume=vol, screening=SCREENING)


def _text(pdf) -> str:
    if not shutil.which("pdftotext"):
        pytest.skip("pdftotext (poppler-utils) not installed; tools/install.sh installs it")
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout


def _png(pdf, tmp_path):
    if not shutil.which("pdftoppm"):
        pytest.skip("pdftoppm (poppler-utils) not installed; tools/install.sh installs it")
    subprocess.run(["pdftoppm", "-r", "72", "-png", "-singlefile", str(pdf), str(tmp_path / "page")], check=True)
    return cv2.imread(str(tmp_path / "page.png"))[..., ::-1]


def _has_colour(rgb: np.ndarray, colour, tol=40) -> int:
    return int((np.abs(rgb.astype(int) - np.array(colour)).sum(axis=-1) < tol).sum())


def _amber(rgb: np.ndarray) -> int:
    """Pixels of the GGO overlay hue (also blended over grey CT): red and green well above blue."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r - b > 60) & (g - b > 40) & (r >= g)).sum())


def _magenta(rgb: np.ndarray) -> int:
    """Pixels of the consolidation overlay hue: red and blue well above green."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((r - g > 60) & (b - g > 60)).sum())


def test_pdf_is_one_a4_page_with_the_findings(result, tmp_path):
    pdf = write_report_pdf(result, tmp_path / "report.pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") <= 1
    text = _text(pdf)
    assert "Research use only" in text
    assert "Typical appearance" in text and "COVID-19 0.91" in text
    m = result.measurements
    assert f"{m.lesion_volume_ml:.1f} mL" in text and f"{m.severity_total} / 30" in text
    assert f"{m.percent_right_lower:.1f} %" in text  # the zone grid
    assert "phantom 0" in text and "clf-test 9.9" in text  # model versions
    assert "Doe" not in text and "PAT-0042" not in text  # no patient data unless asked
    img = _png(pdf, tmp_path)
    h, w = img.shape[:2]
    assert 1.38 < h / w < 1.44  # A4 portrait
    # key images with both overlays in the upper half, the z-profile's filled areas in the lower part
    top, bottom = img[int(0.2 * h):int(0.45 * h)], img[int(0.70 * h):int(0.90 * h)]
    assert _amber(top) > 20 and _magenta(top) > 20
    assert _amber(bottom) > 50 and _magenta(bottom) > 50
    # the notice in red at the top and bottom
    red = (np.abs(img.astype(int) - [192, 57, 43]).sum(axis=-1) < 90)
    rows = np.flatnonzero(red.any(axis=1))
    assert rows.min() < 0.08 * h and rows.max() > 0.95 * h


def test_patient_only_when_asked_and_no_overwrite(result, tmp_path):
    pdf = write_report_pdf(result, tmp_path / "report.pdf", include_patient=True)
    assert "Doe^Jane" in _text(pdf) and "PAT-0042" in _text(pdf)
    with pytest.raises(ExportError, match="exists"):
        write_report_pdf(result, pdf)


def test_without_screening_or_lesions(result, tmp_path):
    clean = dataclasses.replace(result, screening=None, lesion=np.zeros_like(result.lesion))
    assert key_slices(clean) == [int(np.median(np.flatnonzero(clean.lung.any(axis=(1, 2)))))] or len(
        key_slices(clean)) == 1
    img = render_report_png(clean, dpi=40)
    h = img.shape[0]
    assert img.shape[0] > img.shape[1]
    assert _magenta(img[int(0.2 * h):int(0.44 * h)]) == 0 and _amber(img[int(0.70 * h):int(0.90 * h), :int(0.6 * img.shape[1])]) == 0  # legend on the right
    text = _text(write_report_pdf(clean, tmp_path / "r.pdf"))
    assert "not computed" in text


def test_key_slices_are_the_worst_spread_out(result):
    keys = key_slices(result)
    area = result.lesion.reshape(result.lesion.shape[0], -1).astype(bool).sum(axis=1)
    assert int(np.argmax(area)) in keys and len(keys) >= 2
    assert all(area[k] > 0 for k in keys)


def test_reader_measurements_are_listed(result, tmp_path):
    marks = [{"id": 1, "kind": "ruler", "plane": "axial", "index": 40, "summary": "42.0 mm"},
             {"id": 2, "kind": "ellipse", "plane": "coronal", "index": 50, "summary": "3.1 cm², mean -612 HU"}]
    text = _text(write_report_pdf(result, tmp_path / "r.pdf", reader_measurements=marks))
    assert "Reader measurements" in text
    assert "ruler axial slice 41: 42.0 mm" in text and "ellipse coronal slice 51" in text
    many = marks * 4
    text = _text(write_report_pdf(result, tmp_path / "r2.pdf", reader_measurements=many))
    assert "and 5 more" in text
