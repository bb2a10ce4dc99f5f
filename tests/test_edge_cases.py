"""Every file in shared/data/dicom/edge-cases either loads as documented or gives a clear error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import EDGE_CASES
from ctscreen.errors import NotADicomSeries
from ctscreen.io.dicom import load_series, scan_folder

# file -> (modality, shape, substring of not_analysable_reason or "" when analysable)
LOADS = {
    "693_J2KR.dcm": ("CT", (1, 512, 512), "too few slices for a 3-D analysis"),
    "693_UNCR.dcm": ("CT", (1, 512, 512), "too few slices"),
    "CT_Explicit_Little.dcm": ("CT", (1, 512, 512), "too few slices"),
    "CT_Implicit_Little_Headless_Retired.dcm": ("CT", (1, 512, 512), "slice orientation unknown"),
    "CT_JPEG70.dcm": ("CT", (1, 400, 512), "not an axial series (coronal slices)"),
    "JPEG-LL.dcm": ("NM", (1, 1024, 256), "modality is NM, not CT"),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": ("US", (1, 768, 1024), "modality is US, not CT"),
    "MG_Explicit_Little.dcm": ("MG", (1, 512, 512), "modality is MG, not CT"),
    "MR_Explicit_Little_MultiFrame.dcm": ("MR", (16, 256, 256), "modality is MR, not CT"),
    "MR_Implicit_Little.dcm": ("MR", (1, 256, 256), "modality is MR, not CT"),
    "OT_Implicit_Little_Headless.dcm": ("OT", (1, 512, 512), "modality is OT, not CT"),
    "US_Explicit_Big_RGB.dcm": ("US", (1, 480, 640), "colour (RGB) images"),
    "eCT_Supplemental.dcm": ("CT", (2, 512, 512), "too few slices"),
    "emri_small_big_endian.dcm": ("MR", (10, 64, 64), "modality is MR, not CT"),
    "explicit_VR-UN.dcm": ("CT", (1, 512, 512), "too few slices"),
}
# file -> the note scan_folder gives for an object without a viewable image
NO_IMAGE = {
    "MR_UnspecifiedLength.dcm": "skipped 1 SEG object(s) without a viewable image: MR_UnspecifiedLength.dcm",
    "rtstruct.dcm": "skipped 1 RTSTRUCT object(s) without a viewable image: rtstruct.dcm",
}

pytestmark = pytest.mark.skipif(not EDGE_CASES.exists(), reason="shared edge-case data not found")


def test_every_edge_case_file_is_covered():
    assert sorted(p.name for p in EDGE_CASES.iterdir()) == sorted(LOADS | NO_IMAGE)


@pytest.mark.parametrize("name", sorted(LOADS))
def test_edge_case_loads(name):
    modality, shape, reason = LOADS[name]
    vol = load_series(EDGE_CASES / name)
    assert vol.modality == modality
    assert vol.shape == shape
    assert reason in vol.not_analysable_reason
    assert vol.hu.dtype in (np.int16, np.float32)
    assert len(vol.headers) == shape[0] and len(vol.sop_instance_uids) == shape[0]


@pytest.mark.parametrize("name", sorted(NO_IMAGE))
def test_edge_case_without_image(name):
    scan = scan_folder(EDGE_CASES / name)
    assert scan.series == []
    assert scan.warnings == (NO_IMAGE[name],)
    with pytest.raises(NotADicomSeries, match=r"contains no DICOM images \(0 files ignored; skipped 1"):
        load_series(EDGE_CASES / name)


def test_lossless_j2k_equals_uncompressed():
    j2k = load_series(EDGE_CASES / "693_J2KR.dcm")
    raw = load_series(EDGE_CASES / "693_UNCR.dcm")
    np.testing.assert_array_equal(j2k.hu, raw.hu)
    assert (j2k.hu.min(), j2k.hu.max()) == (-3024, 1468)


def test_enhanced_ct_loads_from_functional_groups():
    vol = load_series(EDGE_CASES / "eCT_Supplemental.dcm")
    assert vol.z_mm == (-149.0, -159.0)  # per-frame PlanePositionSequence, superior first
    assert vol.spacing_mm == pytest.approx((10.0, 0.388672, 0.388672))  # PixelMeasuresSequence
    # frame 2 is the superior one; instance numbers come from InStackPositionNumber
    assert vol.sop_instance_uids[0].endswith("#2") and vol.instance_numbers == (1, 2)
    # stored IOP [-1,0,0, 0,1,0]: the loader flips columns so they run to patient left
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    assert vol.hu.min() == -1024  # PixelValueTransformationSequence intercept applied
    assert len(vol.headers) == 2 and vol.headers[0] is vol.headers[1]


def test_coronal_jpeg_lossless():
    vol = load_series(EDGE_CASES / "CT_JPEG70.dcm")
    # stored rows run to the feet, columns to patient left: already display order
    np.testing.assert_allclose(vol.direction[:, 1:], [[0, 1], [0, 0], [-1, 0]], atol=1e-12)
    assert vol.origin_mm == pytest.approx((-256.0, 0.0, 50.0))
    assert (int(vol.hu.min()), int(vol.hu.max())) == (-196, 406)


def test_headless_file_and_rgb():
    vol = load_series(EDGE_CASES / "CT_Implicit_Little_Headless_Retired.dcm")
    assert vol.hu.min() >= -1024 and vol.spacing_mm[1:] == pytest.approx((0.384766, 0.384766))
    rgb = load_series(EDGE_CASES / "US_Explicit_Big_RGB.dcm")
    assert rgb.hu.dtype == np.float32 and 0 <= rgb.hu.min() and rgb.hu.max() <= 255


def test_whole_edge_case_folder():
    scan = scan_folder(EDGE_CASES)
    assert scan.ignored_count == 0
    assert sorted(scan.warnings) == sorted(NO_IMAGE.values())
    # 693_J2KR and 693_UNCR are the same image: one series, duplicate kept once
    assert len(scan.series) == len(LOADS) - 1
    dup = [s for s in scan.series if s.files and "693_J2KR.dcm" in s.files[0]]
    assert dup and dup[0].slice_count == 1 and "duplicate the position" in dup[0].warnings[0]
    assert scan.series[0].series_description == "" and scan.series[0].modality == "CT"
    vol = load_series(EDGE_CASES)  # several series: the largest CT, here the 2-frame enhanced CT
    assert vol.shape == (2, 512, 512)


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("name", ["CT_Explicit_Little.dcm", "CT_JPEG70.dcm"])
def test_truncated_copy_gives_an_error_naming_it(tmp_path, name):
    data = (EDGE_CASES / name).read_bytes()
    cut = tmp_path / f"cut_{name}"
    cut.write_bytes(data[: len(data) * 2 // 3])  # header intact, pixel data cut short
    scan = scan_folder(tmp_path)
    assert len(scan.series) == 1  # headers only: the damage shows when decoding
    with pytest.raises(NotADicomSeries, match=rf"could be decoded: {cut}: cannot decode .* slice skipped"):
        load_series(tmp_path)


@pytest.mark.filterwarnings("ignore")
def test_random_damage_never_crashes(tmp_path):
    """Flipped header bytes and cut files end in a warning or a CtscreenError, nothing else."""
    import random

    from ctscreen.errors import CtscreenError

    sources = [EDGE_CASES / n for n in ("CT_JPEG70.dcm", "MR_Explicit_Little_MultiFrame.dcm",
                                        "eCT_Supplemental.dcm", "US_Explicit_Big_RGB.dcm")]
    for seed in range(60):
        rng = random.Random(seed)
        data = bytearray(rng.choice(sources).read_bytes())
        for _ in range(rng.randint(1, 30)):
            data[rng.randrange(0, 5000)] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        folder = tmp_path / str(seed)
        folder.mkdir()
        (folder / "f.dcm").write_bytes(bytes(data))
        try:
            load_series(folder)
        except CtscreenError:
            pass
