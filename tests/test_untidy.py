"""Untidy real-world series, derived from real P001 slices: HU, geometry, messages, exit codes.

Each case reads a few consecutive slices of COVID-CT-MD P001 (decompressed with
pydicom), changes what a scanner, PACS export or anonymiser would change, writes
them to ``tmp_path`` and checks the loader, ``ctscreen analyze`` or the viewer's
screenshot mode against the untouched original: no traceback, one-line reasons,
the right HU and orientation, source files never modified.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from conftest import P001
from ctscreen.cli import main
from ctscreen.io.dicom import load_series, scan_folder

pytestmark = pytest.mark.skipif(not P001.is_dir(), reason="shared P001 series not found")

FIRST = 60  # P001 slices FIRST.. lie in the mid chest: both lungs, lesions
N_MAX = 8


@pytest.fixture(scope="module")
def p001() -> list[tuple[pydicom.Dataset, np.ndarray]]:
    """(header dataset, stored pixels) of N_MAX consecutive P001 slices, most superior first."""
    found = []
    for path in P001.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.append((-float(ds.ImagePositionPatient[2]), path))
    found.sort()
    out = []
    for _, path in found[FIRST:FIRST + N_MAX]:
        ds = pydicom.dcmread(path)
        px = ds.pixel_array.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = px.tobytes()
        for kw in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if kw in ds:
                del ds[kw]
        out.append((ds, px))
    return out


def slices(p001, n: int = 4) -> list[tuple[pydicom.Dataset, np.ndarray]]:
    """Fresh copies of the first ``n`` slices (cases modify them)."""
    return [(copy.deepcopy(ds), px.copy()) for ds, px in p001[:n]]


def reference_hu(p001, n: int = 4) -> np.ndarray:
    """HU of the untouched slices (P001: unsigned, intercept -1024, stored in display order)."""
    return np.stack([px.astype(np.int32) - 1024 for _, px in p001[:n]])


def write(folder: Path, dss, names=None, **save) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(dss):
        path = folder / (names[k] if names else f"im{k:03d}.dcm")
        path.parent.mkdir(parents=True, exist_ok=True)
        if save.get("little_endian") is False:
            pydicom.filewriter.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)
        else:
            ds.save_as(path, **save)
        paths.append(path)
    return paths


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file under ``folder`` (to prove nothing was modified)."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def outside_fov(rows: int = 512, cols: int = 512) -> np.ndarray:
    yy, xx = np.mgrid[:rows, :cols]
    return (yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 > (0.5 * min(rows, cols)) ** 2


# --------------------------------------------------------------------------- storage variants: exact HU


def _padding_m2000(ds, px):  # GE: signed, PixelPaddingValue, -2000 outside the reconstruction circle
    a = px.astype(np.int16)
    a[outside_fov()] = -2000 + 1024
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.PixelPaddingValue = -976
    ds["PixelPaddingValue"].VR = "SS"
    ds.PixelData = a.tobytes()
    hu = px.astype(np.int32) - 1024
    hu[outside_fov()] = -2000
    return hu


def _padding_m3024_intercept0(ds, px):  # Philips/Siemens: HU stored directly, -3024 outside
    a = px.astype(np.int16) - 1024
    a[outside_fov()] = -3024
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 1, 16, 15, 0
    ds.PixelData = a.tobytes()
    return a.astype(np.int32)


def _slope_half(ds, px):
    ds.PixelData = (px.astype(np.uint16) * 2).tobytes()
    ds.RescaleSlope, ds.BitsStored, ds.HighBit = 0.5, 16, 15
    return px.astype(np.int32) - 1024


def _overlay_in_high_bits(ds, px):  # BitsStored 12 with an old-style overlay in bit 15
    a = px.astype(np.uint16)
    a[100:120, 100:300] |= 0x8000
    ds.PixelData = a.tobytes()
    return px.astype(np.int32) - 1024


def _monochrome1(ds, px):  # the modality LUT gives HU whatever the photometric interpretation
    ds.PhotometricInterpretation = "MONOCHROME1"
    return px.astype(np.int32) - 1024


VARIANTS = {f.__name__[1:]: f for f in (_padding_m2000, _padding_m3024_intercept0, _slope_half,
                                         _overlay_in_high_bits, _monochrome1)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stored_value_variants_give_exact_hu(p001, tmp_path, name):
    cases = slices(p001)
    expected = np.stack([VARIANTS[name](ds, px) for ds, px in cases])
    write(tmp_path / name, [ds for ds, _ in cases])
    vol = load_series(tmp_path / name)
    np.testing.assert_array_equal(vol.hu.astype(np.int32), expected)
    assert vol.analysable and vol.spacing_mm == pytest.approx((2.0, 0.748046875, 0.748046875))


def _encode(ds, px, syntax):
    if syntax.is_compressed:
        ds.compress(syntax, px)
    elif syntax != ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = px.astype(">u2").tobytes()
        ds["PixelData"].VR = "OW"


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_lossless_transfer_syntaxes_give_exact_hu(p001, tmp_path, syntax):
    cases = slices(p001, 3)
    for ds, px in cases:
        try:
            _encode(ds, px, syntax)
        except (NotImplementedError, RuntimeError) as exc:  # no encoder plugin here
            pytest.skip(f"cannot encode {syntax.name}: {exc}")
    write(tmp_path / "s", [ds for ds, _ in cases],
          **({"little_endian": False} if syntax == ExplicitVRBigEndian else {}))
    scan = scan_folder(tmp_path / "s")
    assert [s.transfer_syntaxes for s in scan.series] == [(str(syntax),)]
    vol = load_series(scan.series[0])
    np.testing.assert_array_equal(vol.hu.astype(np.int32), reference_hu(p001, 3))
    assert vol.warnings == ()


def test_8bit_lossy_jpeg_ct_is_viewable_but_not_analysable(p001, tmp_path, capsys, tiny_model):
    imagecodecs = pytest.importorskip("imagecodecs")
    from pydicom.encaps import encapsulate

    cases = slices(p001, 3)
    for ds, px in cases:
        grey = (np.clip(px.astype(np.int32), 0, 4095) // 16).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(grey, level=85)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
    write(tmp_path / "jpeg8", [ds for ds, _ in cases])
    info = scan_folder(tmp_path / "jpeg8").series[0]
    assert "8-bit pixels cannot hold CT densities" in info.analysable_reason
    assert any("lossy compressed" in w for w in info.warnings)
    vol = load_series(info)  # still viewable
    assert vol.shape == (3, 512, 512) and "8-bit" in vol.not_analysable_reason
    out = tmp_path / "out"
    code, stdout, lines = _analyze(capsys, tmp_path / "jpeg8", out, tiny_model)
    assert code == 2 and stdout == "" and not out.exists()
    assert len(lines) == 1 and "8-bit pixels cannot hold CT densities" in lines[0]


def test_missing_rescale_is_reported(p001, tmp_path):
    cases = slices(p001, 3)
    for ds, _ in cases:
        del ds.RescaleIntercept, ds.RescaleSlope
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    assert any("no air found" in w and "RescaleIntercept is missing" in w for w in vol.warnings)
    assert not any("no air" in w for w in load_series(_plain(p001, tmp_path)).warnings)


def _plain(p001, tmp_path: Path, n: int = 3) -> Path:
    write(tmp_path / "plain", [ds for ds, _ in slices(p001, n)])
    return tmp_path / "plain"


# --------------------------------------------------------------------------- matrix and slice thickness


@pytest.mark.parametrize("shape", [(768, 768), (1024, 1024), (512, 640)])
def test_other_matrix_sizes(p001, tmp_path, shape):
    import cv2

    rows, cols = shape
    cases = slices(p001, 3)
    for ds, px in cases:
        if rows == cols:
            img = cv2.resize(px, (cols, rows), interpolation=cv2.INTER_NEAREST)
            ds.PixelSpacing = [0.748046875 * 512 / rows] * 2
        else:  # wider matrix: the original centred, columns of air on both sides
            img = np.zeros(shape, np.uint16)
            img[:, 64:576] = px
            pos = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [pos[0] - 64 * 0.748046875, pos[1], pos[2]]
        ds.Rows, ds.Columns = img.shape
        ds.PixelData = img.astype(np.uint16).tobytes()
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    assert vol.shape == (3, rows, cols) and vol.analysable
    if rows != cols:
        np.testing.assert_array_equal(vol.hu[:, :, 64:576].astype(np.int32), reference_hu(p001, 3))
        assert vol.origin_mm[0] == pytest.approx(float(p001[0][0].ImagePositionPatient[0]) - 64 * 0.748046875)
    else:
        assert vol.spacing_mm[1] == pytest.approx(0.748046875 * 512 / rows)


def test_thick_slices_spacing_from_positions(p001, tmp_path):
    cases = slices(p001, 4)
    for k, (ds, _) in enumerate(cases):
        ds.ImagePositionPatient = [float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1]), -40.0 - 5 * k]
        ds.SliceThickness = 5
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    assert vol.spacing_mm[0] == pytest.approx(5.0) and vol.z_mm == (-40.0, -45.0, -50.0, -55.0)


# --------------------------------------------------------------------------- patient position and geometry


def _feet_first(ds, px, k, n):
    """FFS as scanners write it: rows run to the patient's right, InstanceNumber from the feet."""
    ds.PixelData = np.ascontiguousarray(px[:, ::-1]).tobytes()
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0] + 511 * 0.748046875, pos[1], pos[2]]  # first stored column: the last one
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    ds.PatientPosition = "FFS"
    ds.InstanceNumber = n - k


def _prone(ds, px, k, n):
    ds.PixelData = np.ascontiguousarray(px[::-1, ::-1]).tobytes()
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0] + 511 * 0.748046875, pos[1] + 511 * 0.748046875, pos[2]]
    ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
    ds.PatientPosition = "HFP"


@pytest.mark.parametrize("change", [_feet_first, _prone], ids=["feet-first", "prone"])
def test_feet_first_and_prone_display_radiologically(p001, tmp_path, change):
    cases = slices(p001, 4)
    for k, (ds, px) in enumerate(cases):
        change(ds, px, k, len(cases))
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    # index 0 = most superior, anterior at the top, the patient's right on screen-left:
    # exactly the supine head-first original, pixel for pixel
    np.testing.assert_array_equal(vol.hu.astype(np.int32), reference_hu(p001, 4))
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-9)
    assert list(vol.z_mm) == sorted(vol.z_mm, reverse=True)
    assert vol.origin_mm == pytest.approx(tuple(float(v) for v in p001[0][0].ImagePositionPatient))
    assert vol.sop_instance_uids == tuple(str(ds.SOPInstanceUID) for ds, _ in cases)


def test_gantry_tilt_is_reported_and_spacing_is_along_the_normal(p001, tmp_path):
    tilt = np.deg2rad(15)
    cases = slices(p001, 4)
    for ds, _ in cases:  # positions still advance along the table (z); the image planes are tilted
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.GantryDetectorTilt = 15
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    np.testing.assert_array_equal(vol.hu.astype(np.int32), reference_hu(p001, 4))
    assert vol.spacing_mm[0] == pytest.approx(2.0 * np.cos(tilt))  # voxel volume = area x normal distance
    note = [w for w in vol.warnings if "gantry tilt" in w]
    assert note and "15.0" in note[0] and f"{3 * 2.0 * np.sin(tilt):.1f} mm" in note[0]
    assert vol.analysable
    # an untilted series gets no such note
    assert not any("gantry" in w for w in load_series(_plain(p001, tmp_path)).warnings)


def test_missing_pixel_spacing_falls_back_to_reconstruction_diameter(p001, tmp_path):
    cases = slices(p001, 3)
    for ds, _ in cases:
        del ds.PixelSpacing
    write(tmp_path / "a", [ds for ds, _ in cases])
    info = scan_folder(tmp_path / "a").series[0]
    vol = load_series(info)
    assert info.pixel_spacing == pytest.approx((383 / 512, 383 / 512))
    assert vol.spacing_mm[1:] == pytest.approx((383 / 512, 383 / 512))
    assert any("PixelSpacing missing" in w and "ReconstructionDiameter" in w for w in vol.warnings)
    for ds, _ in cases:
        del ds.ReconstructionDiameter
    write(tmp_path / "b", [ds for ds, _ in cases])
    info = scan_folder(tmp_path / "b").series[0]
    assert info.pixel_spacing is None and any("1 mm pixels assumed" in w for w in info.warnings)
    assert load_series(info).spacing_mm[1:] == (1.0, 1.0)


def test_missing_slice_thickness_is_harmless(p001, tmp_path):
    cases = slices(p001, 3)
    for ds, _ in cases:
        del ds.SliceThickness
    write(tmp_path / "s", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "s")
    assert vol.spacing_mm[0] == pytest.approx(2.0) and vol.warnings == ()


def test_positions_missing_on_some_files(p001, tmp_path):
    cases = slices(p001, 8)
    true_z = [float(ds.ImagePositionPatient[2]) for ds, _ in cases]
    for k in (3, 6):
        del cases[k][0].ImagePositionPatient
    write(tmp_path / "fit", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "fit")
    assert vol.z_mm == pytest.approx(true_z) and vol.spacing_mm[0] == pytest.approx(2.0)
    np.testing.assert_array_equal(vol.hu.astype(np.int32), reference_hu(p001, 8))
    assert any("missing in 2 of 8 slices (fit/im003.dcm, fit/im006.dcm): their positions were estimated" in w
               for w in vol.warnings)
    # InstanceNumber out of step with the positions: the slice without one cannot be placed
    for k, (ds, _) in enumerate(cases):
        ds.InstanceNumber = [5, 1, 3, 2, 6, 4, 8, 7][k]
    write(tmp_path / "nofit", [ds for ds, _ in cases])
    vol = load_series(tmp_path / "nofit")
    assert vol.shape[0] == 6 and any("those slices were left out" in w for w in vol.warnings)
    assert vol.spacing_mm[0] == pytest.approx(2.0)


# --------------------------------------------------------------------------- untidy folders


def test_untidy_folder_finds_the_series_and_modifies_nothing(p001, tmp_path):
    root = tmp_path / "export"
    cases = slices(p001, 4)
    dss = [ds for ds, _ in cases]
    # nested, no extension, non-ASCII names
    write(root / "PATIENT" / "STUDY", dss, names=[f"ÄÖ_é_{k}" for k in range(4)])
    # the same images again (same SOPInstanceUID) elsewhere in the tree
    write(root / "copy", dss[:2], names=["a.dcm", "b.dcm"])
    # a scout in the same series: coronal, different size
    scout = copy.deepcopy(dss[0])
    scout.ImageOrientationPatient, scout.ImageType = [1, 0, 0, 0, 0, -1], ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    scout.SOPInstanceUID, scout.Rows = generate_uid(), 256
    scout.PixelData = np.zeros((256, 512), np.uint16).tobytes()
    write(root, [scout], names=["scout.dcm"])
    # a dose report (SR), a presentation state, a DICOMDIR, a text file
    for name, modality, sop_class in (("dose.dcm", "SR", "1.2.840.10008.5.1.4.1.1.88.67"),
                                      ("ps.dcm", "PR", "1.2.840.10008.5.1.4.1.1.11.1")):
        obj = pydicom.Dataset()
        obj.file_meta = pydicom.dataset.FileMetaDataset()
        obj.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        obj.SOPClassUID = obj.file_meta.MediaStorageSOPClassUID = sop_class
        obj.SOPInstanceUID = generate_uid()
        obj.Modality, obj.SeriesInstanceUID = modality, generate_uid()
        obj.save_as(root / name, enforce_file_format=True)
    from pydicom.fileset import FileSet

    fs = FileSet()
    fs.add(root / "PATIENT" / "STUDY" / "ÄÖ_é_0")
    fs.write(tmp_path / "fs")
    os.replace(tmp_path / "fs" / "DICOMDIR", root / "DICOMDIR")
    (root / "README.txt").write_text("exported by PACS")
    os.symlink("..", root / "PATIENT" / "up")  # a symbolic link loop
    os.symlink(root / "PATIENT", root / "linked")  # a linked folder: walked once
    before = digest(root)

    scan = scan_folder(root)
    main_series = scan.series[0]
    assert main_series.plane == "axial" and main_series.slice_count == 4 and main_series.analysable
    assert [s.plane for s in scan.series] == ["axial", "coronal"]
    assert any("copies of the same image: same SOPInstanceUID" in w for w in main_series.warnings)
    notes = " | ".join(scan.warnings)
    assert "SR object(s)" in notes and "PR object(s)" in notes and "DICOMDIR" in notes
    assert scan.ignored_count == 1  # README.txt
    vol = load_series(root)
    np.testing.assert_array_equal(vol.hu.astype(np.int32), reference_hu(p001, 4))
    assert digest(root) == before


def test_several_ct_series_analyze_names_its_choice(p001, tmp_path, capsys, monkeypatch):
    from ctscreen.cli import analyze as analyze_cli

    a, b = slices(p001, 3), slices(p001, 4)
    for group, desc in ((a, "soft tissue 5 mm"), (b, "lung 2 mm")):
        uid = generate_uid()
        for ds, _ in group:
            ds.SeriesInstanceUID, ds.SeriesDescription, ds.SOPInstanceUID = uid, desc, generate_uid()
    write(tmp_path / "study", [ds for ds, _ in a], names=["a0", "a1", "a2"])
    write(tmp_path / "study", [ds for ds, _ in b], names=["b0", "b1", "b2", "b3"])
    notes: list[str] = []
    info = analyze_cli.pick_series(tmp_path / "study", None, notes)
    assert info.series_description == "lung 2 mm"
    assert len(notes) == 1 and "analysing" in notes[0] and "lung 2 mm" in notes[0] and "--series" in notes[0]
    assert scan_folder(tmp_path / "study").series[0].key == info.key  # the viewer opens the same one
    code = main(["analyze", str(tmp_path / "study"), "--out", str(tmp_path / "out"), "--series", "1.2.3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no series 1.2.3 here; found:" in err[0] and "lung 2 mm" not in err[0]
    assert not (tmp_path / "out").exists()


def test_equal_slice_counts_prefer_thinner_slices(p001, tmp_path):
    from ctscreen.cli.analyze import choose_series

    for folder, dz in (("thick", 5.0), ("thin", 1.0)):
        group = slices(p001, 3)
        uid = generate_uid()
        for k, (ds, _) in enumerate(group):
            ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
            ds.ImagePositionPatient = [-172.0, -328.0, -50.0 - dz * k]
        write(tmp_path / "study" / folder, [ds for ds, _ in group])
    scan = scan_folder(tmp_path / "study")
    assert scan.series[0].z_spacing_mm == 1.0 and choose_series(scan.series) is scan.series[0]


# --------------------------------------------------------------------------- analyze end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from ctscreen.inference.models import save_model
    from ctscreen.inference.nets import UNet

    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 4.0, -4.0]))  # every lung voxel ground-glass
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", path, {"version": "test-1", "input_size": 64})
    return str(path)


def _analyze(capsys, folder: Path, out: Path, model: str, *extra: str) -> tuple[int, str, list[str]]:
    code = main(["analyze", str(folder), "--out", str(out), "--model", model, "--device", "cpu",
                 "--cam", "none", *extra])
    cap = capsys.readouterr()
    return code, cap.out, [ln for ln in cap.err.splitlines() if ln.startswith("ctscreen analyze:")]


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_slices_is_a_one_line_reason(p001, tmp_path, capsys, tiny_model, n):
    folder = _plain(p001, tmp_path, n)
    code, out, lines = _analyze(capsys, folder, tmp_path / "out", tiny_model)
    assert code == 2 and out == "" and not (tmp_path / "out").exists()
    assert len(lines) == 1 and f"too few slices for a 3-D analysis ({n} slice" in lines[0] and str(folder) in lines[0]


def test_three_slices_analyse_and_sources_stay_untouched(p001, tmp_path, capsys, tiny_model):
    folder = _plain(p001, tmp_path, 3)
    before = digest(folder)
    code, out, lines = _analyze(capsys, folder, tmp_path / "out", tiny_model)
    assert code == 0, lines
    assert {"report.json", "report.csv", "lesions_seg.dcm"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert digest(folder) == before


def test_seg_that_cannot_be_built_is_left_out_with_a_note(p001, tmp_path, capsys, tiny_model, monkeypatch):
    from ctscreen.errors import ExportError
    from ctscreen.io import export_seg

    def refuse(*a, **k):
        raise ExportError("highdicom could not build the SEG: 'FileDataset' object has no attribute 'PixelSpacing'")

    monkeypatch.setattr(export_seg, "write_seg", refuse)
    cases = slices(p001, 3)
    for ds, _ in cases:
        del ds.PixelSpacing
    write(tmp_path / "s", [ds for ds, _ in cases])
    out = tmp_path / "out"
    code, stdout, lines = _analyze(capsys, tmp_path / "s", out, tiny_model, "--png", "none")
    assert code == 0, lines
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json"]  # no staging folder left
    assert any(ln.startswith("ctscreen analyze: no DICOM SEG written: highdicom") for ln in lines)
    assert any("warning: PixelSpacing missing" in ln and "ReconstructionDiameter" in ln for ln in lines)
    report = json.loads((out / "report.json").read_text())
    assert any("PixelSpacing missing" in w for w in report["series"]["volume_warnings"])
    assert "warning(s), listed in report.json" in stdout


def test_unwritable_output_is_a_one_line_reason(p001, tmp_path, capsys, tiny_model, monkeypatch):
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", denied)  # also what root meets on a read-only mount
    out = tmp_path / "new" / "out"
    code, stdout, lines = _analyze(capsys, _plain(p001, tmp_path), out, tiny_model)
    assert code == 2 and stdout == ""
    assert len(lines) == 1 and f"cannot write into {out}: Permission denied" in lines[0]
    assert not out.exists()
    (tmp_path / "file").write_text("x")
    code, _, lines = _analyze(capsys, _plain(p001, tmp_path), tmp_path / "file", tiny_model)
    assert code == 2 and "is a file, not a folder" in lines[0]


# --------------------------------------------------------------------------- the viewer's screenshot mode


def _view(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CTSCREEN_SETTINGS_DIR=str(tmp_path / "settings"))
    code = "import sys; from ctscreen.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "view", *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_viewer_shows_two_slices_and_refuses_to_analyse_them(p001, tmp_path):
    folder = _plain(p001, tmp_path, 2)
    shot = tmp_path / "two.png"
    proc = _view(str(folder), "--screenshot", str(shot), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert shot.stat().st_size > 10_000
    shot2 = tmp_path / "two_analysed.png"
    proc = _view(str(folder), "--analyze", "--device", "cpu", "--screenshot", str(shot2), tmp_path=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ctscreen view: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "too few slices" in lines[0]
    assert "Traceback" not in proc.stderr and not shot2.exists()


def test_series_browser_marks_view_only_series_and_shows_why(p001, tmp_path):
    from ctscreen.viewer.series_browser import series_subtitle, series_tooltip

    cases = slices(p001, 3)
    scout = copy.deepcopy(cases[0][0])
    scout.ImageOrientationPatient, scout.SOPInstanceUID = [1, 0, 0, 0, 0, -1], generate_uid()
    write(tmp_path / "s", [ds for ds, _ in cases] + [scout])
    axial, coronal = scan_folder(tmp_path / "s").series
    assert "view only" not in series_subtitle(axial)
    assert series_subtitle(coronal) == "CT · 1 slice · 512×512 · view only"
    tip = series_tooltip(coronal).splitlines()
    assert tip[0] == coronal.key and tip[1].startswith("View only: not an axial series (coronal slices)")
    assert any(line.startswith("Warning: SeriesInstanceUID") for line in tip)
