"""Lesion volumes, lung involvement, zones and severity scores from label arrays.

Inputs are label arrays in (z, y, x) order, as elsewhere in ctscreen:

* ``lesion``: 0 none, 1 ground-glass opacity (GGO), 2 consolidation;
* ``lung``: 0 outside, 1 patient's right lung, 2 patient's left lung
  (:func:`ctscreen.imaging.lungmask.lung_mask`).

Zones. Each lung is cut into an upper, middle and lower third of *its own*
craniocaudal extent: from the superior face of its most superior slice to the
inferior face of its most inferior slice, by slice position (``z_mm``, which
grows towards the head as DICOM LPS +z does). A slice belongs to the third that
holds its centre. With six zones (right/left x upper/middle/lower) the severity
score follows the usual 0-5 bands per zone, summed to 0-30 (the zone-based CT
severity score, cf. Pan et al., Radiology 2020;295:715-721, which uses lobes):

=====  ==========================
score  share of the zone involved
=====  ==========================
0      none (no lesion voxel)
1      > 0 and < 5 %
2      5 % to 25 % (inclusive)
3      above 25 % to 50 %
4      above 50 % to 75 %
5      above 75 %
=====  ==========================

The bands are applied to the unrounded percentage, so 25.0 % scores 2 and
25.1 % scores 3 (the printed "26-50 %" band leaves 25-26 % undefined; this
module closes the gap upwards).

Percentages of lung involved count only lesion voxels inside the lung, over
the lung's voxels; lesion *volumes* count every lesion voxel, inside the lung or
not. The pipeline calls :func:`constrain_to_lung` first, so both agree there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SliceRow",
    "Measurements",
    "measure",
    "measure_volume",
    "constrain_to_lung",
    "severity_score",
    "count_lesions",
    "MIN_LESION_VOLUME_ML",
    "ZONES",
]

GGO = 1
CONSOLIDATION = 2
RIGHT = 1
LEFT = 2

#: Connected lesion pieces smaller than this (mL) are not counted as separate lesions
#: (single-voxel specks of a segmentation); their voxels still count in every volume.
MIN_LESION_VOLUME_ML = 0.01

#: The six zones, in the order used by fields, dicts and reports.
ZONES = (
    ("right", "upper"), ("right", "middle"), ("right", "lower"),
    ("left", "upper"), ("left", "middle"), ("left", "lower"),
)
_THIRDS = ("upper", "middle", "lower")
_SIDE_LETTER = {"right": "R", "left": "L"}

# 26-connectivity: voxels touching by a face, edge or corner belong to one lesion,
# so a lesion running obliquely through thick slices is not split in pieces.
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class SliceRow:
    """Lesion figures of one slice that holds any lesion voxel.

    Attributes
    ----------
    index : int
        Slice index in the volume's z axis (0-based).
    z_mm : float or None
        Slice position (``Volume.z_mm``); None when not given.
    sop_instance_uid : str or None
    instance_number : int or None
    ggo_area_mm2, consolidation_area_mm2, lesion_area_mm2 : float
        Areas of each class and of both together, inside or outside the lung.
    lungs : str
        Where the lesion pixels fall: ``"right"``, ``"left"``, ``"both"`` or
        ``"outside"`` (no lesion pixel inside a lung).
    zone : str
        The slice's zone in each lung that holds lesion pixels, e.g.
        ``"R upper"`` or ``"R upper, L middle"``; ``""`` when ``lungs`` is ``"outside"``.
    percent_of_slice_lung : float
        Lesion pixels inside the lung over lung pixels of this slice, in %;
        NaN when the slice holds no lung.
    """

    index: int
    z_mm: float | None
    sop_instance_uid: str | None
    instance_number: int | None
    ggo_area_mm2: float
    consolidation_area_mm2: float
    lesion_area_mm2: float
    lungs: str
    zone: str
    percent_of_slice_lung: float


@dataclass(frozen=True)
class Measurements:
    """Study-level lesion figures (see the module docstring for zones and bands).

    Volumes are in mL, percentages in % (NaN where the lung or zone is empty),
    severity scores are integers 0-5 per zone and 0-30 in total.
    ``lesion_count`` is the number of 26-connected 3-D lesion pieces of at least
    ``min_lesion_volume_ml``.
    """

    ggo_volume_ml: float
    consolidation_volume_ml: float
    lesion_volume_ml: float
    lung_volume_ml: float
    right_lung_volume_ml: float
    left_lung_volume_ml: float
    percent_involved: float
    percent_right: float
    percent_left: float
    percent_right_upper: float
    percent_right_middle: float
    percent_right_lower: float
    percent_left_upper: float
    percent_left_middle: float
    percent_left_lower: float
    severity_right_upper: int
    severity_right_middle: int
    severity_right_lower: int
    severity_left_upper: int
    severity_left_middle: int
    severity_left_lower: int
    severity_total: int
    lesion_count: int
    min_lesion_volume_ml: float
    rows: tuple[SliceRow, ...] = ()

    def zone_percent(self, side: str, third: str) -> float:
        """Percent involved of one zone, e.g. ``zone_percent("right", "upper")``."""
        return float(getattr(self, f"percent_{side}_{third}"))

    def zone_severity(self, side: str, third: str) -> int:
        """Severity score (0-5) of one zone."""
        return int(getattr(self, f"severity_{side}_{third}"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict.

        Keys are the field names, which carry their units (``_ml``, ``_mm2``,
        ``percent_``; severities and counts have none); NaN becomes None and
        ``rows`` a list of dicts.
        """
        out: dict[str, Any] = {}
        for name, value in asdict(self).items():
            if name == "rows":
                continue
            out[name] = _json_number(value)
        out["rows"] = [{k: _json_number(v) for k, v in asdict(r).items()} for r in self.rows]
        return out


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def severity_score(percent: float, any_lesion: bool | None = None) -> int:
    """Score 0-5 for the share of a zone involved.

    Parameters
    ----------
    percent
        Share of the zone involved, in % (unrounded).
    any_lesion
        Whether the zone holds any lesion voxel; when None, ``percent > 0``.
        NaN (empty zone) scores 0.

    Returns
    -------
    int
        0 none, 1 below 5 %, 2 up to 25 %, 3 up to 50 %, 4 up to 75 %, 5 above 75 %.
    """
    if percent is None or not math.isfinite(percent):
        return 0
    if any_lesion is None:
        any_lesion = percent > 0
    if not any_lesion:
        return 0
    if percent < 5.0:
        return 1
    if percent <= 25.0:
        return 2
    if percent <= 50.0:
        return 3
    if percent <= 75.0:
        return 4
    return 5


def constrain_to_lung(lesion: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Lesion labels with everything outside the lung set to 0 (``uint8``, a new array)."""
    lesion = np.asarray(lesion)
    lung = np.asarray(lung)
    if lesion.shape != lung.shape:
        raise ValueError(f"lesion shape {lesion.shape} differs from lung shape {lung.shape}")
    return np.where(lung > 0, lesion, 0).astype(np.uint8)


def _nonzero_box(*arrays: np.ndarray) -> tuple[slice, slice, slice]:
    """All slices, and the in-plane (y, x) box holding every non-zero voxel of the (z, y, x) ``arrays``.

    Empty (zero-size in y and x) when there is none. Only the slices with any voxel are
    scanned for the in-plane extent.
    """
    nz = arrays[0].shape[0]
    if arrays[0].size == 0:
        return (slice(None), slice(0, 0), slice(0, 0))
    any_yx = None
    for a in arrays:
        flat = a.reshape(nz, -1)
        zs = np.flatnonzero(flat.any(axis=1))
        if zs.size == 0:
            continue
        step = max(1, _SLAB_VOXELS // max(1, flat.shape[1]))
        plane = np.zeros(a.shape[1:], dtype=bool)
        for i in range(0, zs.size, step):  # a[zs] at once would copy every slice that holds a voxel
            plane |= a[zs[i:i + step]].any(axis=0)
        any_yx = plane if any_yx is None else (any_yx | plane)
    if any_yx is None:
        return (slice(None), slice(0, 0), slice(0, 0))
    ys = np.flatnonzero(any_yx.any(axis=1))
    xs = np.flatnonzero(any_yx.any(axis=0))
    return (slice(None), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1))


#: Voxels per slab of slices in the counting passes: their temporary codes stay a few MB.
_SLAB_VOXELS = 1 << 20


def _pair_counts(les_b: np.ndarray, lung_b: np.ndarray) -> np.ndarray:
    """``counts[k, lesion label, lung label]``: voxels of slice ``k`` per pair of labels.

    One bincount per slab of slices over uint8 codes ``9 * slice-in-slab + 3 * lesion + lung``
    (int16 for larger slabs), so the temporaries are a few MB rather than 8 bytes a voxel.
    """
    nz = les_b.shape[0]
    counts = np.zeros((nz, 3, 3), dtype=np.int64)
    plane = int(np.prod(les_b.shape[1:]))
    if plane == 0:
        return counts
    step = max(1, min(_SLAB_VOXELS // plane, 3000))  # 9 * 3000 codes fit int16
    offsets = 9 * np.arange(step, dtype=np.int16)[:, None, None]
    for z in range(0, nz, step):
        les = les_b[z:z + step]
        n = les.shape[0]
        code = les.astype(np.int16)
        code *= 3
        code += lung_b[z:z + step]
        code += offsets[:n]
        counts[z:z + n] = np.bincount(code.ravel(), minlength=9 * n).reshape(n, 3, 3)
    return counts


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole > 0 else float("nan")


def _zone_of_slices(z: np.ndarray, present: np.ndarray, half_thickness: np.ndarray) -> np.ndarray:
    """Third (0 upper, 1 middle, 2 lower) of every slice within the extent of one lung; -1 elsewhere."""
    out = np.full(z.shape, -1, dtype=np.int8)
    if not present.any():
        return out
    top = float(np.max(z[present] + half_thickness[present]))
    bottom = float(np.min(z[present] - half_thickness[present]))
    height = top - bottom
    if height <= 0:
        out[present] = 0
        return out
    t = (top - z) / height  # 0 at the apex, 1 at the base
    third = np.where(t < 1.0 / 3.0, 0, np.where(t < 2.0 / 3.0, 1, 2)).astype(np.int8)
    lo, hi = np.nonzero(present)[0][[0, -1]]
    out[lo : hi + 1] = third[lo : hi + 1]
    # Slices between the lung's first and last ones belong to it even where it is absent.
    return out


def _half_thickness(z: np.ndarray, dz: float) -> np.ndarray:
    if z.size < 2:
        return np.full(z.shape, abs(dz) / 2.0)
    gaps = np.abs(np.diff(z))
    left = np.concatenate([[gaps[0]], gaps])
    right = np.concatenate([gaps, [gaps[-1]]])
    return (left + right) / 4.0


def measure(
    lesion: np.ndarray,
    lung: np.ndarray,
    spacing_mm: Sequence[float],
    z_mm: Sequence[float] | None = None,
    sop_instance_uids: Sequence[str] | None = None,
    instance_numbers: Sequence[int | None] | None = None,
    min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML,
) -> Measurements:
    """Measure lesions against the lungs.

    Parameters
    ----------
    lesion
        (z, y, x) labels: 0 none, 1 GGO, 2 consolidation.
    lung
        (z, y, x) labels: 0 outside, 1 right lung, 2 left lung.
    spacing_mm
        Voxel spacing (z, y, x) in mm.
    z_mm
        Position of every slice, growing towards the patient's head (DICOM LPS +z).
        When None or empty, slice 0 is taken as the most superior and positions are
        ``-index * spacing_mm[0]``; rows then carry ``z_mm=None``.
    sop_instance_uids, instance_numbers
        Per-slice identifiers copied into the rows (None when not given).
    min_lesion_volume_ml
        Smallest 3-D piece counted in ``lesion_count``.

    Returns
    -------
    Measurements
    """
    lesion = np.asarray(lesion)
    lung = np.asarray(lung)
    if lesion.ndim != 3 or lesion.shape != lung.shape:
        raise ValueError(f"lesion {lesion.shape} and lung {lung.shape} must be (z, y, x) arrays of one shape")
    nz = lesion.shape[0]
    # Everything but the (0, 0) count happens inside the box that holds every lesion and lung voxel.
    box = _nonzero_box(lesion, lung)
    les_b, lung_b = lesion[box], lung[box]
    if les_b.size and (int(les_b.max()) > CONSOLIDATION or int(lung_b.max()) > LEFT):
        raise ValueError("lesion labels must be 0/1/2 and lung labels 0/1/2")
    dz, dy, dx = (float(s) for s in spacing_mm)
    pixel_mm2 = dy * dx
    voxel_ml = dz * pixel_mm2 / 1000.0

    if z_mm is None or len(z_mm) == 0:
        z = -np.arange(nz, dtype=float) * dz
        row_z: list[float | None] = [None] * nz
    else:
        if len(z_mm) != nz:
            raise ValueError(f"z_mm has {len(z_mm)} values for {nz} slices")
        z = np.asarray(z_mm, dtype=float)
        row_z = [float(v) for v in z]
    uids = list(sop_instance_uids) if sop_instance_uids is not None and len(sop_instance_uids) == nz else [None] * nz
    inums = list(instance_numbers) if instance_numbers is not None and len(instance_numbers) == nz else [None] * nz

    counts = _pair_counts(les_b, lung_b)
    # [slice, lesion label, lung label]; the pixels outside the box are (0, 0)
    counts[:, 0, 0] += int(np.prod(lesion.shape[1:])) - les_b.shape[1] * les_b.shape[2]

    lung_px = counts.sum(axis=1)  # [slice, lung label]
    lesion_in_lung = counts[:, 1:, :].sum(axis=1)  # [slice, lung label], lesion > 0
    class_px = counts.sum(axis=2)  # [slice, lesion label]

    half = _half_thickness(z, dz)
    zone_of = {
        "right": _zone_of_slices(z, lung_px[:, RIGHT] > 0, half),
        "left": _zone_of_slices(z, lung_px[:, LEFT] > 0, half),
    }
    side_label = {"right": RIGHT, "left": LEFT}

    zone_values: dict[str, float | int] = {}
    severities = []
    for side, third in ZONES:
        in_zone = zone_of[side] == _THIRDS.index(third)
        lab = side_label[side]
        involved = int(lesion_in_lung[in_zone, lab].sum())
        total = int(lung_px[in_zone, lab].sum())
        pct = _percent(involved, total)
        sev = severity_score(pct, involved > 0)
        zone_values[f"percent_{side}_{third}"] = pct
        zone_values[f"severity_{side}_{third}"] = sev
        severities.append(sev)

    rows = []
    for k in np.nonzero(class_px[:, 1:].sum(axis=1) > 0)[0]:
        k = int(k)
        sides = [s for s in ("right", "left") if lesion_in_lung[k, side_label[s]] > 0]
        lungs = "both" if len(sides) == 2 else (sides[0] if sides else "outside")
        zone = ", ".join(
            f"{_SIDE_LETTER[s]} {_THIRDS[zone_of[s][k]]}" for s in sides if zone_of[s][k] >= 0
        )
        slice_lung = int(lung_px[k, 1:].sum())
        rows.append(
            SliceRow(
                index=k,
                z_mm=row_z[k],
                sop_instance_uid=uids[k],
                instance_number=inums[k],
                ggo_area_mm2=float(class_px[k, GGO] * pixel_mm2),
                consolidation_area_mm2=float(class_px[k, CONSOLIDATION] * pixel_mm2),
                lesion_area_mm2=float(class_px[k, 1:].sum() * pixel_mm2),
                lungs=lungs,
                zone=zone,
                percent_of_slice_lung=_percent(int(lesion_in_lung[k, 1:].sum()), slice_lung),
            )
        )

    totals = class_px.sum(axis=0)
    lung_totals = lung_px.sum(axis=0)
    involved = lesion_in_lung.sum(axis=0)
    return Measurements(
        ggo_volume_ml=float(totals[GGO] * voxel_ml),
        consolidation_volume_ml=float(totals[CONSOLIDATION] * voxel_ml),
        lesion_volume_ml=float(totals[1:].sum() * voxel_ml),
        lung_volume_ml=float(lung_totals[1:].sum() * voxel_ml),
        right_lung_volume_ml=float(lung_totals[RIGHT] * voxel_ml),
        left_lung_volume_ml=float(lung_totals[LEFT] * voxel_ml),
        percent_involved=_percent(int(involved[1:].sum()), int(lung_totals[1:].sum())),
        percent_right=_percent(int(involved[RIGHT]), int(lung_totals[RIGHT])),
        percent_left=_percent(int(involved[LEFT]), int(lung_totals[LEFT])),
        severity_total=int(sum(severities)),
        lesion_count=count_lesions(lesion, voxel_ml, min_lesion_volume_ml),
        min_lesion_volume_ml=float(min_lesion_volume_ml),
        rows=tuple(rows),
        **zone_values,  # type: ignore[arg-type]
    )


def count_lesions(lesion: np.ndarray, voxel_ml: float, min_volume_ml: float = MIN_LESION_VOLUME_ML) -> int:
    """Number of 26-connected pieces of ``lesion > 0`` holding at least ``min_volume_ml``.

    GGO and consolidation that touch are one lesion (a consolidating core in a
    ground-glass halo is one finding).
    """
    lesion = np.asarray(lesion)
    sub = lesion[_nonzero_box(lesion)]  # a piece never leaves the box of all lesion voxels
    if sub.size == 0:
        return 0
    zs = np.flatnonzero(sub.reshape(sub.shape[0], -1).any(axis=1))
    if zs.size == 0:
        return 0
    pieces = sub[zs[0]:zs[-1] + 1] > 0
    try:  # uint16 labels where they fit: half the bytes of int32, the same numbering
        lab, n = ndi.label(pieces, structure=_CONNECTIVITY_26, output=np.uint16)
    except RuntimeError:
        lab, n = ndi.label(pieces, structure=_CONNECTIVITY_26)
    del pieces
    if n == 0:
        return 0
    sizes = np.zeros(n + 1, dtype=np.intp)
    step = max(1, _SLAB_VOXELS // max(1, lab[0].size))
    for z in range(0, lab.shape[0], step):  # bincount's intp copy by slabs
        sizes += np.bincount(lab[z:z + step].ravel(), minlength=n + 1)
    sizes = sizes[1:]
    # A small tolerance so a piece of exactly the minimum is counted despite float rounding.
    return int(np.count_nonzero(sizes * voxel_ml >= min_volume_ml * (1 - 1e-9)))


def measure_volume(volume: Any, lesion: np.ndarray, lung: np.ndarray, **kwargs: Any) -> Measurements:
    """:func:`measure` with spacing, positions and identifiers taken from a :class:`Volume`.

    Positions are ``volume.z_mm`` unless the volume's direction says the slices
    run the other way along LPS z, in which case the LPS z of each slice is used,
    so "upper" always means towards the head. With no usable direction (the
    axis-0 vector has no z component) ``volume.z_mm`` is trusted as is; with no
    ``z_mm`` either, slice 0 is taken as the most superior.
    """
    return measure(
        lesion,
        lung,
        volume.spacing_mm,
        z_mm=slice_z_mm(volume),
        sop_instance_uids=volume.sop_instance_uids or None,
        instance_numbers=volume.instance_numbers or None,
        **kwargs,
    )


def slice_z_mm(volume: Any) -> np.ndarray | None:
    """Slice positions growing towards the head, as :func:`measure_volume` uses them (None: unknown).

    ``volume.z_mm`` unless the volume's direction says the slices run the other way
    along LPS z, in which case the LPS z of each slice.
    """
    nz = volume.shape[0]
    dz = float(volume.spacing_mm[0])
    direction = np.asarray(volume.direction, dtype=float)
    z = np.asarray(volume.z_mm, dtype=float) if len(volume.z_mm) == nz else None
    if abs(direction[2, 0]) > 1e-6:
        lps_z = float(volume.origin_mm[2]) + direction[2, 0] * dz * np.arange(nz)
        if z is None or (nz > 1 and np.sign(z[-1] - z[0]) != np.sign(lps_z[-1] - lps_z[0])):
            z = lps_z
    return z


def slice_thirds(volume: Any, lung: np.ndarray) -> dict[str, np.ndarray]:
    """Third of each slice per lung, as the zones of :func:`measure_volume` define them.

    Returns ``{"right": a, "left": a}`` with ``a[k]`` 0 (upper), 1 (middle), 2 (lower)
    within that lung's craniocaudal extent and -1 outside it.
    """
    lung = np.asarray(lung)
    nz = lung.shape[0]
    dz = float(volume.spacing_mm[0])
    z = slice_z_mm(volume)
    if z is None:
        z = -np.arange(nz, dtype=float) * dz
    half = _half_thickness(z, dz)
    out = {}
    for side, label in (("right", RIGHT), ("left", LEFT)):
        present = np.array([bool((lung[k] == label).any()) for k in range(nz)])
        out[side] = _zone_of_slices(z, present, half)
    return out
