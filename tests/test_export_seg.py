"""DICOM SEG export: frames land on their source images, read back with highdicom/pydicom, pass dciodvfy."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ctscreen import __version__
from ctscreen.errors import ExportError
from ctscreen.io import export
from ctscreen.io.export_seg import CONSOLIDATION_TYPE, GGO_TYPE, build_seg, display_to_stored
from ctscreen.imaging.result import CONSOLIDATION, GGO

from test_export_fixtures import (CONS_HU, DISPLAY_AXIAL_DIRECTION, GGO_HU, load_series_by_hand, result_for,
                                  write_synthetic_series)

P001 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "covid-ct-md" / "P001"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _load_with(loader: str, folder: Path):
    if loader == "hand":
        return load_series_by_hand(folder)
    from ctscreen.io.dicom import load_series
    return load_series(folder)


@pytest.fixture(scope="module", params=["hand", "ctscreen"])
def synthetic(request, tmp_path_factory):
    """(result, source folder): series stored with both in-plane axes flipped."""
    root = tmp_path_factory.mktemp(f"seg_{request.param}")
    write_synthetic_series(root / "series")
    return result_for(_load_with(request.param, root / "series")), root / "series"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _frames_by_reference(path: Path) -> list[tuple[str, int, np.ndarray]]:
    """(ReferencedSOPInstanceUID, segment number, frame pixels) for every stored frame, via pydicom."""
    ds = pydicom.dcmread(path)
    pix = ds.pixel_array
    if int(ds.NumberOfFrames) == 1:
        pix = pix[None]
    out = []
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        seg_no = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out.append((str(uid), seg_no, pix[i]))
    return out


def _dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian/Ubuntu package dicom3tools) is not installed: apt-get install -y dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return proc.stdout + proc.stderr


def test_frames_match_the_stored_pixels_of_their_source(synthetic, tmp_path):
    res, folder = synthetic
    before = _digest(folder)
    path = export.write_seg(res, tmp_path / export.SEG_NAME)
    assert path == tmp_path / export.SEG_NAME
    assert _digest(folder) == before, "source files must never be modified"

    stored = {}
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        stored[str(ds.SOPInstanceUID)] = ds.pixel_array
    expected = {(uid, seg_no): (px == hu)
                for uid, px in stored.items() for seg_no, hu in ((GGO, GGO_HU), (CONSOLIDATION, CONS_HU))
                if (px == hu).any()}
    frames = _frames_by_reference(path)
    assert len(frames) == len(expected), "one frame per (slice, segment) with lesions; empty frames omitted"
    for uid, seg_no, px in frames:
        assert np.array_equal(px.astype(bool), expected[(uid, seg_no)]), f"frame of {uid} segment {seg_no}"


def test_highdicom_reads_it_back(synthetic, tmp_path):
    res, folder = synthetic
    path = export.write_seg(res, tmp_path / "seg.dcm")
    seg = hd.seg.segread(path)
    assert seg.SOPClassUID == SEG_STORAGE
    assert seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == res.volume.study_instance_uid
    assert seg.FrameOfReferenceUID == res.volume.frame_of_reference_uid
    ref_series = seg.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == res.volume.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence} == set(res.volume.sop_instance_uids)

    s1, s2 = seg.get_segment_description(1), seg.get_segment_description(2)
    assert s1.segment_label == "Ground-glass opacity" and s2.segment_label == "Consolidation"
    assert s1.segmented_property_type == GGO_TYPE and s2.segmented_property_type == CONSOLIDATION_TYPE
    for s in (s1, s2):
        assert s.segmented_property_category.value == "49755003"
        assert s.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        assert s.algorithm_identification[0].AlgorithmName == res.model_name
        assert s.algorithm_identification[0].AlgorithmVersion == res.model_version
    assert __version__ in str(seg.SoftwareVersions)

    vol = res.volume
    lesion_slices = export.lesion_slice_indices(res)
    uids = [vol.sop_instance_uids[k] for k in lesion_slices]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1, 2])
    for j, k in enumerate(lesion_slices):
        src = pydicom.dcmread(vol.source_files[k], stop_before_pixels=True)
        for seg_no in (1, 2):
            want = display_to_stored((res.lesion[k] == seg_no).astype(np.uint8), src.ImageOrientationPatient,
                                     vol.direction)
            assert np.array_equal(pixels[j, :, :, seg_no - 1].astype(bool), want.astype(bool))


def test_dciodvfy_reports_no_errors(synthetic, tmp_path):
    res, _ = synthetic
    path = export.write_seg(res, tmp_path / "seg.dcm")
    out = _dciodvfy(path)
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert not errors, out


def test_display_to_stored_undoes_flips_and_transpose():
    a = np.arange(12).reshape(3, 4)
    d = DISPLAY_AXIAL_DIRECTION
    assert np.array_equal(display_to_stored(a, [1, 0, 0, 0, 1, 0], d), a)
    assert np.array_equal(display_to_stored(a, [-1, 0, 0, 0, -1, 0], d), a[::-1, ::-1])
    assert np.array_equal(display_to_stored(a, [1, 0, 0, 0, -1, 0], d), a[::-1, :])
    # stored rows run along x, columns along y: the loader transposed
    assert np.array_equal(display_to_stored(a, [0, 1, 0, 1, 0, 0], d, (4, 3)), a.T)
    assert np.array_equal(display_to_stored(a, [0, -1, 0, 1, 0, 0], d), a.T[:, ::-1])
    with pytest.raises(ExportError, match="orientation"):
        display_to_stored(a, [0.7071, 0.7071, 0, 0, 0, -1], d)
    with pytest.raises(ExportError, match="resampled"):
        display_to_stored(a, [1, 0, 0, 0, 1, 0], d, (4, 4))


def test_refuses_overwrite_and_empty_mask(synthetic, tmp_path):
    res, _ = synthetic
    target = tmp_path / "seg.dcm"
    target.write_bytes(b"keep")
    with pytest.raises(ExportError, match="--force"):
        export.write_seg(res, target)
    assert target.read_bytes() == b"keep"
    export.write_seg(res, target, force=True)
    assert pydicom.dcmread(target).Modality == "SEG"
    empty = dataclasses.replace(res, lesion=np.zeros_like(res.lesion))
    with pytest.raises(ExportError, match="no lesions"):
        export.write_seg(empty, tmp_path / "empty.dcm")
    assert not (tmp_path / "empty.dcm").exists()


def test_falls_back_to_loaded_headers_when_files_moved(synthetic, tmp_path):
    res, _ = synthetic
    moved = dataclasses.replace(res, volume=dataclasses.replace(
        res.volume, source_files=tuple(str(tmp_path / "gone" / Path(f).name) for f in res.volume.source_files)))
    path = export.write_seg(moved, tmp_path / "seg.dcm")
    assert int(pydicom.dcmread(path).NumberOfFrames) > 0
    nothing = dataclasses.replace(moved, volume=dataclasses.replace(moved.volume, headers=()))
    with pytest.raises(ExportError, match="not found"):
        export.write_seg(nothing, tmp_path / "seg2.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]


@pytest.mark.slow
@pytest.mark.skipif(not P001.is_dir(), reason=f"real series not present at {P001}")
def test_real_series_p001(tmp_path):
    from ctscreen.io.dicom import load_series

    vol = load_series(P001)
    lesion = np.zeros(vol.shape, np.uint8)
    ks = [vol.shape[0] // 3, vol.shape[0] // 2, vol.shape[0] // 2 + 1]
    lesion[ks[0], 150:220, 100:180] = GGO
    lesion[ks[1], 300:360, 330:400] = CONSOLIDATION
    lesion[ks[2], 200:260, 120:170] = GGO
    lesion[ks[2], 280:300, 350:380] = CONSOLIDATION
    lung = np.zeros(vol.shape, np.uint8)
    lung[:, 100:400, 60:250] = 1
    lung[:, 100:400, 260:450] = 2
    res = result_for(vol, lesion=lesion, lung=lung)
    path = export.write_seg(res, tmp_path / "p001_seg.dcm")

    frames = _frames_by_reference(path)
    assert len(frames) == 4
    index_of = {u: k for k, u in enumerate(vol.sop_instance_uids)}
    for uid, seg_no, px in frames:
        k = index_of[uid]
        src = pydicom.dcmread(vol.source_files[k], stop_before_pixels=True)
        want = display_to_stored((lesion[k] == seg_no).astype(np.uint8), src.ImageOrientationPatient, vol.direction)
        assert np.array_equal(px.astype(bool), want.astype(bool))
    # the frame's plane position is the source image's position
    seg = pydicom.dcmread(path)
    for item, (uid, _, _) in zip(seg.PerFrameFunctionalGroupsSequence, frames):
        src = pydicom.dcmread(vol.source_files[index_of[uid]], stop_before_pixels=True)
        got = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert got == pytest.approx([float(v) for v in src.ImagePositionPatient], abs=1e-3)
    out = _dciodvfy(path)
    assert not [line for line in out.splitlines() if line.startswith("Error")], out


@pytest.mark.parametrize("orientation", [
    (1, 0, 0, 0, 1, 0),      # standard
    (-1, 0, 0, 0, -1, 0),    # both in-plane axes flipped
    (0, 1, 0, 1, 0, 0),      # stored transposed
    (0, -1, 0, -1, 0, 0),    # transposed and flipped
], ids=["standard", "flipped", "transposed", "transposed-flipped"])
def test_real_loader_orientations_round_trip(tmp_path, orientation):
    """Whatever flips/transposes ctscreen's loader applied, every SEG frame equals the mask on the stored grid."""
    from conftest import synthetic_series

    from ctscreen.io.dicom import load_series

    syn = synthetic_series(tmp_path, n=4, rows=6, cols=8, orientation=orientation)
    vol = load_series(syn.folder)
    # stored pixel values are unique per pixel (value = row*cols + col + 100*k), so a mask
    # defined on HU in display order has a known footprint on the stored grid
    raw = (np.asarray(vol.hu).astype(np.int64) + 1024) % 100
    lesion = np.zeros(vol.shape, np.uint8)
    lesion[(raw % 7 == 0)] = GGO
    lesion[(raw % 11 == 0) & (raw % 7 != 0)] = CONSOLIDATION
    lesion[0] = 0  # one empty slice: no frames for it
    res = result_for(vol, lesion=lesion, lung=np.ones(vol.shape, np.uint8))
    path = export.write_seg(res, tmp_path / "seg.dcm")
    stored = {uid: (px.astype(np.int64) % 100) for uid, px in zip(syn.sop_instance_uids, syn.stored)}
    frames = _frames_by_reference(path)
    empty_uid = vol.sop_instance_uids[0]
    assert empty_uid not in {uid for uid, _, _ in frames}
    assert len(frames) == 2 * (vol.shape[0] - 1)
    for uid, seg_no, px in frames:
        s = stored[uid]
        want = (s % 7 == 0) if seg_no == GGO else ((s % 11 == 0) & (s % 7 != 0))
        assert np.array_equal(px.astype(bool), want), f"{orientation}: frame of {uid}, segment {seg_no}"
    out = _dciodvfy(path)
    assert not [line for line in out.splitlines() if line.startswith("Error")], out


def test_seg_build_does_not_echo_the_patient_name(tmp_path):
    """highdicom warns about a one-component PatientName with the name in the message: not on our stderr."""
    import warnings

    write_synthetic_series(tmp_path / "series", patient_name="Lung_Dx-A0002")
    result = result_for(_load_with("ctscreen", tmp_path / "series"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_seg(result)
    assert not [w for w in caught if "Lung_Dx-A0002" in str(w.message)]
