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
from typing import Any, BinaryIO, Callable

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


def nifti_writer(volume: Any, data: np.ndarray, kind: str) -> Callable[[BinaryIO], None]:
    """A writer for :func:`ctscreen.io.files.atomic_write` that streams ``data`` as ``.nii.gz``.

    ``data`` is (z, y, x) in display order on ``volume``'s geometry; ``kind`` is ``"ct"``
    (int16 HU, or float32 when not integral), ``"lesions"`` (uint8 0 none / 1 GGO /
    2 consolidation) or ``"lung"`` (uint8 0 / 1 right / 2 left). The voxels go through
    gzip straight into the file (the (x, y, z) view of the C-ordered array is the
    Fortran order NIfTI stores, so no copy of the volume is made).
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
    # CT noise barely compresses (P001: 47.1 MB at level 1, 46.6 MB at 4, in 4.2 s vs 6.6 s); labels compress well
    level = 1 if kind == "ct" else 6

    def write(fh: BinaryIO) -> None:
        with gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=level, mtime=0) as gz:
            img.to_stream(gz)

    return write


def nifti_bytes(volume: Any, data: np.ndarray, kind: str) -> bytes:
    """``.nii.gz`` bytes of ``data`` (see :func:`nifti_writer`)."""
    buf = io.BytesIO()
    nifti_writer(volume, data, kind)(buf)
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
        written.append(atomic_write(folder / names[w], nifti_writer(result.volume, arrays[w], w), force=force))
    return written


def write_nifti_file(result: Any, path: str | os.PathLike, kind: str, force: bool = False) -> Path:
    """Write one NIfTI (``kind`` ``"lesions"``, ``"lung"`` or ``"ct"``) to ``path`` atomically."""
    arrays = {"lesions": result.lesion, "lung": result.lung, "ct": result.volume.hu}
    if kind not in arrays:
        raise ValueError(f"unknown NIfTI export {kind!r}")
    return atomic_write(path, nifti_writer(result.volume, arrays[kind], kind), force=force)


def volume_from_nifti(img: Any, **fields: Any) -> Any:
    """The :class:`~ctscreen.imaging.volume.Volume` of a NIfTI written by :func:`nifti_bytes` (inverse of
    :func:`volume_affine`); ``fields`` set its identifiers (``series_instance_uid``, ...)."""
    from ctscreen.imaging.volume import Volume

    aff = np.asarray(img.affine, float)
    cols = _LPS_TO_RAS @ aff[:3, :3]  # LPS vectors of NIfTI axes i (x), j (y), k (z)
    steps = np.linalg.norm(cols, axis=0)
    if np.any(steps <= 0):
        raise ExportError("the NIfTI affine has a zero-length axis \u2014 it was not written by ctscreen")
    sx, sy, sz = (float(s) for s in steps)
    direction = np.column_stack([cols[:, 2] / sz, cols[:, 1] / sy, cols[:, 0] / sx])
    origin = _LPS_TO_RAS @ aff[:3, 3]
    hu = np.asarray(img.dataobj).transpose(2, 1, 0)
    hu = np.ascontiguousarray(hu.astype(np.int16) if np.issubdtype(hu.dtype, np.integer) else hu.astype(np.float32))
    nz = hu.shape[0]
    z_mm = tuple(float(origin[2] + direction[2, 0] * sz * k) for k in range(nz))
    return Volume(hu=hu, spacing_mm=(sz, sy, sx), origin_mm=tuple(float(v) for v in origin), direction=direction,
                  z_mm=z_mm, **fields)


def is_analysis_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``ctscreen analyze --nifti`` output (report.json and the three NIfTIs)."""
    f = Path(folder)
    return f.is_dir() and (f / "report.json").is_file() and all((f / n).is_file() for n in NIFTI_NAMES)


def read_analysis_folder(folder: str | os.PathLike) -> Any:
    """Re-open the :class:`~ctscreen.imaging.result.AnalysisResult` of a ``ctscreen analyze --nifti`` folder.

    The CT, lung and lesion maps come from the NIfTIs, the model and series
    identifiers from ``report.json``; the measurements are recomputed from the maps
    (the same function the analysis used). Grad-CAM maps and probabilities are not
    stored there and are absent.
    """
    import json

    import nibabel as nib

    from ctscreen.imaging.measurements import measure_volume
    from ctscreen.imaging.result import AnalysisResult

    f = Path(folder)
    try:
        report = json.loads((f / "report.json").read_text(encoding="utf-8"))
        ct = nib.load(str(f / NIFTI_CT))
        lung = np.asarray(nib.load(str(f / NIFTI_LUNG)).dataobj).transpose(2, 1, 0).astype(np.uint8)
        lesion = np.asarray(nib.load(str(f / NIFTI_LESIONS)).dataobj).transpose(2, 1, 0).astype(np.uint8)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read the analysis in {f}: {exc} \u2014 run ctscreen analyze --nifti again") from exc
    series = report.get("series", {}) or {}
    model = report.get("model", {}) or {}
    vol = volume_from_nifti(ct, series_instance_uid=str(series.get("series_instance_uid") or ""),
                            study_instance_uid=str(series.get("study_instance_uid") or ""),
                            series_description=str(series.get("series_description") or ""),
                            frame_of_reference_uid=str(series.get("frame_of_reference_uid") or ""))
    if lung.shape != vol.shape or lesion.shape != vol.shape:
        raise ExportError(f"the NIfTIs in {f} have different shapes \u2014 run ctscreen analyze --nifti again")
    return AnalysisResult(volume=vol, lung=lung, lesion=lesion, lesion_prob=(lesion > 0).astype(np.float16),
                          measurements=measure_volume(vol, lesion, lung), model_name=str(model.get("name", "")),
                          model_version=str(model.get("version", "")), device=str(model.get("device", "")),
                          warnings=tuple(report.get("warnings", ()) or ()))
