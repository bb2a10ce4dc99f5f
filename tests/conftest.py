"""Shared test fixtures and helpers.

``SHARED`` is the project's data folder beside the repository (read in place,
never copied). :func:`synthetic_series` writes a small CT series with pydicom
into ``tmp_path`` whose stored pixels and geometry are known exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DICOM_DATA = SHARED / "data" / "dicom"
EDGE_CASES = DICOM_DATA / "edge-cases"
P001 = DICOM_DATA / "covid-ct-md" / "P001"


@dataclass
class SyntheticSeries:
    """What :func:`synthetic_series` wrote. Lists are in *writing* order ``k``."""

    folder: Path
    paths: list[Path]
    stored: list[np.ndarray]  # stored pixel values of slice k (rows, cols)
    positions: list[tuple[float, float, float] | None]
    sop_instance_uids: list[str]
    series_instance_uid: str
    orientation: tuple[float, ...]
    pixel_spacing: tuple[float, float]

    def stored_pixel_lps(self, k: int, i: int, j: int) -> np.ndarray:
        """LPS position of stored pixel (row i, column j) of slice k (PS3.3 C.7.6.2.1.1)."""
        r = np.asarray(self.orientation[:3], float)
        c = np.asarray(self.orientation[3:], float)
        dy, dx = self.pixel_spacing
        return np.asarray(self.positions[k], float) + j * dx * r + i * dy * c


def default_pixels(k: int, rows: int, cols: int) -> np.ndarray:
    """Distinct values per slice and per pixel, so order and flips are visible."""
    return (np.arange(rows * cols, dtype=np.uint16).reshape(rows, cols) + 100 * k).astype(np.uint16)


def synthetic_series(
    tmp_path: Path,
    n: int = 5,
    *,
    name: str = "series",
    folder: str | None = None,
    rows: int = 6,
    cols: int = 8,
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    z_positions: Sequence[float] | None = None,
    spacing_z: float = 2.5,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-10.0, -20.0, -30.0),
    slope: float = 1,
    intercept: float = -1024,
    modality: str = "CT",
    series_uid: str | None = None,
    study_uid: str | None = None,
    with_positions: bool = True,
    instance_numbers: Sequence[int] | None = None,
    shuffle: bool = True,
    pixels: Callable[[int, int, int], np.ndarray] = default_pixels,
    seed: int = 0,
) -> SyntheticSeries:
    """Write ``n`` single-frame images ``name_NNN.dcm`` to ``tmp_path / (folder or name)``.

    Slice ``k`` lies at ``origin + z_positions[k] * normal`` (default
    ``k * spacing_z``: k = 0 is the most *inferior* slice of an axial series),
    with InstanceNumber ``k + 1`` unless given. File names are shuffled so
    directory order says nothing about slice order.
    """
    folder = tmp_path / (folder or name)
    folder.mkdir(parents=True, exist_ok=True)
    ori = tuple(float(v) for v in orientation)
    normal = np.cross(ori[:3], ori[3:])
    zs = list(z_positions) if z_positions is not None else [k * spacing_z for k in range(n)]
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    names = [f"{name}_{k:03d}.dcm" for k in range(n)]
    if shuffle:
        random.Random(seed).shuffle(names)
    out = SyntheticSeries(folder, [], [], [], [], series_uid, ori, tuple(pixel_spacing))
    for k in range(n):
        stored = pixels(k, rows, cols)
        pos = tuple(float(v) for v in np.asarray(origin, float) + zs[k] * normal) if with_positions else None
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName = "Synthetic^Patient"
        ds.PatientID = "SYN-001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = f"synthetic {name}"
        ds.InstanceNumber = instance_numbers[k] if instance_numbers is not None else k + 1
        ds.ImageOrientationPatient = list(ori)
        if pos is not None:
            ds.ImagePositionPatient = list(pos)
        ds.SliceThickness = 99  # must never be used as spacing
        ds.PixelSpacing = list(pixel_spacing)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 12 if stored.dtype == np.uint16 and stored.max() < 4096 else 16
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        out.paths.append(path)
        out.stored.append(stored)
        out.positions.append(pos)
        out.sop_instance_uids.append(str(ds.SOPInstanceUID))
    return out


@pytest.fixture
def shared() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared data folder {SHARED} not found")
    return SHARED
