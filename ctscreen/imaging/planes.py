"""Axial, coronal and sagittal planes of a (z, y, x) volume, in radiological display order.

A :class:`~ctscreen.imaging.volume.Volume` is stored in radiological display order
(slice 0 at the head, row 0 anterior, column 0 the patient's right), so the three
planes are plain index views, never copies:

==========  ============  ===============  ===============  =========================
plane       fixed axis    image rows       image columns    standard display
==========  ============  ===============  ===============  =========================
axial       0 (z, ``k``)  axis 1 (y)       axis 2 (x)       A top, R on screen left
coronal     1 (y)         axis 0 (z)       axis 2 (x)       S top, R on screen left
sagittal    2 (x)         axis 0 (z)       axis 1 (y)       S top, A on screen left
==========  ============  ===============  ===============  =========================

Pixels keep their true size: a plane's pixel is ``plane_spacing_mm`` (row, column)
millimetres, so a coronal image of 2 mm slices is drawn twice as tall per row as
it is wide per column of 1 mm pixels. Orientation letters are derived from
``Volume.direction``, never assumed, so they stay true for any stored orientation.

Plane coordinates in mm put pixel ``(row, col)`` on ``[col * col_mm, (col + 1) * col_mm)``
by ``[row * row_mm, (row + 1) * row_mm)``, as the viewer places its images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
#: The array axis a plane is perpendicular to.
FIXED_AXIS = {"axial": 0, "coronal": 1, "sagittal": 2}
#: The array axes along a plane's image rows and columns.
IN_PLANE_AXES = {"axial": (1, 2), "coronal": (0, 2), "sagittal": (0, 1)}


def _check(plane: str) -> None:
    if plane not in FIXED_AXIS:
        raise ValueError(f"unknown plane {plane!r}; use one of {', '.join(PLANES)}")


def plane_count(shape: Sequence[int], plane: str) -> int:
    """Number of planes of this orientation in a volume of ``shape`` (z, y, x)."""
    _check(plane)
    return int(shape[FIXED_AXIS[plane]])


def plane_slice(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The 2-D (rows, cols) view of ``array`` (z, y, x, ...) at ``index`` along the plane's axis."""
    if plane == "axial":
        return array[index]
    if plane == "coronal":
        return array[:, index]
    if plane == "sagittal":
        return array[:, :, index]
    _check(plane)
    raise AssertionError  # unreachable


def plane_spacing_mm(spacing_mm: Sequence[float], plane: str) -> tuple[float, float]:
    """(row, column) pixel size in mm of the plane, from the volume's (z, y, x) spacing."""
    _check(plane)
    r, c = IN_PLANE_AXES[plane]
    return float(spacing_mm[r]), float(spacing_mm[c])


def voxel_of(plane: str, index: int, row: int, col: int) -> tuple[int, int, int]:
    """The (k, y, x) voxel at pixel (row, col) of plane ``index``."""
    _check(plane)
    voxel = [0, 0, 0]
    voxel[FIXED_AXIS[plane]] = int(index)
    r, c = IN_PLANE_AXES[plane]
    voxel[r], voxel[c] = int(row), int(col)
    return voxel[0], voxel[1], voxel[2]


def plane_position(plane: str, voxel: Sequence[int]) -> tuple[int, int, int]:
    """(index, row, col) of a (k, y, x) voxel in the given plane: the inverse of :func:`voxel_of`."""
    _check(plane)
    r, c = IN_PLANE_AXES[plane]
    return int(voxel[FIXED_AXIS[plane]]), int(voxel[r]), int(voxel[c])


def patient_xyz_mm(volume, voxel: Sequence[float]) -> tuple[float, float, float]:
    """DICOM LPS position (mm) of a (k, y, x) voxel (fractional indices allowed)."""
    index_mm = np.asarray(voxel, dtype=float) * np.asarray(volume.spacing_mm, dtype=float)
    xyz = np.asarray(volume.origin_mm, dtype=float) + np.asarray(volume.direction, dtype=float) @ index_mm
    return float(xyz[0]), float(xyz[1]), float(xyz[2])


def orientation_letter(vector: Sequence[float]) -> str:
    """The patient direction (R/L, A/P, S/I) a screen direction mostly points to (``vector`` in LPS)."""
    v = np.asarray(vector, dtype=float)
    i = int(np.argmax(np.abs(v)))
    return (("L", "R"), ("P", "A"), ("S", "I"))[i][0 if v[i] >= 0 else 1]


def orientation_letters(direction: np.ndarray, plane: str) -> dict[str, str]:
    """Letters for the four edges of a plane's image: keys ``left``, ``right``, ``top``, ``bottom``.

    ``direction[:, i]`` is the LPS unit vector of array axis ``i`` (see :class:`Volume`).
    """
    _check(plane)
    d = np.asarray(direction, dtype=float)
    r, c = IN_PLANE_AXES[plane]
    down, right = d[:, r], d[:, c]
    return {"left": orientation_letter(-right), "right": orientation_letter(right),
            "top": orientation_letter(-down), "bottom": orientation_letter(down)}


def cam_plane(cam: Mapping[int, np.ndarray], plane: str, index: int,
              shape: Sequence[int]) -> np.ndarray | None:
    """The Grad-CAM maps (computed per axial slice) cut along ``plane``; None where none exists.

    Axial: the slice's own map or None. Coronal and sagittal: a (z, cols) float32 image
    whose row ``k`` is the axial map of slice ``k`` along the plane, 0 (shown transparent)
    on slices without a map.
    """
    _check(plane)
    if plane == "axial":
        return cam.get(index)
    if not cam:
        return None
    nz = int(shape[0])
    ncols = int(shape[2] if plane == "coronal" else shape[1])
    out = np.zeros((nz, ncols), dtype=np.float32)
    for k, m in cam.items():
        if 0 <= k < nz:
            out[k] = m[index, :] if plane == "coronal" else m[:, index]
    return out
