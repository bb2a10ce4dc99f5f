"""DICOM SEG from untidy source headers, on series derived from real P001 slices.

Headers that lack PixelSpacing, SliceThickness or a slice's ImagePositionPatient
still give a SEG: the export fills the values the loader used on in-memory copies
of the headers (never on the files), so every frame lies on its source image where
the loader put it. Each SEG is read back with pydicom and highdicom and checked with
``dciodvfy``. A series whose geometry the loader could only guess gets no SEG, with
a reason that ``ctscreen analyze`` prints as a note.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import P001
from ctscreen.errors import ExportError
from ctscreen.io import export
from ctscreen.io.dicom import load_series
from ctscreen.imaging.result import CONSOLIDATION, GGO
from test_export_fixtures import result_for
from test_untidy import _analyze, _feet_first, _prone, digest, p001, slices, tiny_model, write  # noqa: F401

pytestmark = pytest.mark.skipif(not P001.is_dir(), reason="shared P001 series not found")

GEOMETRY = ("PixelSpacing", "SliceThickness", "ImagePositionPatient")


def _lesion_of(hu: np.ndarray) -> np.ndarray:
    """Labels decided by the HU of each voxel, so the expected frame follows from the stored pixels alone."""
    lesion = np.zeros(hu.shape, np.uint8)
    lesion[(hu > -700) & (hu <= -300)] = GGO
    lesion[(hu > -300) & (hu <= 0)] = CONSOLIDATION
    return lesion


def _stored_by_uid(folder: Path) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in folder.iterdir() if p.is_file())}


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian/Ubuntu package dicom3tools) is not installed")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def _export_and_check(folder: Path, out: Path, true_positions: dict[str, list[float]],
                      pixel_spacing=(0.748046875, 0.748046875), slice_thickness: float = 2.0) -> pydicom.Dataset:
    """Load ``folder``, write the SEG of a HU-defined mask and check it against the stored images."""
    before = digest(folder)
    vol = load_series(folder)
    lesion = _lesion_of(np.asarray(vol.hu))
    assert lesion.any()
    path = export.write_seg(result_for(vol, lesion=lesion, lung=np.ones(vol.shape, np.uint8)), out)
    assert digest(folder) == before, "source files must never be modified"

    stored = _stored_by_uid(folder)
    seg = pydicom.dcmread(path)
    pix = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    seen = set()
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        seg_no = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        src = stored[uid]
        hu = src.pixel_array.astype(np.int32) * int(src.RescaleSlope) + int(src.RescaleIntercept)
        assert np.array_equal(pix[i].astype(bool), _lesion_of(hu) == seg_no), f"frame {i} of {uid}"
        got = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert got == pytest.approx(true_positions[uid], abs=1e-3), f"plane position of {uid}"
        seen.add((uid, seg_no))
    expected = {(uid, n) for uid, ds in stored.items() for n in (GGO, CONSOLIDATION)
                if (_lesion_of(ds.pixel_array.astype(np.int32) - 1024) == n).any()}
    assert seen == expected, "one frame per source image and segment with lesions"
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(list(pixel_spacing))
    assert float(measures.SliceThickness) == pytest.approx(slice_thickness)
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
            .ImageOrientationPatient] == pytest.approx([float(v) for v in next(iter(stored.values()))
                                                        .ImageOrientationPatient], abs=1e-9)
    # highdicom reads it back and finds the frames by source instance
    hseg = hd.seg.segread(path)
    uids = sorted({uid for uid, _ in seen})
    arr = hseg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[GGO, CONSOLIDATION])
    for j, uid in enumerate(uids):
        src = stored[uid]
        hu = src.pixel_array.astype(np.int32) - 1024
        for n in (GGO, CONSOLIDATION):
            assert np.array_equal(arr[j, :, :, n - 1].astype(bool), _lesion_of(hu) == n)
    assert hseg.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.series_instance_uid
    assert not _dciodvfy_errors(path)
    return seg


def _true_positions(dss) -> dict[str, list[float]]:
    return {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in dss}


@pytest.mark.parametrize("missing", [*GEOMETRY, "all"])
def test_seg_from_headers_missing_geometry(p001, tmp_path, missing):
    """The brief's reproduction: 3 P001 slices without PixelSpacing / SliceThickness / the middle slice's position."""
    dss = [ds for ds, _ in slices(p001, 3)]
    truth = _true_positions(dss)
    for k, ds in enumerate(dss):
        for kw in (GEOMETRY if missing == "all" else (missing,)):
            if kw != "ImagePositionPatient" or k == 1:
                delattr(ds, kw)
    write(tmp_path / "s", dss)
    _export_and_check(tmp_path / "s", tmp_path / "seg.dcm", truth)


def test_loaded_headers_are_not_changed(p001, tmp_path):
    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.PixelSpacing, ds.SliceThickness
    del dss[1].ImagePositionPatient
    write(tmp_path / "s", dss)
    vol = load_series(tmp_path / "s")
    before = [copy.deepcopy(h) for h in vol.headers]
    export.write_seg(result_for(vol, lesion=_lesion_of(np.asarray(vol.hu)), lung=np.ones(vol.shape, np.uint8)),
                     tmp_path / "seg.dcm")
    assert list(vol.headers) == before  # the viewer's tag panel still shows what the files hold
    assert "PixelSpacing" not in vol.headers[0] and "ImagePositionPatient" not in vol.headers[1]


def test_pixel_spacing_from_imager_pixel_spacing(p001, tmp_path):
    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.PixelSpacing, ds.ReconstructionDiameter
        ds.ImagerPixelSpacing = [0.8, 0.8]
    write(tmp_path / "s", dss)
    _export_and_check(tmp_path / "s", tmp_path / "seg.dcm", _true_positions(dss), pixel_spacing=(0.8, 0.8))


@pytest.mark.parametrize("change", [_feet_first, _prone], ids=["feet-first", "prone"])
@pytest.mark.parametrize("drop_position", [False, True], ids=["tidy", "position-missing"])
def test_feet_first_and_prone(p001, tmp_path, change, drop_position):
    cases = slices(p001, 4)
    for k, (ds, px) in enumerate(cases):
        change(ds, px, k, len(cases))
    dss = [ds for ds, _ in cases]
    truth = _true_positions(dss)
    if drop_position:
        del dss[2].ImagePositionPatient
        del dss[0].SliceThickness
    write(tmp_path / "s", dss)
    _export_and_check(tmp_path / "s", tmp_path / "seg.dcm", truth)


def test_gantry_tilt_position_follows_the_sheared_stack(p001, tmp_path):
    tilt = np.deg2rad(15)
    dss = [ds for ds, _ in slices(p001, 4)]
    for ds in dss:
        ds.ImageOrientationPatient = [1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt))]
        ds.GantryDetectorTilt = 15
    truth = _true_positions(dss)
    del dss[1].ImagePositionPatient
    write(tmp_path / "s", dss)
    _export_and_check(tmp_path / "s", tmp_path / "seg.dcm", truth)


def test_derived_series(p001, tmp_path):
    """A derived (secondary) series: own series and SOP UIDs, renumbered, pixel size and thickness stripped."""
    dss = [ds for ds, _ in slices(p001, 4)]
    series_uid = generate_uid()
    for k, ds in enumerate(dss):
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.DerivationDescription = "lung window export"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 501, "derived"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        del ds.PixelSpacing, ds.SliceThickness
    truth = _true_positions(dss)
    del dss[2].ImagePositionPatient
    write(tmp_path / "s", dss, names=[f"x{(7 * k) % 4}" for k in range(4)])
    seg = _export_and_check(tmp_path / "s", tmp_path / "seg.dcm", truth)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid


def test_geometry_the_loader_only_guessed_gives_no_seg(p001, tmp_path):
    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.ImagePositionPatient
    write(tmp_path / "nopos", dss)
    vol = load_series(tmp_path / "nopos")
    res = result_for(vol, lesion=_lesion_of(np.asarray(vol.hu)), lung=np.ones(vol.shape, np.uint8))
    with pytest.raises(ExportError, match="ordered by InstanceNumber"):
        export.write_seg(res, tmp_path / "a.dcm")

    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.PixelSpacing, ds.ReconstructionDiameter
    write(tmp_path / "nosize", dss)
    vol = load_series(tmp_path / "nosize")
    res = result_for(vol, lesion=_lesion_of(np.asarray(vol.hu)), lung=np.ones(vol.shape, np.uint8))
    with pytest.raises(ExportError, match="pixel size"):
        export.write_seg(res, tmp_path / "b.dcm")
    assert not list(tmp_path.glob("*.dcm"))


def test_analyze_writes_the_seg_or_says_why(p001, tmp_path, capsys, tiny_model):
    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.PixelSpacing, ds.SliceThickness
    del dss[1].ImagePositionPatient
    write(tmp_path / "untidy", dss)
    code, _, lines = _analyze(capsys, tmp_path / "untidy", tmp_path / "out", tiny_model, "--png", "none")
    assert code == 0, lines
    assert (tmp_path / "out" / "lesions_seg.dcm").exists()
    assert not any("no DICOM SEG" in ln for ln in lines)
    assert not _dciodvfy_errors(tmp_path / "out" / "lesions_seg.dcm")

    dss = [ds for ds, _ in slices(p001, 3)]
    for ds in dss:
        del ds.ImagePositionPatient
    write(tmp_path / "nopos", dss)
    code, _, lines = _analyze(capsys, tmp_path / "nopos", tmp_path / "out2", tiny_model, "--png", "none")
    assert code == 0, lines
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["report.csv", "report.json"]
    assert any(ln.startswith("ctscreen analyze: no DICOM SEG written:") and "InstanceNumber" in ln for ln in lines)


# --------------------------------------------------------------------------- loaded headers vs files


def _run_specific_removed(seg: pydicom.Dataset) -> pydicom.Dataset:
    """The SEG without what differs from one build to the next (new UIDs, creation times)."""
    for kw in ("SOPInstanceUID", "SeriesInstanceUID", "ContentDate", "ContentTime", "InstanceCreationDate",
               "InstanceCreationTime", "SeriesDate", "SeriesTime"):
        if kw in seg:
            del seg[kw]
    seg.file_meta = pydicom.dataset.FileMetaDataset()

    def blank(ds, elem):
        if elem.keyword in ("DimensionOrganizationUID", "ContributionDateTime", "TrackingUID"):
            elem.value = ""

    seg.walk(blank)
    return seg


def _same_seg_from_headers_and_files(vol) -> int:
    res = result_for(vol, lesion=_lesion_of(np.asarray(vol.hu)), lung=np.ones(vol.shape, np.uint8))
    from_headers = export.build_seg(res)
    from_files = export.build_seg(dataclasses.replace(res, volume=dataclasses.replace(vol, headers=())))
    a, b = _run_specific_removed(from_headers), _run_specific_removed(from_files)
    assert a == b
    return len(a.PerFrameFunctionalGroupsSequence)


@pytest.mark.parametrize("case", ["untidy", "feet-first"])
def test_loaded_headers_give_the_same_seg_as_the_files(p001, tmp_path, case):
    cases = slices(p001, 4)
    if case == "feet-first":
        for k, (ds, px) in enumerate(cases):
            _feet_first(ds, px, k, len(cases))
    else:
        for ds, _ in cases:
            del ds.PixelSpacing, ds.SliceThickness
        del cases[1][0].ImagePositionPatient
    write(tmp_path / "s", [ds for ds, _ in cases])
    assert _same_seg_from_headers_and_files(load_series(tmp_path / "s")) > 0


@pytest.mark.slow
def test_loaded_headers_give_the_same_seg_as_the_files_p001():
    assert _same_seg_from_headers_and_files(load_series(P001)) > 100
