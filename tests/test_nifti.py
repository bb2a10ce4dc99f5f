"""NIfTI exports: a voxel's world position agrees between the NIfTI affine and the DICOM geometry.

The synthetic series store a unique value per pixel (value = row*cols + col + 100*k), so a
voxel found by its value in the NIfTI array names its source pixel exactly, whose LPS
position follows from ImagePositionPatient/ImageOrientationPatient/PixelSpacing
(PS3.3 C.7.6.2.1.1). Each case is checked with nibabel's affine (RAS) and independently
with SimpleITK (LPS physical points), as ITK-SNAP and 3D Slicer read it.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import synthetic_series
from test_export_fixtures import result_for

from ctscreen.errors import ExportError
from ctscreen.imaging.result import CONSOLIDATION, GGO
from ctscreen.io.dicom import load_series
from ctscreen.io.nifti import (NIFTI_CT, NIFTI_LESIONS, NIFTI_LUNG, volume_affine, voxel_to_lps, write_nifti)

nib = pytest.importorskip("nibabel")

CASES = {
    "head-first-supine": dict(orientation=(1, 0, 0, 0, 1, 0)),
    "feet-first-supine": dict(orientation=(-1, 0, 0, 0, 1, 0)),
    "prone": dict(orientation=(-1, 0, 0, 0, -1, 0)),
    "transposed": dict(orientation=(0, 1, 0, 1, 0, 0)),
    "z-descending-files": dict(orientation=(1, 0, 0, 0, 1, 0), z_positions=[10.0, 7.5, 5.0, 2.5, 0.0]),
    "feet-first-z-descending": dict(orientation=(-1, 0, 0, 0, 1, 0), z_positions=[0.0, -3.0, -6.0, -9.0, -12.0]),
}


def _lps_to_ras(p):
    return np.array([-p[0], -p[1], p[2]])


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_world_position_agrees_with_dicom(tmp_path, case):
    syn = synthetic_series(tmp_path, n=5, rows=6, cols=8, **CASES[case])
    vol = load_series(syn.folder)
    lesion = np.zeros(vol.shape, np.uint8)
    lesion[2, 1, 2] = GGO
    lesion[3, 4, 5] = CONSOLIDATION
    res = result_for(vol, lesion=lesion, lung=np.ones(vol.shape, np.uint8))
    written = write_nifti(res, tmp_path)
    assert [p.name for p in written] == [NIFTI_LESIONS, NIFTI_LUNG, NIFTI_CT]

    ct = nib.load(str(tmp_path / NIFTI_CT))
    data = np.asanyarray(ct.dataobj)
    assert data.dtype == np.int16
    aff = ct.affine
    assert np.allclose(aff, volume_affine(vol))
    assert int(ct.header["sform_code"]) == 1 and int(ct.header["qform_code"]) == 1
    # every stored pixel of every source file: its value locates it in the NIfTI array
    stored_value = data.astype(np.int64) + 1024
    checked = 0
    for k in range(5):
        for i in range(0, 6, 2):
            for j in range(0, 8, 3):
                value = int(syn.stored[k][i, j])
                where = np.argwhere(stored_value == value)
                assert len(where) == 1, f"{case}: value {value} found {len(where)} times"
                ras = aff @ np.r_[where[0], 1.0]
                want = _lps_to_ras(syn.stored_pixel_lps(k, i, j))
                assert ras[:3] == pytest.approx(want, abs=1e-3), f"{case}: slice {k} pixel ({i}, {j})"
                checked += 1
    assert checked == 5 * 3 * 3
    # the label maps share the CT's grid and affine; the labelled voxels sit where the display array put them
    les = nib.load(str(tmp_path / NIFTI_LESIONS))
    assert np.allclose(les.affine, aff)
    ldata = np.asanyarray(les.dataobj)
    assert ldata.dtype == np.uint8 and int(les.header["intent_code"]) == 1002
    for (k, i, j), label in (((2, 1, 2), GGO), ((3, 4, 5), CONSOLIDATION)):
        (vox,) = np.argwhere(ldata == label)
        assert tuple(vox) == (j, i, k)
        ras = aff @ np.r_[vox, 1.0]
        assert ras[:3] == pytest.approx(_lps_to_ras(voxel_to_lps(vol, k, i, j)), abs=1e-6)
        assert data[j, i, k] == vol.hu[k, i, j]
    assert np.array_equal(np.asanyarray(nib.load(str(tmp_path / NIFTI_LUNG)).dataobj), np.ones(vol.shape[::-1], np.uint8))


@pytest.mark.parametrize("case", ["feet-first-supine", "prone"])
def test_simpleitk_reads_the_dicom_positions(tmp_path, case):
    """ITK (what ITK-SNAP and Slicer use) maps each NIfTI voxel to the source pixel's LPS position."""
    sitk = pytest.importorskip("SimpleITK")
    syn = synthetic_series(tmp_path, n=5, rows=6, cols=8, **CASES[case])
    vol = load_series(syn.folder)
    res = result_for(vol, lesion=np.zeros(vol.shape, np.uint8), lung=np.ones(vol.shape, np.uint8))
    write_nifti(res, tmp_path, which=("ct",))
    img = sitk.ReadImage(str(tmp_path / NIFTI_CT))
    arr = sitk.GetArrayFromImage(img).astype(np.int64) + 1024  # (k, j, i) in ITK order
    for k, i, j in ((0, 0, 0), (4, 5, 7), (2, 3, 1)):
        value = int(syn.stored[k][i, j])
        (where,) = np.argwhere(arr == value)
        idx = [int(v) for v in where[::-1]]  # ITK index is (i, j, k)
        lps = img.TransformIndexToPhysicalPoint(idx)
        assert lps == pytest.approx(tuple(syn.stored_pixel_lps(k, i, j)), abs=1e-3)


def test_no_sop_instance_uids_needed_and_no_patient_data(tmp_path):
    """A volume without SOPInstanceUIDs (no DICOM SEG possible) still exports; the header names no patient."""
    import dataclasses

    syn = synthetic_series(tmp_path, n=3, rows=6, cols=8)
    vol = dataclasses.replace(load_series(syn.folder), sop_instance_uids=(), headers=(), source_files=())
    res = result_for(vol, lesion=np.zeros(vol.shape, np.uint8), lung=np.ones(vol.shape, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    for p in write_nifti(res, out):
        raw = gzip.decompress(p.read_bytes())
        assert b"Synthetic" not in raw and b"SYN-001" not in raw and str(tmp_path).encode() not in raw
        assert b"research use only" in raw
    with pytest.raises(ExportError, match="exists"):
        write_nifti(res, out)
    write_nifti(res, out, force=True)


def test_analysis_folder_round_trip(tmp_path):
    """An analyze --nifti folder re-opens with the same geometry, maps and measurements."""
    import json

    from ctscreen.io.export_report import write_report_json
    from ctscreen.io.nifti import is_analysis_folder, read_analysis_folder

    syn = synthetic_series(tmp_path, n=5, rows=6, cols=8, **CASES["feet-first-supine"])
    vol = load_series(syn.folder)
    lesion = np.zeros(vol.shape, np.uint8)
    lesion[1:3, 2:4, 3:6] = GGO
    res = result_for(vol, lesion=lesion, lung=np.ones(vol.shape, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    assert not is_analysis_folder(out)
    write_report_json(res, out / "report.json")
    write_nifti(res, out)
    assert is_analysis_folder(out)
    back = read_analysis_folder(out)
    assert np.array_equal(back.volume.hu, vol.hu) and np.array_equal(back.lesion, lesion)
    assert back.volume.spacing_mm == pytest.approx(vol.spacing_mm)
    assert back.volume.origin_mm == pytest.approx(vol.origin_mm)
    assert np.allclose(back.volume.direction, vol.direction)
    assert back.volume.series_instance_uid == vol.series_instance_uid
    assert back.model_name == json.loads((out / "report.json").read_text())["model"]["name"]
    assert back.measurements.lesion_volume_ml == pytest.approx(res.measurements.lesion_volume_ml)


def test_export_all_writes_nifti_and_pdf(tmp_path):
    """export_all(nifti=True, pdf=True) - the path of 'ctscreen analyze --nifti --pdf' - plans, refuses and writes them."""
    from ctscreen.io.export import export_all, planned_outputs

    syn = synthetic_series(tmp_path, n=4, rows=6, cols=8)
    vol = load_series(syn.folder)
    res = result_for(vol, lesion=np.zeros(vol.shape, np.uint8), lung=np.ones(vol.shape, np.uint8))
    names = planned_outputs(png="none", report=False, seg=False, nifti=True, pdf=True)
    assert names == [NIFTI_LESIONS, NIFTI_LUNG, NIFTI_CT, "report.pdf"]
    out = tmp_path / "out"
    written = export_all(res, out, png="none", report=False, seg=False, nifti=True, pdf=True)
    assert sorted(p.name for p in written) == sorted(names)
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(ExportError, match="exists"):
        export_all(res, out, png="none", report=False, seg=False, pdf=True)
