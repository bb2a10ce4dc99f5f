"""Follow-up comparison of two analysed studies of one patient (no Qt, no torch).

Research use, not for diagnosis.

:func:`compare` aligns the prior and the current study **by anatomy**, from their
lung masks, not by slice number, and tabulates the change per lung and zone.

Registration (a rigid translation in patient millimetres, LPS)
    1. Each study's lung is summarised per slice: lung area (mm²) and the LPS
       centroid of its lung pixels, placed with the volume's own geometry
       (``origin_mm``, ``direction``, ``spacing_mm``), so differing fields of view,
       slice spacings, table heights and feet-first series compare in one frame.
    2. The craniocaudal offset is the shift of the current lung-area profile
       ``A(z)`` that best matches the prior one (least normalised squared
       difference on a 0.5 mm grid, only where both studies were scanned, and
       only for shifts whose overlap holds at least half of each study's lung
       area, so a study cropped at the apex or base still aligns). A profile
       with a single slice falls back to the lung-centroid difference.
    3. The in-plane offset is the difference of the lung centroids over the
       overlapping craniocaudal range.
    Rotation and breathing differences are not modelled; ``residual_mm`` (the
    RMS distance between the matched per-slice centroids after the shift) says
    how well a translation explains the two lungs.

Change table
    One row per region (both lungs, right lung, left lung, six zones). The zones
    are those of :mod:`ctscreen.imaging.measurements` (upper/middle/lower third of
    each lung's craniocaudal extent) with one difference: the extent is that of
    the lung in *both* studies together, in the prior's frame after registration
    (:func:`common_zone_extents`), so a zone holds the same anatomy in both even
    when one scan stops short of the apex or the base. When both scans cover the
    whole lung these are each report's own zones. Per region: lesion, GGO and
    consolidation volume (mL, inside that lung), % of the region involved,
    severity (0-5 per zone, summed to 0-15 per lung and 0-30 for both) and the
    difference current - prior. The direction of a row
    (``"worse"``, ``"better"``, ``"unchanged"``) follows the lesion volume with a
    tolerance of ``max(TOLERANCE_ML, TOLERANCE_FRACTION * prior)`` — changes within
    it are reported as unchanged — and is ``"unchanged"`` for % and severity changes
    within :data:`TOLERANCE_PERCENT_POINTS` and 0 respectively.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctscreen import RESEARCH_NOTICE
from ctscreen.imaging.measurements import ZONES
from ctscreen.imaging.result import CONSOLIDATION, GGO, LEFT_LUNG, RIGHT_LUNG

#: A lesion-volume change within max(TOLERANCE_ML, TOLERANCE_FRACTION x prior) counts as unchanged.
TOLERANCE_ML = 0.5
TOLERANCE_FRACTION = 0.10
#: A change of % involvement within this many percentage points counts as unchanged.
TOLERANCE_PERCENT_POINTS = 1.0
#: Grid of the craniocaudal profile match (mm).
PROFILE_STEP_MM = 0.5

REGIONS = ("both", "right", "left") + tuple(f"{side}_{third}" for side, third in ZONES)
REGION_LABELS = {"both": "Both lungs", "right": "Right lung", "left": "Left lung",
                 **{f"{s}_{t}": f"{s[0].upper()} {t}" for s, t in ZONES}}
METRICS = ("lesion_ml", "ggo_ml", "consolidation_ml", "percent_involved", "severity")


@dataclass(frozen=True)
class Registration:
    """A translation that maps current LPS positions onto the prior: ``prior = current + offset_mm``.

    Attributes
    ----------
    offset_mm : tuple of float
        (x, y, z) in LPS mm.
    method : str
        ``"lung-profile"`` (z from the area profiles, x/y from the centroids) or
        ``"lung-centroid"`` (all three from the lung centroids).
    overlap_mm : tuple of float
        Prior LPS z range (low, high) that both studies cover after the shift.
    residual_mm : float
        RMS distance of the matched per-slice lung centroids after the shift (NaN if none).
    profile_cost : float
        Normalised squared difference of the matched area profiles (0 = identical; NaN if not used).
    centroid_offset_mm : tuple of float
        The plain whole-lung centroid difference, for reference.
    """

    offset_mm: tuple[float, float, float]
    method: str
    overlap_mm: tuple[float, float]
    residual_mm: float
    profile_cost: float
    centroid_offset_mm: tuple[float, float, float]


@dataclass(frozen=True)
class ChangeRow:
    """Prior and current figures of one region, their change and its direction."""

    region: str
    label: str
    prior: dict[str, float]
    current: dict[str, float]
    change: dict[str, float]
    direction: str
    tolerance_ml: float

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "label": self.label, "direction": self.direction,
                "tolerance_ml": _num(self.tolerance_ml),
                "prior": {k: _num(v) for k, v in self.prior.items()},
                "current": {k: _num(v) for k, v in self.current.items()},
                "change": {k: _num(v) for k, v in self.change.items()}}


def _num(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return v if math.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _half_thickness(z: np.ndarray, dz: float) -> np.ndarray:
    """Half the distance to the neighbouring slices (the rule :mod:`ctscreen.imaging.measurements` uses)."""
    if z.size < 2:
        return np.full(z.shape, abs(dz) / 2.0)
    gaps = np.abs(np.diff(z))
    return (np.concatenate([[gaps[0]], gaps]) + np.concatenate([gaps, [gaps[-1]]])) / 4.0


def _lps_z_of_slices(volume: Any) -> np.ndarray:
    """LPS z of every slice's centre point."""
    nz, ny, nx = volume.shape
    d = np.asarray(volume.direction, float).reshape(3, 3)
    sz, sy, sx = (float(s) for s in volume.spacing_mm)
    k = np.arange(nz, dtype=float)
    return float(volume.origin_mm[2]) + d[2, 0] * k * sz + d[2, 1] * (ny - 1) / 2 * sy + d[2, 2] * (nx - 1) / 2 * sx


@dataclass(frozen=True)
class _Profile:
    z: np.ndarray          # LPS z per slice
    area_mm2: np.ndarray   # lung area per slice
    centroid: np.ndarray   # (n, 3) LPS centroid of lung pixels per slice (NaN where none)
    count: np.ndarray      # lung pixels per slice


def _profile(volume: Any, lung: np.ndarray) -> _Profile:
    lung = np.asarray(lung) > 0
    nz, ny, nx = lung.shape
    sz, sy, sx = (float(s) for s in volume.spacing_mm)
    d = np.asarray(volume.direction, float).reshape(3, 3)
    origin = np.asarray(volume.origin_mm, float)
    rows = lung.sum(axis=2, dtype=np.int64)   # (z, y)
    cols = lung.sum(axis=1, dtype=np.int64)   # (z, x)
    count = rows.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mi = (rows * np.arange(ny)).sum(axis=1) / count
        mj = (cols * np.arange(nx)).sum(axis=1) / count
    k = np.arange(nz, dtype=float)
    idx = np.stack([k * sz, mi * sy, mj * sx], axis=1)
    centroid = origin + idx @ d.T
    centroid[count == 0] = np.nan
    return _Profile(z=_lps_z_of_slices(volume), area_mm2=count * sy * sx, centroid=centroid, count=count)


def _sorted(z: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(z)
    return z[order], a[order]


def _match_z(prior: _Profile, current: _Profile) -> tuple[float, float] | None:
    """Shift ``s`` (current z + s = prior z) and its cost, or None when the profiles cannot be matched."""
    if prior.z.size < 2 or current.z.size < 2 or not prior.count.any() or not current.count.any():
        return None
    zp, ap = _sorted(prior.z, prior.area_mm2)
    zc, ac = _sorted(current.z, current.area_mm2)
    step = PROFILE_STEP_MM
    gp = np.arange(zp[0], zp[-1] + step / 2, step)
    gc = np.arange(zc[0], zc[-1] + step / 2, step)
    tp = float(np.interp(gp, zp, ap).sum())
    tc = float(np.interp(gc, zc, ac).sum())
    if tp <= 0 or tc <= 0:
        return None
    shifts = np.arange(zp[0] - zc[-1], zp[-1] - zc[0] + step / 2, step)
    costs = np.full(shifts.shape, np.inf)
    for n, s in enumerate(shifts):
        lo, hi = max(zp[0], zc[0] + s), min(zp[-1], zc[-1] + s)
        if hi - lo < step:
            continue
        g = np.arange(lo, hi + step / 2, step)
        a = np.interp(g, zp, ap)
        b = np.interp(g - s, zc, ac)
        if a.sum() < 0.5 * tp or b.sum() < 0.5 * tc:
            continue  # the overlap must hold at least half of each study's lung
        denom = float(np.dot(a, a) + np.dot(b, b))
        if denom > 0:
            costs[n] = float(np.sum((a - b) ** 2)) / denom
    if not np.isfinite(costs).any():
        return None
    n = int(np.argmin(costs))
    shift = float(shifts[n])
    if 0 < n < len(costs) - 1 and np.isfinite(costs[n - 1]) and np.isfinite(costs[n + 1]):
        c0, c1, c2 = costs[n - 1], costs[n], costs[n + 1]
        curv = c0 - 2 * c1 + c2
        if curv > 0:  # parabola through the three costs: sub-step minimum
            shift += step * float(np.clip(0.5 * (c0 - c2) / curv, -0.5, 0.5))
    return shift, float(costs[n])


def register(prior: Any, current: Any) -> Registration:
    """Translation (LPS mm) that maps the current study's lung onto the prior's; see the module docstring.

    Parameters
    ----------
    prior, current : AnalysisResult
        Each with ``volume`` and ``lung``.
    """
    pp = _profile(prior.volume, prior.lung)
    pc = _profile(current.volume, current.lung)
    if not pp.count.any() or not pc.count.any():
        raise ValueError("cannot align the studies: one of them has no lung in its lung mask")

    def whole(p: _Profile, sel: np.ndarray) -> np.ndarray:
        w = p.count[sel].astype(float)
        return (p.centroid[sel] * w[:, None]).sum(axis=0) / w.sum()

    cen = whole(pp, pp.count > 0) - whole(pc, pc.count > 0)
    matched = _match_z(pp, pc)
    if matched is None:
        offset = cen.copy()
        method, cost = "lung-centroid", float("nan")
    else:
        dz, cost = matched
        method = "lung-profile"
        lo = max(pp.z.min(), pc.z.min() + dz)
        hi = min(pp.z.max(), pc.z.max() + dz)
        sel_p = (pp.count > 0) & (pp.z >= lo - 1e-6) & (pp.z <= hi + 1e-6)
        sel_c = (pc.count > 0) & (pc.z + dz >= lo - 1e-6) & (pc.z + dz <= hi + 1e-6)
        if sel_p.any() and sel_c.any():
            xy = whole(pp, sel_p)[:2] - whole(pc, sel_c)[:2]
        else:
            xy = cen[:2]
        offset = np.array([xy[0], xy[1], dz])
    lo = max(pp.z.min(), pc.z.min() + offset[2])
    hi = min(pp.z.max(), pc.z.max() + offset[2])
    # residual: each current lung slice against the prior centroid at the same (shifted) level
    resid: list[float] = []
    zp_ok = pp.count > 0
    if zp_ok.sum() >= 2:
        order = np.argsort(pp.z[zp_ok])
        zs = pp.z[zp_ok][order]
        cs = pp.centroid[zp_ok][order]
        for k in np.flatnonzero(pc.count > 0):
            z = pc.z[k] + offset[2]
            if zs[0] <= z <= zs[-1]:
                want = np.array([np.interp(z, zs, cs[:, 0]), np.interp(z, zs, cs[:, 1])])
                resid.append(float(np.sum((pc.centroid[k, :2] + offset[:2] - want) ** 2)))
    residual = math.sqrt(sum(resid) / len(resid)) if resid else float("nan")
    return Registration(offset_mm=tuple(float(v) for v in offset), method=method, overlap_mm=(float(lo), float(hi)),
                        residual_mm=residual, profile_cost=float(cost), centroid_offset_mm=tuple(float(v) for v in cen))


def _pair_counts(result: Any) -> np.ndarray:
    """``[slice, lesion label 0..2, lung label 1..2 at index 1..2]`` voxel counts inside the lungs.

    Index 0 of the lung axis (outside the lungs) is left 0: no figure here uses it.
    Boolean passes over the lungs' bounding box (P001: about 10x faster than a bincount
    of the whole volume in int64).
    """
    lesion = np.asarray(result.lesion)
    lung = np.asarray(result.lung)
    nz = lesion.shape[0]
    counts = np.zeros((nz, 3, 3), np.int64)
    rows = np.flatnonzero(lung.any(axis=(0, 2)))
    cols = np.flatnonzero(lung.any(axis=(0, 1)))
    if rows.size == 0:
        return counts
    box = (slice(None), slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    les_b, lung_b = lesion[box], lung[box]
    ggo, cons = les_b == GGO, les_b == CONSOLIDATION
    for lab in (RIGHT_LUNG, LEFT_LUNG):
        in_lung = lung_b == lab
        total = in_lung.sum(axis=(1, 2))
        counts[:, GGO, lab] = (ggo & in_lung).sum(axis=(1, 2))
        counts[:, CONSOLIDATION, lab] = (cons & in_lung).sum(axis=(1, 2))
        counts[:, 0, lab] = total - counts[:, GGO, lab] - counts[:, CONSOLIDATION, lab]
    return counts


_SIDES = {"right": RIGHT_LUNG, "left": LEFT_LUNG}
_THIRDS = ("upper", "middle", "lower")


def common_zone_extents(prior: Any, current: Any, offset_z_mm: float) -> dict[str, tuple[float, float]]:
    """Per lung, the (top, bottom) of its craniocaudal extent in the prior's LPS z, over both studies.

    Each study contributes the slices that hold that lung (with half a slice gap above
    and below); the current's are moved by the registration's ``offset_z_mm``. Cutting
    these common extents into thirds gives zones that hold the same anatomy in both
    studies even when one scan stops short of the apex or the base.
    """
    out: dict[str, tuple[float, float]] = {}
    for side, lab in _SIDES.items():
        tops, bottoms = [], []
        for res, dz in ((prior, 0.0), (current, offset_z_mm)):
            z = _lps_z_of_slices(res.volume) + dz
            half = _half_thickness(z, float(res.volume.spacing_mm[0]))
            present = np.asarray(res.lung == lab).reshape(z.size, -1).any(axis=1)
            if present.any():
                tops.append(float(np.max(z[present] + half[present])))
                bottoms.append(float(np.min(z[present] - half[present])))
        if tops:
            out[side] = (max(tops), min(bottoms))
    return out


def region_figures(result: Any, extents: dict[str, tuple[float, float]] | None = None,
                   offset_z_mm: float = 0.0) -> dict[str, dict[str, float]]:
    """Lesion/GGO/consolidation mL, % involved and severity of every region in :data:`REGIONS`.

    Volumes count lesion voxels inside the region's lung; % is lesion-in-lung over lung
    voxels of the region; severities use the 0-5 bands of
    :func:`ctscreen.imaging.measurements.severity_score` per zone, summed per lung and for
    both lungs. Zones are thirds of ``extents`` (:func:`common_zone_extents`, in the prior's
    z; this study's slices are moved by ``offset_z_mm``); without ``extents``, thirds of
    this study's own lung extents, as in its report.
    """
    from ctscreen.imaging.measurements import severity_score

    vol = result.volume
    voxel_ml = vol.voxel_volume_ml
    counts = _pair_counts(result)
    z = _lps_z_of_slices(vol) + offset_z_mm
    if extents is None:
        extents = common_zone_extents(result, result, 0.0)
    zone_of: dict[str, np.ndarray] = {}
    for side in _SIDES:
        top, bottom = extents.get(side, (0.0, 0.0))
        height = top - bottom
        t = (top - z) / height if height > 0 else np.zeros_like(z)
        zone_of[side] = np.where(t < 1.0 / 3.0, 0, np.where(t < 2.0 / 3.0, 1, 2))

    def figures(sel: np.ndarray, labels: tuple[int, ...]) -> dict[str, float]:
        c = counts[sel][:, :, list(labels)].sum(axis=(0, 2))        # per lesion label, inside these lungs
        lung_vox = int(c.sum())
        les_vox = int(c[GGO] + c[CONSOLIDATION])
        pct = 100.0 * les_vox / lung_vox if lung_vox else float("nan")
        return {"lesion_ml": les_vox * voxel_ml, "ggo_ml": float(c[GGO]) * voxel_ml,
                "consolidation_ml": float(c[CONSOLIDATION]) * voxel_ml, "percent_involved": pct,
                "severity": float(severity_score(pct, les_vox > 0))}

    every = np.ones(z.size, bool)
    out: dict[str, dict[str, float]] = {}
    for side, lab in _SIDES.items():
        for n, third in enumerate(_THIRDS):
            out[f"{side}_{third}"] = figures(zone_of[side] == n, (lab,))
    for side, lab in _SIDES.items():
        out[side] = {**figures(every, (lab,)),
                     "severity": float(sum(out[f"{side}_{t}"]["severity"] for t in _THIRDS))}
    out["both"] = {**figures(every, (RIGHT_LUNG, LEFT_LUNG)),
                   "severity": out["right"]["severity"] + out["left"]["severity"]}
    return {r: out[r] for r in REGIONS}


def _direction(prior: dict[str, float], current: dict[str, float]) -> tuple[str, float]:
    p, c = prior["lesion_ml"], current["lesion_ml"]
    tol = max(TOLERANCE_ML, TOLERANCE_FRACTION * p)
    if c - p > tol:
        return "worse", tol
    if p - c > tol:
        return "better", tol
    return "unchanged", tol


def change_table(prior: Any, current: Any, offset_z_mm: float = 0.0) -> tuple[ChangeRow, ...]:
    """One :class:`ChangeRow` per region of :data:`REGIONS` (see the module docstring).

    ``offset_z_mm`` is the registration's craniocaudal offset (prior z = current z + offset):
    both studies are cut into the same anatomical zones (:func:`common_zone_extents`).
    """
    extents = common_zone_extents(prior, current, offset_z_mm)
    fp = region_figures(prior, extents, 0.0)
    fc = region_figures(current, extents, offset_z_mm)
    rows = []
    for region in REGIONS:
        p, c = fp[region], fc[region]
        change = {k: c[k] - p[k] for k in METRICS}
        direction, tol = _direction(p, c)
        rows.append(ChangeRow(region=region, label=REGION_LABELS[region], prior=p, current=c, change=change,
                              direction=direction, tolerance_ml=tol))
    return tuple(rows)


def _index_to_lps(volume: Any, idx: np.ndarray) -> np.ndarray:
    d = np.asarray(volume.direction, float).reshape(3, 3)
    return np.asarray(volume.origin_mm, float) + d @ (np.asarray(idx, float) * np.asarray(volume.spacing_mm, float))


def _lps_to_index(volume: Any, lps: np.ndarray) -> np.ndarray:
    d = np.asarray(volume.direction, float).reshape(3, 3)
    return np.linalg.solve(d, np.asarray(lps, float) - np.asarray(volume.origin_mm, float)) / np.asarray(
        volume.spacing_mm, float)


@dataclass(frozen=True)
class Comparison:
    """Two analysed studies aligned by anatomy, with the change table.

    Attributes
    ----------
    prior, current : AnalysisResult
    registration : Registration
    rows : tuple of ChangeRow
        In the order of :data:`REGIONS`.
    warnings : tuple of str
        What the reader should know (different scan ranges, poor alignment...).
    """

    prior: Any
    current: Any
    registration: Registration
    rows: tuple[ChangeRow, ...]
    warnings: tuple[str, ...] = ()
    notice: str = RESEARCH_NOTICE
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def row(self, region: str) -> ChangeRow:
        """The row of ``region`` (e.g. ``"both"``, ``"right_lower"``)."""
        for r in self.rows:
            if r.region == region:
                return r
        raise KeyError(region)

    # -- mapping for synchronised panes -------------------------------------------------------
    def current_to_prior_mm(self, lps_mm: Any) -> np.ndarray:
        """LPS position in the current study -> the same anatomy's LPS position in the prior."""
        return np.asarray(lps_mm, float) + np.asarray(self.registration.offset_mm)

    def prior_to_current_mm(self, lps_mm: Any) -> np.ndarray:
        return np.asarray(lps_mm, float) - np.asarray(self.registration.offset_mm)

    def map_current_voxel(self, k: float, i: float, j: float) -> np.ndarray:
        """Current display voxel (slice, row, column) -> prior display voxel (floats, may lie outside)."""
        lps = _index_to_lps(self.current.volume, np.array([k, i, j], float))
        return _lps_to_index(self.prior.volume, self.current_to_prior_mm(lps))

    def map_prior_voxel(self, k: float, i: float, j: float) -> np.ndarray:
        lps = _index_to_lps(self.prior.volume, np.array([k, i, j], float))
        return _lps_to_index(self.current.volume, self.prior_to_current_mm(lps))

    def _slice_map(self, to_prior: bool) -> np.ndarray:
        key = "c2p" if to_prior else "p2c"
        if key not in self._cache:
            src = self.current if to_prior else self.prior
            ny, nx = src.volume.shape[1:]
            fn = self.map_current_voxel if to_prior else self.map_prior_voxel
            self._cache[key] = np.array([fn(k, (ny - 1) / 2, (nx - 1) / 2)[0] for k in range(src.volume.shape[0])])
        return self._cache[key]

    def map_current_to_prior(self, z_index: int, clip: bool = True) -> int | None:
        """The prior slice showing the anatomy of current slice ``z_index``.

        Returns the nearest prior slice; beyond the prior's scan range the first or
        last slice when ``clip`` (the pane stays at its edge), else None.
        """
        return self._map(self._slice_map(True)[int(z_index)], self.prior.volume.shape[0], clip)

    def map_prior_to_current(self, z_index: int, clip: bool = True) -> int | None:
        """The current slice showing the anatomy of prior slice ``z_index``."""
        return self._map(self._slice_map(False)[int(z_index)], self.current.volume.shape[0], clip)

    @staticmethod
    def _map(k: float, n: int, clip: bool) -> int | None:
        r = int(round(float(k)))
        if 0 <= r < n:
            return r
        if not clip:
            return None
        return min(max(r, 0), n - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``comparison.json`` (no patient name, ID or path)."""
        reg = self.registration

        def study(r: Any) -> dict[str, Any]:
            v = r.volume
            return {"study_instance_uid": v.study_instance_uid, "series_instance_uid": v.series_instance_uid,
                    "series_description": v.series_description, "slice_count": int(v.shape[0]),
                    "spacing_mm": [float(s) for s in v.spacing_mm],
                    "model": {"name": r.model_name, "version": r.model_version}}

        return {
            "research_notice": self.notice,
            "prior": study(self.prior),
            "current": study(self.current),
            "registration": {"offset_mm": [_num(v) for v in reg.offset_mm], "method": reg.method,
                             "overlap_z_mm": [_num(v) for v in reg.overlap_mm],
                             "residual_mm": _num(reg.residual_mm), "profile_cost": _num(reg.profile_cost),
                             "centroid_offset_mm": [_num(v) for v in reg.centroid_offset_mm],
                             "convention": "prior LPS = current LPS + offset_mm"},
            "tolerances": {"lesion_ml": f"max({TOLERANCE_ML} mL, {TOLERANCE_FRACTION:.0%} of prior)",
                           "percent_involved_points": TOLERANCE_PERCENT_POINTS},
            "rows": [r.to_dict() for r in self.rows],
            "warnings": list(self.warnings),
        }

    def csv_rows(self) -> list[dict[str, Any]]:
        """Flat rows for ``comparison.csv``: region, direction and prior/current/change of every metric."""
        out = []
        for r in self.rows:
            row: dict[str, Any] = {"region": r.region, "direction": r.direction}
            for k in METRICS:
                row[f"prior_{k}"] = _num(r.prior[k])
                row[f"current_{k}"] = _num(r.current[k])
                row[f"change_{k}"] = _num(r.change[k])
            out.append(row)
        return out


def compare(prior: Any, current: Any) -> Comparison:
    """Align ``current`` to ``prior`` by their lung masks and tabulate the change.

    Parameters
    ----------
    prior, current : AnalysisResult
        The earlier and the later study (measurements computed).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        One of the studies has no lung in its lung mask (nothing to align).
    """
    reg = register(prior, current)
    rows = change_table(prior, current, reg.offset_mm[2])
    warnings: list[str] = []
    pz, cz = _lps_z_of_slices(prior.volume), _lps_z_of_slices(current.volume)
    span_p = float(pz.max() - pz.min())
    span_c = float(cz.max() - cz.min())
    overlap = reg.overlap_mm[1] - reg.overlap_mm[0]
    if overlap < 0.9 * min(span_p, span_c) - 1e-6 or _lung_cut(prior) or _lung_cut(current):
        warnings.append("the two scans do not cover the same length of lung: the figures compare what each scan "
                        "holds (zones are cut from the lungs of both together, so they hold the same anatomy)")
    lung_p = float(prior.measurements.lung_volume_ml)
    lung_c = float(current.measurements.lung_volume_ml)
    if lung_p > 0 and abs(lung_c - lung_p) > 0.2 * lung_p:
        warnings.append(f"lung volume differs by {100 * (lung_c - lung_p) / lung_p:+.0f} % (inspiration or scan range); "
                        "compare % involvement rather than mL")
    if math.isfinite(reg.residual_mm) and reg.residual_mm > 10.0:
        warnings.append(f"the lungs do not align well by a translation (residual {reg.residual_mm:.0f} mm); "
                        "synchronised slices are approximate")
    return Comparison(prior=prior, current=current, registration=reg, rows=rows, warnings=tuple(warnings))


def _lung_cut(result: Any) -> bool:
    """True when the lung touches the first or last slice (the scan range cuts it)."""
    lung = np.asarray(result.lung)
    return bool(lung[0].any() or lung[-1].any()) if lung.shape[0] > 2 else False
