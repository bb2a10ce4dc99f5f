"""Helpers for the export tests: a small synthetic CT series written with pydicom,
a hand-rolled loader producing a display-order ``Volume`` (the real loader is
used for the real series), and an ``AnalysisResult`` with real measurements.

The synthetic series is stored *flipped* (columns run towards the patient's
right, rows towards anterior), so the loader must flip both axes to reach the
radiological display order - this exercises the SEG writer's un-flipping.
Lesion voxels carry unique HU values (GGO_HU, CONS_HU) so a test can find the
expected mask straight from the stored pixels, independent of any flip logic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ctscreen.imaging.measurements import measure_volume
from ctscreen.imaging.result import CONSOLIDATION, GGO, AnalysisResult
from ctscreen.imaging.volume import Volume

GGO_HU = -555
CONS_HU = 33
FAKE_NAME = "Doe^Jane"
FAKE_ID = "PAT-0042"
#: ``Volume.direction`` of an axial display-order volume: columns are the LPS vectors of array axes z, y, x.
DISPLAY_AXIAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def _phantom(ny: int, nx: int, k: int, nz: int) -> np.ndarray:
    """One slice in *display* order (row 0 anterior, column 0 patient right)."""
    yy, xx = np.mgrid[0:ny, 0:nx]
    hu = np.full((ny, nx), -1000, np.int16)
    body = ((yy - ny / 2) / (ny * 0.45)) ** 2 + ((xx - nx / 2) / (nx * 0.47)) ** 2 <= 1
    hu[body] = 40
    right = ((yy - ny / 2) / (ny * 0.33)) ** 2 + ((xx - nx * 0.3) / (nx * 0.16)) ** 2 <= 1
    left = ((yy - ny / 2) / (ny * 0.33)) ** 2 + ((xx - nx * 0.7) / (nx * 0.16)) ** 2 <= 1
    hu[right | left] = -850
    if 1 <= k <= nz - 2:  # lesions on the inner slices only; an asymmetric pattern catches flips
        ggo = right & (yy < ny * 0.45) & (xx < nx * 0.28)
        hu[ggo] = GGO_HU
        if k % 2 == 1:
            cons = left & (yy > ny * 0.55) & (xx > nx * 0.72)
            hu[cons] = CONS_HU
    return hu


def write_synthetic_series(folder: Path, nz: int = 6, ny: int = 40, nx: int = 56,
                           spacing_yx: tuple[float, float] = (0.9, 0.6), dz: float = 2.5,
                           patient_name: str = FAKE_NAME, patient_id: str = FAKE_ID) -> list[Path]:
    """Write ``nz`` single-frame CT files stored with both in-plane axes flipped and z descending."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    sy, sx = spacing_yx
    paths = []
    for k in range(nz):
        disp = _phantom(ny, nx, k, nz)
        stored = disp[::-1, ::-1]  # columns -> patient right (-x), rows -> anterior (-y)
        z = 100.0 - k * dz  # written head first, but file order is shuffled below
        # stored pixel [0,0] is display [ny-1, nx-1]: the most posterior-left voxel
        x0 = (nx - 1) * sx - 150.0
        y0 = (ny - 1) * sy - 120.0
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyDate = "20200101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.Manufacturer = "synthetic"
        ds.SeriesNumber = 3
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = "synthetic flipped chest"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
        ds.ImagePositionPatient = [x0, y0, z]
        ds.SliceThickness = dz
        ds.PixelSpacing = [sy, sx]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(stored.astype(np.int16)).tobytes()
        p = folder / f"img_{(k * 7) % nz:03d}_{k}.dcm"  # file order != slice order
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def load_series_by_hand(folder: Path) -> Volume:
    """Minimal loader: axial, display order (row 0 anterior, column 0 patient right), z ascending."""
    items = []
    for p in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(p)
        items.append((float(ds.ImagePositionPatient[2]), p, ds))
    items.sort(key=lambda t: t[0])
    slices, headers = [], []
    for _, p, ds in items:
        a = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        r = np.array(ds.ImageOrientationPatient[:3], float)  # along stored columns (axis 1)
        c = np.array(ds.ImageOrientationPatient[3:], float)  # along stored rows (axis 0)
        if r[0] < 0:
            a = a[:, ::-1]
        if c[1] < 0:
            a = a[::-1, :]
        slices.append(a.astype(np.int16))
        h = pydicom.dcmread(p, stop_before_pixels=True)
        headers.append(h)
    ds0 = items[0][2]
    sy, sx = (float(v) for v in ds0.PixelSpacing)
    zs = [t[0] for t in items]
    dz = float(np.mean(np.diff(zs))) if len(zs) > 1 else 1.0
    hu = np.stack(slices)
    ny, nx = hu.shape[1:]
    ipp = np.array(ds0.ImagePositionPatient, float)
    # display voxel [0,0,0]: most anterior-right voxel of the lowest slice
    origin = (ipp[0] - (nx - 1) * sx, ipp[1] - (ny - 1) * sy, zs[0])
    return Volume(
        hu=hu, spacing_mm=(dz, sy, sx), origin_mm=origin, direction=DISPLAY_AXIAL_DIRECTION,
        sop_instance_uids=tuple(str(t[2].SOPInstanceUID) for t in items),
        instance_numbers=tuple(int(t[2].InstanceNumber) for t in items),
        z_mm=tuple(zs), modality="CT", series_instance_uid=str(ds0.SeriesInstanceUID),
        study_instance_uid=str(ds0.StudyInstanceUID), series_description=str(ds0.SeriesDescription),
        patient_name=str(ds0.PatientName), patient_id=str(ds0.PatientID),
        frame_of_reference_uid=str(ds0.FrameOfReferenceUID),
        source_files=tuple(str(t[1]) for t in items), headers=tuple(headers),
    )


def result_for(vol: Volume, lesion: np.ndarray | None = None, lung: np.ndarray | None = None,
               cam: dict | None = None, cam_outside: dict | None = None) -> AnalysisResult:
    hu = vol.hu
    if lung is None:
        lung = np.zeros(hu.shape, np.uint8)
        half = hu.shape[2] // 2
        lung_like = (hu <= -800) & (hu > -950) | (hu == GGO_HU) | (hu == CONS_HU)
        lung[:, :, :half][lung_like[:, :, :half]] = 1
        lung[:, :, half:][lung_like[:, :, half:]] = 2
    if lesion is None:
        lesion = np.zeros(hu.shape, np.uint8)
        lesion[hu == GGO_HU] = GGO
        lesion[hu == CONS_HU] = CONSOLIDATION
    return AnalysisResult(
        volume=vol, lung=lung, lesion=lesion, lesion_prob=(lesion > 0).astype(np.float16),
        measurements=measure_volume(vol, lesion, lung), model_name="fake-unet", model_version="0.0-test",
        device="cpu", cam=cam or {}, cam_outside_fraction=cam_outside or {}, cam_layer="enc4",
        timings_s={"load": 0.1, "segmentation": 1.5}, warnings=("synthetic data",),
    )


def synthetic_result(tmp_path: Path, **kw) -> AnalysisResult:
    folder = tmp_path / "series"
    write_synthetic_series(folder, **kw)
    return result_for(load_series_by_hand(folder))
