"""DICOM series engine on synthetic series (exact geometry and values) and real series."""

from __future__ import annotations

import csv
import io
import json
import threading

import numpy as np
import pydicom
import pytest

from conftest import DICOM_DATA, P001, synthetic_series
from ctscreen.errors import Cancelled, NotADicomSeries, UnsupportedTransferSyntax
from ctscreen.io import dicom
from ctscreen.io.dicom import iter_load_series, load_series, scan_folder


def drive(gen):
    """Run a load generator; return (progress list, Volume)."""
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            return progress, stop.value


def assert_geometry_consistent(vol, syn):
    """Every voxel's LPS position from origin/direction/spacing equals the stored pixel's position."""
    by_uid = {u: k for k, u in enumerate(syn.sop_instance_uids)}
    rows, cols = syn.stored[0].shape
    for z in range(vol.shape[0]):
        k = by_uid[vol.sop_instance_uids[z]]
        for (y, x) in [(0, 0), (vol.shape[1] - 1, 0), (0, vol.shape[2] - 1), (1, 2)]:
            index_mm = np.array([z, y, x]) * np.array(vol.spacing_mm)
            xyz = np.asarray(vol.origin_mm) + vol.direction @ index_mm
            # find the stored pixel with the same HU value (values are unique per slice)
            i, j = np.argwhere(syn.stored[k] == (vol.hu[z, y, x] + 1024))[0]
            np.testing.assert_allclose(xyz, syn.stored_pixel_lps(k, i, j), atol=1e-4)


def test_shuffled_files_load_in_position_order_head_first(tmp_path):
    syn = synthetic_series(tmp_path, 6, spacing_z=2.5)
    vol = load_series(syn.folder)
    assert vol.shape == (6, 6, 8)
    assert vol.hu.dtype == np.int16
    # k = 5 is the most superior slice: index 0
    assert vol.sop_instance_uids == tuple(reversed(syn.sop_instance_uids))
    assert vol.instance_numbers == (6, 5, 4, 3, 2, 1)
    np.testing.assert_allclose(vol.z_mm, [-30 + 2.5 * k for k in (5, 4, 3, 2, 1, 0)])
    assert vol.spacing_mm == pytest.approx((2.5, 0.7, 0.8))  # never SliceThickness (99)
    np.testing.assert_array_equal(vol.hu[0], syn.stored[5].astype(np.int32) - 1024)
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    assert vol.origin_mm == pytest.approx((-10.0, -20.0, -30.0 + 12.5))
    assert vol.warnings == ()
    assert vol.analysable and vol.modality == "CT"
    assert vol.patient_id == "SYN-001" and vol.series_instance_uid == syn.series_instance_uid
    assert len(vol.headers) == 6 and "PixelData" not in vol.headers[0]
    assert_geometry_consistent(vol, syn)


def test_first_progress_carries_slice_zero_before_the_rest(tmp_path):
    syn = synthetic_series(tmp_path, 8)
    progress, vol = drive(iter_load_series(syn.folder, workers=2))
    firsts = [p for p in progress if p.first_slice is not None]
    assert len(firsts) == 1
    np.testing.assert_array_equal(firsts[0].first_slice, vol.hu[0])
    assert progress[-1].done == progress[-1].total == 8


def test_stored_flipped_is_displayed_radiologically(tmp_path):
    syn = synthetic_series(tmp_path, 4, orientation=(-1, 0, 0, 0, -1, 0))
    vol = load_series(syn.folder)
    np.testing.assert_array_equal(vol.hu[0], syn.stored[3][::-1, ::-1].astype(np.int32) - 1024)
    # columns -> patient left (+x), rows -> posterior (+y); normal of stored IOP is +z
    np.testing.assert_allclose(vol.direction, [[0, 0, 1], [0, 1, 0], [-1, 0, 0]], atol=1e-12)
    assert vol.patient_left_is_plus_x()
    assert_geometry_consistent(vol, syn)


def test_transposed_storage_is_turned_back(tmp_path):
    # stored columns run posterior (+y), stored rows run left (+x)
    syn = synthetic_series(tmp_path, 3, orientation=(0, 1, 0, 1, 0, 0))
    vol = load_series(syn.folder)
    assert vol.shape == (3, 8, 6)
    assert vol.spacing_mm == pytest.approx((2.5, 0.8, 0.7))
    np.testing.assert_allclose(vol.direction[:, 1:], [[0, 1], [1, 0], [0, 0]], atol=1e-12)
    assert_geometry_consistent(vol, syn)


def test_oblique_series_sorted_along_the_normal(tmp_path):
    a = np.deg2rad(20)
    syn = synthetic_series(tmp_path, 5, orientation=(1, 0, 0, 0, np.cos(a), np.sin(a)), spacing_z=3.0)
    vol = load_series(syn.folder)
    assert vol.spacing_mm[0] == pytest.approx(3.0)
    assert vol.sop_instance_uids == tuple(reversed(syn.sop_instance_uids))
    assert np.all(np.diff(vol.z_mm) == pytest.approx(-3.0))
    assert vol.analysable  # 20 degrees of tilt is still axial
    assert_geometry_consistent(vol, syn)


def test_steep_oblique_is_not_analysable(tmp_path):
    a = np.deg2rad(50)
    syn = synthetic_series(tmp_path, 4, orientation=(1, 0, 0, 0, np.cos(a), np.sin(a)))
    vol = load_series(syn.folder)
    assert "not an axial series (oblique slices)" in vol.not_analysable_reason


def test_gap_is_reported_and_spacing_is_the_median(tmp_path):
    syn = synthetic_series(tmp_path, 5, z_positions=[0, 2.5, 5, 10, 12.5])
    vol = load_series(syn.folder)
    assert vol.spacing_mm[0] == pytest.approx(2.5)
    gaps = [w for w in vol.warnings if w.startswith("gap of 5.00 mm")]
    assert len(gaps) == 1 and "about 1 slice(s) missing" in gaps[0]
    assert not any("uneven" in w for w in vol.warnings)


def test_uneven_spacing_is_reported(tmp_path):
    syn = synthetic_series(tmp_path, 5, z_positions=[0, 2.5, 5, 7.2, 9.7])
    vol = load_series(syn.folder)
    assert vol.spacing_mm[0] == pytest.approx(2.5)
    assert any(w.startswith("uneven slice spacing: 2.20 to 2.50 mm") for w in vol.warnings)


def test_duplicate_positions_keep_one(tmp_path):
    syn = synthetic_series(tmp_path, 5, z_positions=[0, 2.5, 2.5, 5, 7.5])
    vol = load_series(syn.folder)
    assert vol.shape[0] == 4
    assert vol.spacing_mm[0] == pytest.approx(2.5)
    dup = [w for w in vol.warnings if "duplicate the position" in w]
    assert len(dup) == 1 and dup[0].startswith("1 slice(s)")
    assert syn.paths[2].name in dup[0]  # InstanceNumber 2 is kept, 3 skipped


def test_slope_and_intercept_give_exact_hu(tmp_path):
    syn = synthetic_series(tmp_path, 3, slope=2, intercept=-1024)
    vol = load_series(syn.folder)
    assert vol.hu.dtype == np.int16
    np.testing.assert_array_equal(vol.hu[2], syn.stored[0].astype(np.int32) * 2 - 1024)
    syn = synthetic_series(tmp_path, 3, name="half", slope=0.5, intercept=-1000.25)
    vol = load_series(syn.folder)
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu[2], syn.stored[0].astype(np.float32) * 0.5 - 1000.25)


def test_signed_pixels(tmp_path):
    def signed(k, rows, cols):
        return (np.arange(rows * cols).reshape(rows, cols) * 50 - 1200 + k).astype(np.int16)
    syn = synthetic_series(tmp_path, 3, pixels=signed, intercept=0)
    vol = load_series(syn.folder)
    np.testing.assert_array_equal(vol.hu[0], syn.stored[2])


def test_missing_positions_fall_back_to_instance_number(tmp_path):
    syn = synthetic_series(tmp_path, 4, with_positions=False, instance_numbers=[3, 1, 4, 2])
    vol = load_series(syn.folder)
    assert vol.instance_numbers == (1, 2, 3, 4)
    assert vol.sop_instance_uids == tuple(syn.sop_instance_uids[k] for k in (1, 3, 0, 2))
    assert any("ordered by InstanceNumber" in w and "missing in 4 of 4" in w for w in vol.warnings)
    assert vol.spacing_mm[0] == 1.0  # unknown, never SliceThickness


def test_two_series_in_one_folder(tmp_path):
    big = synthetic_series(tmp_path, 5, name="big", folder="mixed")
    small = synthetic_series(tmp_path, 3, name="small", folder="mixed", study_uid="1.2.3")
    mr = synthetic_series(tmp_path, 9, name="mr", folder="mixed", modality="MR")
    scan = scan_folder(tmp_path / "mixed")
    assert [s.series_instance_uid for s in scan.series] == [
        big.series_instance_uid, small.series_instance_uid, mr.series_instance_uid]
    assert [s.slice_count for s in scan.series] == [5, 3, 9]
    assert "modality is MR" in scan.series[2].analysable_reason
    vol = load_series(tmp_path / "mixed")  # the largest CT series, not the MR
    assert vol.series_instance_uid == big.series_instance_uid and vol.shape[0] == 5
    mr_vol = load_series(scan.series[2])  # a non-CT series still loads for viewing
    assert mr_vol.modality == "MR" and mr_vol.not_analysable_reason.startswith("modality is MR, not CT")


def test_one_uid_with_two_sizes_is_split(tmp_path):
    a = synthetic_series(tmp_path, 4, name="a", folder="split")
    synthetic_series(tmp_path, 3, name="b", folder="split", rows=5, cols=5, series_uid=a.series_instance_uid)
    scan = scan_folder(tmp_path / "split")
    assert [s.key for s in scan.series] == [a.series_instance_uid + "#1", a.series_instance_uid + "#2"]
    assert [(s.rows, s.columns, s.slice_count) for s in scan.series] == [(6, 8, 4), (5, 5, 3)]
    assert all("split into 2 series" in s.warnings[0] for s in scan.series)
    assert load_series(scan.series[1]).shape == (3, 5, 5)


def test_truncated_and_corrupt_files_are_skipped_with_their_names(tmp_path):
    syn = synthetic_series(tmp_path, 5, rows=32, cols=32)
    data = syn.paths[1].read_bytes()
    syn.paths[1].write_bytes(data[:-700])  # pixel data cut short
    bad_header = syn.folder / "zz_bad_header.dcm"
    bad_header.write_bytes(syn.paths[0].read_bytes()[:300])  # cut inside the header
    (syn.folder / "notes.txt").write_text("not dicom")
    scan = scan_folder(syn.folder)
    assert scan.ignored_count == 1
    assert any("zz_bad_header.dcm" in w for w in scan.warnings)
    vol = load_series(syn.folder)
    assert vol.shape[0] == 4
    assert any(str(syn.paths[1]) in w and "slice skipped" in w for w in vol.warnings)
    assert any(w.startswith("gap of 5.00 mm") for w in vol.warnings)


def test_folder_without_images(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.bin").write_bytes(b"\x00" * 10)
    with pytest.raises(NotADicomSeries, match=r"contains no DICOM images \(2 files ignored\) — choose a folder"):
        load_series(tmp_path)
    with pytest.raises(NotADicomSeries, match="does not exist"):
        scan_folder(tmp_path / "nope")


def test_cancel(tmp_path):
    syn = synthetic_series(tmp_path, 4)
    flag = threading.Event()
    flag.set()
    with pytest.raises(Cancelled):
        load_series(syn.folder, cancel=flag)
    flag = threading.Event()
    gen = iter_load_series(syn.folder, cancel=flag)
    next(gen)  # headers
    flag.set()
    with pytest.raises(Cancelled):
        drive(gen)


def test_unsupported_transfer_syntax_names_syntax_and_plugin(tmp_path, monkeypatch):
    syn = synthetic_series(tmp_path, 3)
    for p in syn.paths:  # claim an encoding nothing decodes (MPEG2)
        ds = pydicom.dcmread(p)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
        ds["PixelData"].VR = "OB"
        ds.save_as(p, enforce_file_format=True)
    with pytest.raises(UnsupportedTransferSyntax, match=r"MPEG2 Main Profile / Main Level \(1\.2\.840\.10008\.1\.2\.4\.100\)"):
        load_series(syn.folder)

    assert "unknown transfer syntax 1.2.3.4 cannot be decoded" in dicom._decoder_problem("1.2.3.4")

    class Missing:
        is_available = False
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Missing())
    msg = dicom._decoder_problem("1.2.840.10008.1.2.4.70")
    assert "JPEG Lossless, Non-Hierarchical, First-Order Prediction" in msg
    assert "install pylibjpeg-libjpeg (or python-gdcm)" in msg


def test_non_image_object_alone(tmp_path, shared):
    scan = scan_folder(DICOM_DATA / "edge-cases" / "rtstruct.dcm")
    assert scan.series == [] and scan.ignored_count == 0
    assert scan.warnings == ("skipped 1 RTSTRUCT object(s) without a viewable image: rtstruct.dcm",)
    with pytest.raises(NotADicomSeries, match="contains no DICOM images"):
        load_series(DICOM_DATA / "edge-cases" / "rtstruct.dcm")


def test_fast_jpeg_path_matches_pydicom(shared):
    if dicom._jpeg8_decode is None:
        pytest.skip("imagecodecs not installed")
    files = [DICOM_DATA / "edge-cases" / "CT_JPEG70.dcm"] + sorted(P001.glob("*.dcm"))[:3]
    for f in files:
        hdr = pydicom.dcmread(f, stop_before_pixels=True)
        fast = dicom._fast_jpeg(str(f), hdr)
        assert fast is not None
        np.testing.assert_array_equal(fast, pydicom.dcmread(f).pixel_array)


@pytest.mark.slow
def test_real_series_p001(shared):
    vol = load_series(P001)
    assert vol.shape == (148, 512, 512)
    assert vol.hu.dtype == np.int16
    assert vol.spacing_mm[0] == pytest.approx(2.0, abs=1e-3)
    assert np.all(np.diff(vol.z_mm) < 0)
    assert vol.warnings == () and vol.analysable
    with open(DICOM_DATA / "covid-ct-md" / "P001.labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert set(vol.sop_instance_uids) == {r["sop_instance_uid"] for r in rows}
    z_by_uid = {r["sop_instance_uid"]: float(r["slice_location_mm"]) for r in rows}
    np.testing.assert_allclose(vol.z_mm, [z_by_uid[u] for u in vol.sop_instance_uids], atol=0.05)
    assert -1100 <= vol.hu.min() and vol.hu.max() < 4000
    assert vol.patient_left_is_plus_x()


@pytest.mark.slow
def test_real_series_lung_pet_ct_uncompressed(shared):
    vol = load_series(DICOM_DATA / "lung-pet-ct-dx-A0002")
    assert vol.shape == (30, 512, 512)
    assert vol.spacing_mm[0] == pytest.approx(8.0, abs=1e-3)
    assert np.all(np.diff(vol.z_mm) == pytest.approx(-8.0, abs=1e-3))


@pytest.mark.slow
def test_info_json(shared, capsys):
    from ctscreen.cli import main
    assert main(["info", str(DICOM_DATA / "covid-ct-md"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["series_count"] == 3 and out["ignored_count"] == 2  # the two labels CSVs
    assert [s["slice_count"] for s in out["series"]] == [168, 154, 148]
    p001 = out["series"][2]
    assert p001["rows"] == 512 and p001["columns"] == 512 and p001["z_spacing_mm"] == pytest.approx(2.0)
    assert p001["modality"] == "CT" and p001["analysable"] is True and p001["analysable_reason"] == ""
    assert p001["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]


def test_info_table_and_exit_code(tmp_path, capsys):
    from ctscreen.cli import main
    syn = synthetic_series(tmp_path, 3)
    assert main(["info", str(syn.folder)]) == 0
    text = capsys.readouterr().out
    assert f"UID {syn.series_instance_uid}" in text and "3 slices  6x8  0.7x0.8x2.5 mm  axial" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["info", str(empty)]) == 2
    assert "contains no DICOM images (0 files ignored)" in capsys.readouterr().err


def test_info_run_info_writes_one_json_object(tmp_path):
    from argparse import Namespace
    from ctscreen.cli.info import run_info
    syn = synthetic_series(tmp_path, 3)
    buf = io.StringIO()
    assert run_info(Namespace(folder=str(syn.folder), json=True), out=buf) == 0
    obj = json.loads(buf.getvalue())
    assert obj["series"][0]["key"] == syn.series_instance_uid
    assert obj["series"][0]["pixel_spacing_mm"] == [0.7, 0.8]


def test_unreadable_entry_is_reported(tmp_path):
    syn = synthetic_series(tmp_path, 3)
    (syn.folder / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    scan = scan_folder(syn.folder)
    assert scan.series[0].slice_count == 3
    assert scan.warnings == (f"{syn.folder / 'dangling.dcm'}: cannot be read (No such file or directory) — skipped",)
