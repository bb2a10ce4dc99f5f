"""NIfTI-1 exports of an analysis: ``lesions.nii.gz``, ``lung.nii.gz`` and ``ct.nii.gz``.

Research use, not for diagnosis.

ITK-SNAP, 3D Slicer, FSL and nnU-Net open these aligned with each other and with
the source DICOM, because the affine comes from the loaded geometry
(:class:`ctscreen.imaging.volume.Volume`), not from the slice number:

* ``Volume`` arrays are ``(z, y, x)`` in display order and
  ``LPS = origin_mm + direction @ (index * spacing_mm)`` with index ``(k, i, j)``.
* NIfTI arrays are indexed ``[i, j, k]`` (first axis fastest in the file) and the
  affine maps ``(i, j, k, 1)`` to **RAS** world millimetres. The volume is written
  transposed to ``(x, y, z)`` so the NIfTI axes are the display columns, rows and
  slices, and the affine's columns are ``direction[:, 2] * spacing_x``,
  ``direction[:, 1] * spacing_y``, ``direction[:, 0] * spacing_z`` with the origin,
  all multiplied by ``diag(-1, -1, 1)`` (LPS -> RAS flips x and y).

Nothing here needs SOPInstanceUIDs, so a series that cannot make a DICOM SEG
(files without UIDs, secondary captures) still gets its label maps. The header's
description names ctscreen and the research notice; no patient name, ID or path is
written.
"""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ctscreen import __version__
from ctscreen.errors import ExportError
from ctscreen.io.files import atomic_write

#: File names of the NIfTI exports in an output folder.
NIFTI_LESIONS = "lesions.nii.gz"
NIFTI_LUNG = "lung.nii.gz"
NIFTI_CT = "ct.nii.gz"
NIFTI_NAMES = (NIFTI_LESIONS, NIFTI_LUNG, NIFTI_CT)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def volume_affine(volume: Any) -> np.ndarray:
    """The 4x4 NIfTI (RAS) affine of ``volume`` written by :func:`to_nifti_array`.

    Parameters
    ----------
    volume : Volume
        Its ``spacing_mm`` (z, y, x), ``origin_mm`` (LPS of voxel [0, 0, 0]) and
        ``direction`` (LPS unit vectors of array axes z, y, x as columns).

    Returns
    -------
    ndarray, shape (4, 4)
        Maps NIfTI voxel ``(i, j, k) = (column, row, slice)`` to RAS mm.
    """
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    sz, sy, sx = (float(s) for s in volume.spacing_mm)
    cols = np.column_stack([d[:, 2] * sx, d[:, 1] * sy, d[:, 0] * sz])
    aff = np.eye(4)
    aff[:3, :3] = _LPS_TO_RAS @ cols
    aff[:3, 3] = _LPS_TO_RAS @ np.asarray(volume.origin_mm, dtype=float)
    return aff


def to_nifti_array(arr: np.ndarray) -> np.ndarray:
    """A ``(z, y, x)`` display-order array as the ``(x, y, z)`` array :func:`volume_affine` describes."""
    return np.asarray(arr).transpose(2, 1, 0)


def voxel_to_lps(volume: Any, k: float, i: float, j: float) -> np.ndarray:
    """LPS mm of display voxel ``(k, i, j)`` (slice, row, column), by the Volume's own convention."""
    d = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    idx = np.array([k, i, j], dtype=float) * np.asarray(volume.spacing_mm, dtype=float)
    return np.asarray(volume.origin_mm, dtype=float) + d @ idx


def _image(volume: Any, data: np.ndarray, kind: str) -> Any:
    import nibabel as nib

    aff = volume_affine(volume)
    img = nib.Nifti1Image(to_nifti_array(data), aff)
    hdr = img.header
    hdr.set_xyzt_units("mm", "sec")
    rot = aff[:3, :3] / np.linalg.norm(aff[:3, :3], axis=0)
    orthogonal = np.allclose(rot.T @ rot, np.eye(3), atol=1e-4)
    img.set_sform(aff, code="scanner")
    if orthogonal:
        img.set_qform(aff, code="scanner")
    else:  # gantry tilt: a shear only the sform can hold
        img.set_qform(None, code="unknown")
    hdr["descrip"] = f"ctscreen {__version__} {kind}; research use only"[:79].encode("ascii", "replace")
    if kind == "ct":
        hdr["cal_min"], hdr["cal_max"] = -1350.0, 150.0  # lung window for viewers that read it
    else:
        hdr["intent_code"] = 1002  # NIFTI_INTENT_LABEL
        hdr["intent_name"] = b"label"
    return img


def nifti_bytes(volume: Any, data: np.ndarray, kind: str) -> bytes:
    """``.nii.gz`` bytes of ``data`` ((z, y, x) display order) on ``volume``'s geometry.

    ``kind`` is ``"ct"`` (int16 HU, or float32 when not integral), ``"lesions"``
    (uint8 0 none / 1 GGO / 2 consolidation) or ``"lung"`` (uint8 0 / 1 right / 2 left).
    """
    arr = np.asarray(data)
    if arr.shape != tuple(volume.shape):
        raise ExportError(f"{kind} array {arr.shape} does not match the volume {tuple(volume.shape)}")
    if kind == "ct":
        if arr.dtype != np.int16 and np.issubdtype(arr.dtype, np.integer):
            arr = arr.astype(np.int16)
        elif arr.dtype != np.int16:
            arr = arr.astype(np.float32)
    else:
        arr = arr.astype(np.uint8, copy=False)
    img = _image(volume, arr, kind)
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=4, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def write_nifti(result: Any, out_dir: str | os.PathLike, force: bool = False,
                which: tuple[str, ...] = ("lesions", "lung", "ct")) -> list[Path]:
    """Write ``lesions.nii.gz``, ``lung.nii.gz`` and ``ct.nii.gz`` of ``result`` into ``out_dir``.

    Parameters
    ----------
    result : AnalysisResult
    out_dir : path-like
        Existing folder.
    force : bool
        Overwrite existing files (otherwise an existing file is an :class:`ExportError`,
        checked for all three before anything is written).
    which : tuple of str
        Any of ``"lesions"``, ``"lung"``, ``"ct"``.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    folder = Path(out_dir)
    names = {"lesions": NIFTI_LESIONS, "lung": NIFTI_LUNG, "ct": NIFTI_CT}
    unknown = [w for w in which if w not in names]
    if unknown:
        raise ValueError(f"unknown NIfTI export {unknown[0]!r}; choose from {sorted(names)}")
    if not force:
        clash = [folder / names[w] for w in which if (folder / names[w]).exists()]
        if clash:
            raise ExportError(f"{clash[0]} exists \u2014 use --force to overwrite")
    arrays = {"lesions": result.lesion, "lung": result.lung, "ct": result.volume.hu}
    written = []
    for w in which:
        written.append(atomic_write(folder / names[w], nifti_bytes(result.volume, arrays[w], w), force=force))
    return written


def write_nifti_file(result: Any, path: str | os.PathLike, kind: str, force: bool = False) -> Path:
    """Write one NIfTI (``kind`` ``"lesions"``, ``"lung"`` or ``"ct"``) to ``path`` atomically."""
    arrays = {"lesions": result.lesion, "lung": result.lung, "ct": result.volume.hu}
    if kind not in arrays:
        raise ValueError(f"unknown NIfTI export {kind!r}")
    return atomic_write(path, nifti_bytes(result.volume, arrays[kind], kind), force=force)
