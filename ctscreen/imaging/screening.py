"""The RSNA reporting category of a chest CT for COVID-19 pneumonia, from the analysis' masks.

Research use only - not for diagnosis. No torch, no Qt.

Reference: Simpson S, Kay FU, Abbara S, et al. Radiological Society of North America
Expert Consensus Statement on Reporting Chest CT Findings Related to COVID-19.
Radiology: Cardiothoracic Imaging 2020; 2(2): e200152 (Table 1). Its four
categories, with the features it lists, and how this module measures them on
the lesion mask (1 GGO, 2 consolidation), the lung mask (1 right, 2 left), the
HU volume and the spacing of an :class:`~ctscreen.imaging.result.AnalysisResult`:

=============  =====================================================  ======================================
category       Simpson et al. 2020, Table 1                           rule here (criterion keys)
=============  =====================================================  ======================================
negative       no CT features to suggest pneumonia                    ``burden`` below the noise floor
typical        peripheral, bilateral GGO +/- consolidation or         T1: ``bilateral`` and ``peripheral``
               crazy paving; multifocal GGO of rounded morphology     and ``ggo``; T2: ``rounded`` (which
               +/- consolidation; reverse halo / organizing           implies >= 2 foci) and ``ggo``
               pneumonia findings
indeterminate  absence of typical features and multifocal, diffuse,   not typical and ``ggo``; also a
               perihilar or unilateral GGO +/- consolidation lacking  consolidation-predominant pattern
               a specific distribution, non-rounded or                with none of the atypical features
               non-peripheral; few very small GGO                     below
atypical       absence of typical or indeterminate features and       not ``ggo`` and (``isolated_consolidation``
               isolated lobar or segmental consolidation without      or ``cavitation`` or ``effusion``)
               GGO; discrete small nodules; cavitation; smooth
               septal thickening with pleural effusion
=============  =====================================================  ======================================

A study in which no lung was found cannot be assessed: it is reported *indeterminate*
with that reason, never *negative*. The categories are hierarchical, as in the paper: typical features win over
indeterminate ones, which win over atypical ones (an atypical feature next to
a typical pattern is named in the reasons but does not change the category).

The paper gives no numbers; the thresholds below are this module's stated
operational choices, made before looking at any study's category:

* ``burden`` - lesion volume inside the lungs in % of the lung volume. **Noise
  floor** :data:`NOISE_FLOOR_PERCENT` = 0.5 %: the shipped segmentation marks
  about 0.1 % of a normal study's lung as lesion, so five times that is taken as
  the least burden that is a finding. Disease smaller than that (a single
  1-2 cm focus) is called negative: the floor trades that sensitivity for not
  calling normal studies pneumonia.
* ``bilateral`` - each lung holds at least :data:`LUNG_INVOLVED_MIN_ML` (1 mL,
  about a 12 mm sphere) and :data:`LUNG_INVOLVED_MIN_PERCENT` (0.2 %, twice the
  normal-study false-positive rate) of its own volume as lesion.
* ``peripheral`` - subpleural predominance. Depth is the 3-D Euclidean distance
  (true, anisotropic spacing; on a grid of about :data:`DISTANCE_GRID_MM` mm) to
  the surface of the thoracic cavity, which per axial slice is the convex hull of
  both lungs: the costal, apical and diaphragmatic pleura count as surface, the
  mediastinal pleura does not (distance to the lung mask's own medial surface
  would call a perihilar lesion "subpleural"). The outer third of a lung is its
  voxels within one third of that lung's largest depth. The value is the share of
  lesion volume in the outer third of its lung; the criterion is met at
  :data:`PERIPHERAL_MIN_SHARE` (60 %) *and* at least :data:`PERIPHERAL_MIN_ENRICHMENT`
  (1.2) times the lung's own share in its outer third (a lesion spread evenly
  through the lung is not peripheral however thick the shell is).
* ``ggo`` - GGO present: at least :data:`GGO_PRESENT_SHARE` (25 %) of the lesion
  volume is GGO. Below that a pattern counts as consolidation "without GGO"
  (a segmentation draws a rim of partial-volume ground glass round any
  consolidation). ``ggo_predominant`` (> 50 %) is reported, supporting only.
* ``multifocal`` - foci are 26-connected 3-D lesion pieces of at least
  :data:`FOCUS_MIN_ML` (0.5 mL, a 1 cm sphere); met at 2 or more.
* ``rounded`` - a focus is rounded when the ellipsoid with its second moments
  (voxel extent included) has minor/major axes >= :data:`ROUND_AXIS_RATIO` (0.5)
  and the focus fills >= :data:`ROUND_FILL` (0.7) of that ellipsoid's volume
  (1.0 for a ball, 0.89 for a cube, far less for a curved subpleural band or a
  branching opacity); measurable only for foci at least 3 voxels across on
  every axis. Met when >= 2 GGO-predominant rounded foci hold >=
  :data:`ROUNDED_MIN_SHARE` (50 %) of the lesion volume.
* ``lower_zone`` and ``posterior`` - supporting only (reported in many COVID-19
  series, not part of the RSNA categories): lower-zone involvement (% of the
  lower thirds, :mod:`ctscreen.imaging.measurements`) above upper-zone
  involvement; >= :data:`POSTERIOR_MIN_SHARE` (60 %) of the lesion volume in the
  dorsal half of its lung (split at the lung's median, so an even spread gives 50 %).
* ``isolated_consolidation`` - not ``ggo``, not ``bilateral``, and the largest
  focus holds >= :data:`ISOLATED_MIN_SHARE` (80 %) of the lesion volume.
* ``cavitation`` - gas (<= :data:`CAVITY_HU` HU, below aerated lung at about
  -850 HU) in a hole of the lesion mask on an axial slice, ringed mostly by
  consolidation, at least :data:`CAVITY_MIN_DIAMETER_MM` (10 mm) across
  (equivalent diameter) and round (axis ratio >= 0.5): larger and rounder than
  the air bronchograms every consolidation shows. A cavity whose gas is not
  enclosed on any slice is missed.
* ``effusion`` - fluid density (:data:`FLUID_HU`, -5 to 30 HU after 3 mm block
  averaging) outside the lung mask and outside the thoracic-cavity hull (between
  lung and chest wall), dorsal to the median of its lung, within
  :data:`EFFUSION_MAX_DISTANCE_MM` (30 mm) of the lung on slices holding it, in a
  layer at least ~5 mm thick (an in-plane opening removes thinner partial-volume
  rims of muscle and fat), in pieces touching the lung; met at
  :data:`EFFUSION_MIN_ML` (10 mL). A fatty liver or unenhanced blood of similar
  density lying dorsal to the lung can be counted; a large effusion's volume is
  underestimated (only 30 mm from the lung are looked at).

Not measured (reported with value None): reverse halo / organizing-pneumonia
signs, crazy paving, discrete small (centrilobular, tree-in-bud) nodules and
septal thickening. The category is a reading aid computed from an automatic
segmentation, not a radiologist's report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from ctscreen import RESEARCH_NOTICE

__all__ = [
    "Criterion", "Screening", "assess", "assess_result", "with_classifier", "CATEGORY_LABELS",
    "CLASS_LABELS", "REFERENCE", "NOISE_FLOOR_PERCENT",
]

REFERENCE = ("Simpson S, et al. RSNA Expert Consensus Statement on Reporting Chest CT Findings Related to "
             "COVID-19. Radiology: Cardiothoracic Imaging 2020;2(2):e200152")

CATEGORY_LABELS = {
    "typical": "Typical appearance",
    "indeterminate": "Indeterminate appearance",
    "atypical": "Atypical appearance",
    "negative": "Negative for pneumonia",
}
#: Short names of the classifier's classes, in display order.
CLASS_LABELS = {"covid19": "COVID-19", "other_pneumonia": "other pneumonia", "no_pneumonia": "no pneumonia"}
_CLASS_SHORT = {"covid19": "COVID-19", "other_pneumonia": "other", "no_pneumonia": "none"}

NOISE_FLOOR_PERCENT = 0.5
LUNG_INVOLVED_MIN_ML = 1.0
LUNG_INVOLVED_MIN_PERCENT = 0.2
DISTANCE_GRID_MM = 3.0
OUTER_FRACTION = 1.0 / 3.0
PERIPHERAL_MIN_SHARE = 60.0
PERIPHERAL_MIN_ENRICHMENT = 1.2
GGO_PRESENT_SHARE = 25.0
GGO_PREDOMINANT_SHARE = 50.0
FOCUS_MIN_ML = 0.5
MULTIFOCAL_MIN = 2
ROUND_AXIS_RATIO = 0.5
ROUND_FILL = 0.7
ROUNDED_MIN_SHARE = 50.0
POSTERIOR_MIN_SHARE = 60.0
ISOLATED_MIN_SHARE = 80.0
CAVITY_HU = -920.0
CAVITY_MIN_DIAMETER_MM = 10.0
FLUID_HU = (-5.0, 30.0)
EFFUSION_MIN_ML = 10.0
EFFUSION_MAX_DISTANCE_MM = 30.0

_CONN26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Criterion:
    """One measured criterion of the reporting category.

    Attributes
    ----------
    key : str
        ``burden``, ``bilateral``, ``peripheral``, ``ggo``, ``ggo_predominant``, ``multifocal``,
        ``rounded``, ``lower_zone``, ``posterior``, ``isolated_consolidation``, ``cavitation``,
        ``effusion``, or a feature that is not measured (``reverse_halo``, ``nodules``).
    label : str
        What it is, for people.
    value : float, bool or None
        The measured value (None: could not be measured).
    unit : str
        Unit of ``value`` (``"%"``, ``"mL"``, ``"mm"``, ``""``).
    threshold : str
        The rule the value is held against, e.g. ``"≥ 1 mL and ≥ 0.2 % of each lung"``.
    met : bool or None
        Whether the rule holds (None: not measured).
    decisive : bool
        This criterion decided the category.
    detail : str
        Further figures (per lung, the lung's own share, ...).
    """

    key: str
    label: str
    value: float | bool | None
    unit: str
    threshold: str
    met: bool | None
    decisive: bool = False
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        v = self.value
        if isinstance(v, (float, np.floating)):
            v = float(v) if math.isfinite(float(v)) else None
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.bool_):
            v = bool(v)
        return {"key": self.key, "label": self.label, "value": v, "unit": self.unit,
                "threshold": self.threshold, "met": None if self.met is None else bool(self.met),
                "decisive": bool(self.decisive), "detail": self.detail}

    def value_text(self) -> str:
        """The value with its unit, as shown to people (``"–"`` when not measured)."""
        v = self.value
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, (int, np.integer)):
            return f"{int(v)}{(' ' + self.unit) if self.unit else ''}"
        digits = 2 if abs(float(v)) < 10 else 1
        return f"{float(v):.{digits}f}{(' ' + self.unit) if self.unit else ''}"


@dataclass(frozen=True)
class Screening:
    """The screening verdict of one study: RSNA category with its criteria, and the classifier's answer.

    Attributes
    ----------
    category : str
        ``typical``, ``indeterminate``, ``atypical`` or ``negative``.
    category_label : str
        E.g. ``"Typical appearance"``, ``"Negative for pneumonia"``.
    criteria : tuple of Criterion
    reasons : tuple of str
        Sentences naming the criteria that decided.
    probabilities : dict
        ``{"covid19": p, "other_pneumonia": p, "no_pneumonia": p}``; empty when no classifier ran.
    verdict : str
        Key of the most probable class; ``""`` when no classifier ran.
    top_slices : tuple of int
        Slice indices (0-based) that contributed most to the classifier's study score.
    model_name, model_version : str
        The classifier (empty when none ran).
    classifier_scoring : str
        How the classifier's slice scores made the study's, e.g. ``"lesion-area attention
        (lesion-focus view on 40 slices)"`` (empty when none ran): the same weights score a
        study differently under another protocol, so the report says which one.
    notice : str
        :data:`ctscreen.RESEARCH_NOTICE`.
    """

    category: str
    category_label: str
    criteria: tuple[Criterion, ...]
    reasons: tuple[str, ...]
    probabilities: dict[str, float] = field(default_factory=dict)
    verdict: str = ""
    top_slices: tuple[int, ...] = ()
    model_name: str = ""
    model_version: str = ""
    classifier_scoring: str = ""
    notice: str = RESEARCH_NOTICE
    #: Seconds the rules took (not in ``to_dict``; the pipeline reports it in ``timings_s``).
    seconds: float = field(default=0.0, compare=False)

    def criterion(self, key: str) -> Criterion | None:
        """The criterion with ``key`` (None when absent)."""
        return next((c for c in self.criteria if c.key == key), None)

    @property
    def decisive(self) -> tuple[Criterion, ...]:
        return tuple(c for c in self.criteria if c.decisive)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the ``screening`` object of ``report.json`` (``docs/report-schema.md``)."""
        return {
            "category": self.category,
            "category_label": self.category_label,
            "reference": REFERENCE,
            "decided_by": [c.key for c in self.criteria if c.decisive],
            "reasons": list(self.reasons),
            "criteria": [c.to_dict() for c in self.criteria],
            "probabilities": {str(k): float(v) for k, v in self.probabilities.items()},
            "verdict": self.verdict,
            "top_slices": [int(k) for k in self.top_slices],
            "top_slice_numbers": [int(k) + 1 for k in self.top_slices],
            "model_name": self.model_name,
            "model_version": self.model_version,
            "classifier_scoring": self.classifier_scoring,
            "notice": self.notice,
        }

    def probabilities_text(self) -> str:
        """``"COVID-19 0.91 / other 0.06 / none 0.03"`` (``""`` when no classifier ran)."""
        if not self.probabilities:
            return ""
        keys = [k for k in CLASS_LABELS if k in self.probabilities] + \
               [k for k in self.probabilities if k not in CLASS_LABELS]
        return " / ".join(f"{_CLASS_SHORT.get(k, k)} {float(self.probabilities[k]):.2f}" for k in keys)

    def one_line(self) -> str:
        """E.g. ``"RSNA: typical; classifier: COVID-19 0.91 / other 0.06 / none 0.03 (research use only - ...)"``."""
        parts = [f"RSNA: {self.category}"]
        if self.probabilities:
            parts.append(f"classifier: {self.probabilities_text()}")
        notice = self.notice.rstrip(".").lower() if self.notice else ""
        return "; ".join(parts) + (f" ({notice})" if notice else "")


# --------------------------------------------------------------------------------------------- helpers

def _fmt(v: float, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if v == v else "–"


def _bbox(labels: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Bounding box (z, y, x slices) of the non-zero voxels of a 3-D label array; None when empty.

    Reductions straight on the labels (no full-size boolean copy): the slices first, then one plane.
    """
    nz = labels.shape[0]
    zs = np.flatnonzero(labels.reshape(nz, -1).any(axis=1))
    if zs.size == 0:
        return None
    plane = labels[zs[0]:zs[-1] + 1].any(axis=0)
    ys = np.flatnonzero(plane.any(axis=1))
    xs = np.flatnonzero(plane.any(axis=0))
    return (slice(int(zs[0]), int(zs[-1]) + 1), slice(int(ys[0]), int(ys[-1]) + 1),
            slice(int(xs[0]), int(xs[-1]) + 1))


def _feet_sign(direction: Any) -> int:
    """+1 when the slice index grows towards the feet (LPS -z; ctscreen's loader), -1 towards the head."""
    try:
        c = float(np.asarray(direction, dtype=float)[2, 0])
    except (TypeError, ValueError, IndexError):
        return 1
    return -1 if c > 0.5 else 1


def _posterior_sign(direction: Any) -> int:
    """+1 when the array's row index grows towards the patient's back (LPS +y), -1 when towards the front, 0 unknown."""
    try:
        d = np.asarray(direction, dtype=float)
        c = float(d[1, 1])
    except (TypeError, ValueError, IndexError):
        return 1
    if abs(c) < 0.5:
        return 0
    return 1 if c > 0 else -1


@dataclass
class _Grid:
    """The coarse (about 3 mm) grid the distance and fluid work runs on, over a box of the volume."""

    box: tuple[slice, slice, slice]
    f: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    lung: np.ndarray        # uint8 labels on the grid
    hull: np.ndarray        # bool: convex hull of both lungs per slice (thoracic cavity)
    hu: np.ndarray | None   # float32 block-mean HU on the grid


def _make_grid(hu: np.ndarray | None, lung: np.ndarray, spacing_mm: tuple[float, float, float],
               pad_mm: float) -> _Grid | None:
    lung_box = _bbox(lung)
    if lung_box is None:
        return None
    f = tuple(max(1, int(math.floor(DISTANCE_GRID_MM / s + 1e-6))) for s in spacing_mm)
    shape = lung.shape
    box = [lung_box[0]]
    for axis in (1, 2):
        pad = int(math.ceil(pad_mm / spacing_mm[axis])) + f[axis]
        lo = max(0, lung_box[axis].start - pad)
        hi = min(shape[axis], lung_box[axis].stop + pad)
        hi = lo + (hi - lo) // f[axis] * f[axis]  # whole blocks only
        if hi <= lung_box[axis].stop - 1:  # cannot keep whole blocks inside the volume: fall back to 1
            f = tuple(1 if a == axis else f[a] for a in range(3))
            hi = min(shape[axis], lung_box[axis].stop + pad)
        box.append(slice(lo, hi))
    box_t = (box[0], box[1], box[2])
    fz, fy, fx = f
    zs = range(box_t[0].start, box_t[0].stop, fz)
    ny = (box_t[1].stop - box_t[1].start) // fy
    nx = (box_t[2].stop - box_t[2].start) // fx
    g_lung = np.zeros((len(zs), ny, nx), np.uint8)
    g_hu = np.zeros((len(zs), ny, nx), np.float32) if hu is not None else None
    hull = np.zeros((len(zs), ny, nx), np.uint8)
    size = (nx, ny)
    for j, z in enumerate(zs):
        sl = lung[z, box_t[1], box_t[2]]
        if fy == 1 and fx == 1:
            g_lung[j] = sl
        else:
            r = cv2.resize((sl == 1).astype(np.float32), size, interpolation=cv2.INTER_AREA)
            lf = cv2.resize((sl == 2).astype(np.float32), size, interpolation=cv2.INTER_AREA)
            g_lung[j] = np.where(r >= 0.5, 1, np.where(lf >= 0.5, 2, 0))
        if g_hu is not None:
            h = hu[z, box_t[1], box_t[2]].astype(np.float32)
            g_hu[j] = h if (fy == 1 and fx == 1) else cv2.resize(h, size, interpolation=cv2.INTER_AREA)
        pts = cv2.findNonZero((g_lung[j] > 0).astype(np.uint8))
        if pts is not None and len(pts):
            cv2.fillConvexPoly(hull[j], cv2.convexHull(pts), 1)
            hull[j][g_lung[j] > 0] = 1
    sp = (spacing_mm[0] * fz, spacing_mm[1] * fy, spacing_mm[2] * fx)
    return _Grid(box_t, f, sp, g_lung, hull.astype(bool), g_hu)


# ------------------------------------------------------------------------------------------ measures

@dataclass
class _Focus:
    voxels: int
    ggo_share: float
    lung: int
    axis_ratio: float | None
    fill: float | None

    @property
    def rounded(self) -> bool:
        return (self.axis_ratio is not None and self.fill is not None and self.axis_ratio >= ROUND_AXIS_RATIO
                and self.fill >= ROUND_FILL)


def _foci(lesion_b: np.ndarray, lung_b: np.ndarray, coords_b: tuple[np.ndarray, ...],
          spacing_mm: tuple[float, float, float], voxel_ml: float) -> tuple[list[_Focus], int]:
    """26-connected lesion pieces of >= FOCUS_MIN_ML with their shape, largest first; number of pieces.

    The second moments come from per-label sums over the lesion voxels only (``np.bincount`` with
    weights), so the cost follows the lesion volume, not the box.
    """
    try:  # uint16 labels where they fit: half the memory of int32 (as measurements.count_lesions)
        lab, n = ndi.label(lesion_b > 0, structure=_CONN26, output=np.uint16)
    except RuntimeError:
        lab, n = ndi.label(lesion_b > 0, structure=_CONN26)
    if n == 0:
        return [], 0
    zz, yy, xx = coords_b
    ids = lab[zz, yy, xx].astype(np.intp)
    del lab
    sizes = np.bincount(ids, minlength=n + 1)
    min_vox = FOCUS_MIN_ML / voxel_ml * (1 - 1e-9)
    big = np.flatnonzero(sizes >= min_vox)
    big = big[big > 0]
    if big.size == 0:
        return [], n
    sp = np.asarray(spacing_mm, float)
    keep = np.zeros(n + 1, bool)
    keep[big] = True
    sel = keep[ids]
    ids, zz, yy, xx = ids[sel], zz[sel], yy[sel], xx[sel]
    ggo = np.bincount(ids, weights=(lesion_b[zz, yy, xx] == 1), minlength=n + 1)
    side = np.bincount(ids * 3 + lung_b[zz, yy, xx], minlength=3 * (n + 1)).reshape(n + 1, 3)
    coords = [c.astype(np.float64) * s for c, s in zip((zz, yy, xx), sp)]
    first = [np.bincount(ids, weights=c, minlength=n + 1) for c in coords]
    second = {(i, j): np.bincount(ids, weights=coords[i] * coords[j], minlength=n + 1)
              for i in range(3) for j in range(i, 3)}
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], big)
    extents = np.stack([np.maximum.reduceat(c[order], starts) - np.minimum.reduceat(c[order], starts) + 1
                        for c in (zz, yy, xx)], axis=1)
    out = []
    for j, i in enumerate(big):
        cnt = float(sizes[i])
        extent = extents[j]
        axis_ratio = fill = None
        if np.all(extent >= 3):
            mean = np.array([f[i] / cnt for f in first])
            cov = np.empty((3, 3))
            for (a, b), v in second.items():
                cov[a, b] = cov[b, a] = v[i] / cnt - mean[a] * mean[b]
            cov += np.diag(sp ** 2 / 12.0)  # each voxel's own extent
            ev = np.clip(np.linalg.eigvalsh(cov), 1e-12, None)
            axis_ratio = float(math.sqrt(ev[0] / ev[-1]))
            ell = 4.0 / 3.0 * math.pi * float(np.prod(np.sqrt(5.0 * ev)))
            fill = float(cnt * float(np.prod(sp)) / ell)
        out.append(_Focus(int(sizes[i]), float(ggo[i]) / cnt, int(np.argmax(side[i, 1:]) + 1), axis_ratio, fill))
    out.sort(key=lambda f: -f.voxels)
    return out, n


def _cavities(hu_b: np.ndarray, lesion_b: np.ndarray, spacing_mm: tuple[float, float, float]
              ) -> tuple[float, int]:
    """Largest equivalent diameter (mm) of a gas hole ringed by consolidation, and how many slice sections qualify.

    Holes are the inner contours of the lesion mask on each slice with consolidation
    (``cv2.findContours``, two-level hierarchy); only holes big enough to hold a cavity are looked at.
    """
    dy, dx = spacing_mm[1], spacing_mm[2]
    min_area_px = math.pi * (CAVITY_MIN_DIAMETER_MM / 2.0) ** 2 / (dy * dx)
    ring = np.ones((5, 5), np.uint8)
    best = 0.0
    count = 0
    for z in np.flatnonzero((lesion_b == 2).reshape(lesion_b.shape[0], -1).any(axis=1)):
        les = (lesion_b[z] > 0).astype(np.uint8)
        contours, hier = cv2.findContours(les, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hier is None:
            continue
        for c, h in zip(contours, hier[0]):
            if h[3] < 0:  # an outer contour, not a hole
                continue
            x0, y0, w, hgt = cv2.boundingRect(c)
            if w * hgt < min_area_px:
                continue
            hole = np.zeros((hgt, w), np.uint8)
            cv2.drawContours(hole, [c - np.array([x0, y0])], -1, 1, thickness=cv2.FILLED)
            sub_les = les[y0:y0 + hgt, x0:x0 + w].astype(bool)
            gas = (hole.astype(bool) & ~sub_les & (hu_b[z, y0:y0 + hgt, x0:x0 + w] <= CAVITY_HU)).astype(np.uint8)
            if np.count_nonzero(gas) < min_area_px:
                continue
            n, lab, stats, _ = cv2.connectedComponentsWithStats(gas, connectivity=8)
            for i in range(1, n):
                area = int(stats[i, cv2.CC_STAT_AREA])
                if area < min_area_px:
                    continue
                comp = lab == i
                pts = np.argwhere(comp) * np.array([dy, dx])
                ev = np.clip(np.linalg.eigvalsh(np.cov(pts, rowvar=False) + np.diag([dy * dy, dx * dx]) / 12),
                             1e-9, None)
                if math.sqrt(ev[0] / ev[-1]) < 0.5:
                    continue
                # the ring round the gas, inside this slice's lesion: mostly consolidation
                y_lo, x_lo = max(0, y0 - 3), max(0, x0 - 3)
                big = np.zeros((min(les.shape[0], y0 + hgt + 3) - y_lo, min(les.shape[1], x0 + w + 3) - x_lo), bool)
                big[y0 - y_lo:y0 - y_lo + hgt, x0 - x_lo:x0 - x_lo + w] = comp
                near = cv2.dilate(big.astype(np.uint8), ring).astype(bool) & ~big
                labels_near = lesion_b[z, y_lo:y_lo + big.shape[0], x_lo:x_lo + big.shape[1]][near]
                n_les = np.count_nonzero(labels_near)
                if n_les == 0 or np.count_nonzero(labels_near == 2) < 0.5 * n_les:
                    continue
                count += 1
                best = max(best, 2.0 * math.sqrt(area * dy * dx / math.pi))
    return best, count


def _effusion_ml(grid: _Grid, post_sign: int, medians: dict[int, float], feet_sign: int = 1
                 ) -> tuple[float, dict[int, float]]:
    """Fluid-density volume (mL) dorsal to each lung, between lung and chest wall; per lung."""
    if grid.hu is None or post_sign == 0:
        return float("nan"), {}
    lo, hi = FLUID_HU
    fluid = (grid.hu >= lo) & (grid.hu <= hi) & ~grid.hull
    if not fluid.any():
        return 0.0, {1: 0.0, 2: 0.0}
    dy = grid.spacing_mm[1]
    # thicker than ~5 mm: drop one-pixel (3 mm) rims in plane
    fluid = ndi.binary_opening(fluid, structure=np.ones((1, 3, 3), bool))
    voxel_ml = float(np.prod(grid.spacing_mm)) / 1000.0
    rows = np.arange(grid.lung.shape[1], dtype=float)[None, :, None] * post_sign
    cols = np.arange(grid.lung.shape[2])
    near_lung = np.zeros_like(fluid)
    adjacent = np.zeros_like(fluid)
    side = np.zeros(fluid.shape, np.uint8)
    cx = {}
    basal: dict[int, np.ndarray] = {}
    for lab in (1, 2):
        zs, _, xs = np.nonzero(grid.lung == lab)
        if xs.size:
            cx[lab] = float(xs.mean())
        # dependent = dorsal *and* basal: the lower half of the lung's craniocaudal extent
        b = np.zeros(grid.lung.shape[0], bool)
        if zs.size:
            z0, z1 = int(zs.min()), int(zs.max())
            if feet_sign >= 0:  # index grows towards the feet (ctscreen's loader)
                b[(z0 + z1 + 1) // 2: z1 + 1] = True
            else:
                b[z0: (z0 + z1) // 2 + 1] = True
        basal[lab] = b
    for j in range(grid.lung.shape[0]):
        sl = grid.lung[j]
        if not sl.any():
            continue
        d = cv2.distanceTransform((sl == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) * dy
        near_lung[j] = (d > 0) & (d <= EFFUSION_MAX_DISTANCE_MM)
        adjacent[j] = (d > 0) & (d <= 1.5 * dy)  # the first ring of grid voxels round the lung
        present = [lab for lab in (1, 2) if (sl == lab).any() and lab in cx and basal[lab][j]]
        if not present:
            continue
        if len(present) == 1:
            side[j] = present[0]
        else:  # nearer lung by column: split half way between the lungs' centres
            mid = 0.5 * (cx[1] + cx[2])
            left_is_high = cx[2] > cx[1]
            high = cols >= mid
            side[j] = np.where(high == left_is_high, 2, 1)[None, :]
    dorsal = np.zeros_like(fluid)
    for lab, med in medians.items():
        dorsal |= (side == lab) & (rows > med * post_sign)
    cand = fluid & near_lung & dorsal
    if not cand.any():
        return 0.0, {1: 0.0, 2: 0.0}
    lab3, n = ndi.label(cand, structure=_CONN26)
    touching = np.unique(lab3[cand & adjacent])
    keep = np.isin(lab3, touching[touching > 0])
    per = {lab: float(np.count_nonzero(keep & (side == lab))) * voxel_ml for lab in (1, 2)}
    return float(sum(per.values())), per


# ------------------------------------------------------------------------------------------- decision

def assess(hu: np.ndarray | None, lung: np.ndarray, lesion: np.ndarray, spacing_mm: Any,
           direction: Any = None, measurements: Any = None) -> Screening:
    """The RSNA reporting category with every criterion measured (see the module docstring).

    Parameters
    ----------
    hu : ndarray or None
        (z, y, x) HU volume; None skips the density features (cavitation, effusion: not measured).
    lung, lesion : ndarray of uint8
        (z, y, x) labels: lung 1 right, 2 left; lesion 1 GGO, 2 consolidation (inside the lung).
    spacing_mm : sequence of 3 float
        (z, y, x) voxel spacing.
    direction : ndarray, optional
        ``Volume.direction`` (which way the rows run; default: rows run to the patient's back).
    measurements : Measurements, optional
        :class:`~ctscreen.imaging.measurements.Measurements` of the same masks (computed when None).

    Returns
    -------
    Screening
        Without classifier probabilities (see :func:`with_classifier`).
    """
    t0 = time.perf_counter()
    lung = np.asarray(lung)
    lesion = np.asarray(lesion)
    sp = tuple(float(s) for s in spacing_mm)
    voxel_ml = sp[0] * sp[1] * sp[2] / 1000.0
    if measurements is None:
        from ctscreen.imaging.measurements import measure

        measurements = measure(lesion, lung, sp)
    m = measurements
    lung_ml = float(m.lung_volume_ml)
    les_ml = float(m.lesion_volume_ml)
    ggo_ml = float(m.ggo_volume_ml)
    burden = float(m.percent_involved) if lung_ml > 0 else float("nan")

    crit: dict[str, Criterion] = {}

    def add(key: str, label: str, value: Any, unit: str, threshold: str, met: bool | None, detail: str = "") -> None:
        crit[key] = Criterion(key, label, value, unit, threshold, met, False, detail)

    add("burden", "Lesion burden", burden, "%", f"≥ {NOISE_FLOOR_PERCENT:g} % of lung volume (noise floor)",
        None if burden != burden else bool(burden >= NOISE_FLOOR_PERCENT),
        f"{_fmt(les_ml)} mL of {_fmt(lung_ml, 0)} mL lung")

    # per lung
    r_ml = float(m.percent_right) * float(m.right_lung_volume_ml) / 100.0 if m.right_lung_volume_ml > 0 else 0.0
    l_ml = float(m.percent_left) * float(m.left_lung_volume_ml) / 100.0 if m.left_lung_volume_ml > 0 else 0.0

    def involved(ml: float, pct: float) -> bool:
        return ml >= LUNG_INVOLVED_MIN_ML and pct == pct and pct >= LUNG_INVOLVED_MIN_PERCENT

    r_inv = involved(r_ml, float(m.percent_right))
    l_inv = involved(l_ml, float(m.percent_left))
    add("bilateral", "Bilateral involvement", min(r_ml, l_ml) if lung_ml > 0 else None, "mL",
        f"≥ {LUNG_INVOLVED_MIN_ML:g} mL and ≥ {LUNG_INVOLVED_MIN_PERCENT:g} % of each lung (value: the less "
        "involved lung)", (r_inv and l_inv) if lung_ml > 0 else None,
        f"right {_fmt(r_ml)} mL ({_fmt(float(m.percent_right), 2)} %), left {_fmt(l_ml)} mL "
        f"({_fmt(float(m.percent_left), 2)} %)")

    ggo_share = 100.0 * ggo_ml / les_ml if les_ml > 0 else float("nan")
    add("ggo", "Ground-glass opacity present", ggo_share if les_ml > 0 else None, "%",
        f"≥ {GGO_PRESENT_SHARE:g} % of lesion volume is GGO", bool(ggo_share >= GGO_PRESENT_SHARE) if les_ml > 0
        else None, f"GGO {_fmt(ggo_ml)} mL, consolidation {_fmt(float(m.consolidation_volume_ml))} mL")
    add("ggo_predominant", "GGO predominance (supporting)", ggo_share if les_ml > 0 else None, "%",
        f"> {GGO_PREDOMINANT_SHARE:g} % of lesion volume is GGO",
        bool(ggo_share > GGO_PREDOMINANT_SHARE) if les_ml > 0 else None)

    # geometry: grid, depth, posterior
    post_sign = _posterior_sign(direction)
    grid = _make_grid(hu, lung, sp, EFFUSION_MAX_DISTANCE_MM + 5.0) if lung_ml > 0 else None
    les_box = _bbox(lesion)
    coords_b = np.nonzero(lesion[les_box]) if les_box is not None else None
    periph = post = lung_outer = float("nan")
    per_lung_periph: dict[int, float] = {}
    medians: dict[int, float] = {}
    if grid is not None:
        padded = np.pad(grid.hull, 1)
        depth = ndi.distance_transform_edt(padded, sampling=grid.spacing_mm)[1:-1, 1:-1, 1:-1]
        cut: dict[int, float] = {}
        lung_outer_n = lung_n = 0
        for lab in (1, 2):
            where = grid.lung == lab
            if not where.any():
                continue
            d = depth[where]
            cut[lab] = float(d.max()) * OUTER_FRACTION
            lung_outer_n += int(np.count_nonzero(d <= cut[lab]))
            lung_n += d.size
            if post_sign:
                rows = np.nonzero(where)[1]
                medians[lab] = float(np.median(rows))
        lung_outer = 100.0 * lung_outer_n / lung_n if lung_n else float("nan")
        if les_box is not None:
            zb, yb, xb = les_box
            zz, yy, xx = coords_b
            lv = lung[les_box][zz, yy, xx]
            gz = (zz + zb.start - grid.box[0].start) // grid.f[0]
            gy = np.clip((yy + yb.start - grid.box[1].start) // grid.f[1], 0, depth.shape[1] - 1)
            gx = np.clip((xx + xb.start - grid.box[2].start) // grid.f[2], 0, depth.shape[2] - 1)
            gz = np.clip(gz, 0, depth.shape[0] - 1)
            dv = depth[gz, gy, gx]
            inside = lv > 0
            if inside.any():
                outer = np.zeros(lv.shape, bool)
                for lab, c in cut.items():
                    sel = lv == lab
                    outer[sel] = dv[sel] <= c
                    if sel.any():
                        per_lung_periph[lab] = 100.0 * float(np.count_nonzero(outer[sel])) / int(sel.sum())
                periph = 100.0 * float(np.count_nonzero(outer[inside])) / int(inside.sum())
                if medians:
                    dorsal = np.zeros(lv.shape, bool)
                    for lab, med in medians.items():
                        sel = lv == lab
                        dorsal[sel] = gy[sel] * post_sign > med * post_sign
                    post = 100.0 * float(np.count_nonzero(dorsal[inside])) / int(inside.sum())
    enrich = periph / lung_outer if (periph == periph and lung_outer == lung_outer and lung_outer > 0) else float("nan")
    periph_met = (bool(periph >= PERIPHERAL_MIN_SHARE and enrich >= PERIPHERAL_MIN_ENRICHMENT)
                  if periph == periph else None)
    add("peripheral", "Peripheral (subpleural) predominance", periph if periph == periph else None, "%",
        f"≥ {PERIPHERAL_MIN_SHARE:g} % of lesion volume in the outer third of its lung, and ≥ "
        f"{PERIPHERAL_MIN_ENRICHMENT:g} × the lung's own share there", periph_met,
        (f"right {_fmt(per_lung_periph.get(1, float('nan')))} %, left {_fmt(per_lung_periph.get(2, float('nan')))} %;"
         f" the lungs' own outer-third share {_fmt(lung_outer)} % (ratio {_fmt(enrich, 2)})")
        if periph == periph else "no lesion or no lung")

    # foci, morphology
    foci: list[_Focus] = []
    n_pieces = 0
    if les_box is not None:
        foci, n_pieces = _foci(lesion[les_box], lung[les_box], coords_b, sp, voxel_ml)
    add("multifocal", "Multifocal", len(foci), "foci", f"≥ {MULTIFOCAL_MIN} foci of ≥ {FOCUS_MIN_ML:g} mL",
        len(foci) >= MULTIFOCAL_MIN if les_ml > 0 else False,
        f"{n_pieces} connected piece(s) in all; largest {_fmt(foci[0].voxels * voxel_ml)} mL" if foci else
        f"{n_pieces} connected piece(s), none of ≥ {FOCUS_MIN_ML:g} mL")
    measurable = [f for f in foci if f.axis_ratio is not None]
    rounded = [f for f in measurable if f.rounded and f.ggo_share * 100.0 >= GGO_PREDOMINANT_SHARE]
    round_share = 100.0 * sum(f.voxels for f in rounded) * voxel_ml / les_ml if les_ml > 0 else float("nan")
    add("rounded", "Rounded morphology (multifocal GGO)", round_share if measurable else None, "%",
        f"≥ 2 rounded GGO foci holding ≥ {ROUNDED_MIN_SHARE:g} % of lesion volume (axes ≥ {ROUND_AXIS_RATIO:g}, "
        f"ellipsoid fill ≥ {ROUND_FILL:g})",
        (len(rounded) >= 2 and round_share >= ROUNDED_MIN_SHARE) if measurable else None,
        f"{len(rounded)} rounded of {len(measurable)} measurable foci" if measurable else
        "no focus large enough to measure its shape")

    # zones (supporting)
    upper = [float(m.percent_right_upper), float(m.percent_left_upper)]
    lower = [float(m.percent_right_lower), float(m.percent_left_lower)]
    up = float(np.nanmean(upper)) if any(v == v for v in upper) else float("nan")
    lo = float(np.nanmean(lower)) if any(v == v for v in lower) else float("nan")
    add("lower_zone", "Lower-zone predominance (supporting)", lo if (lo == lo and les_ml > 0) else None, "%",
        "lower-zone involvement above upper-zone involvement",
        bool(lo > up) if (lo == lo and up == up and les_ml > 0) else None,
        f"involved: lower {_fmt(lo, 2)} %, upper {_fmt(up, 2)} % (mean of both lungs)")
    add("posterior", "Posterior (dorsal) predominance (supporting)", post if post == post else None, "%",
        f"≥ {POSTERIOR_MIN_SHARE:g} % of lesion volume in the dorsal half of its lung",
        bool(post >= POSTERIOR_MIN_SHARE) if post == post else None, "an even spread gives 50 %")

    # atypical features
    bilateral = bool(crit["bilateral"].met)
    ggo_present = bool(crit["ggo"].met)
    largest = 100.0 * foci[0].voxels * voxel_ml / les_ml if (foci and les_ml > 0) else float("nan")
    iso_met = (not ggo_present and not bilateral and largest == largest and largest >= ISOLATED_MIN_SHARE)
    add("isolated_consolidation", "Isolated (lobar/segmental) consolidation without GGO",
        largest if largest == largest else None, "%",
        f"largest focus ≥ {ISOLATED_MIN_SHARE:g} % of lesion volume, unilateral, GGO < {GGO_PRESENT_SHARE:g} %",
        iso_met if les_ml > 0 else False,
        f"largest focus {_fmt(foci[0].voxels * voxel_ml)} mL, {_fmt(100 * (1 - foci[0].ggo_share))} % "
        "consolidation" if foci else "no focus")
    if hu is not None and les_box is not None:
        cav_mm, n_cav = _cavities(np.asarray(hu)[les_box], lesion[les_box], sp)
        add("cavitation", "Cavitation (gas inside consolidation)", cav_mm, "mm",
            f"gas ≤ {CAVITY_HU:g} HU ringed by consolidation, ≥ {CAVITY_MIN_DIAMETER_MM:g} mm across, round",
            n_cav > 0, f"{n_cav} slice section(s) qualify" if n_cav else "none")
    else:
        add("cavitation", "Cavitation (gas inside consolidation)", None if hu is None else 0.0, "mm",
            f"gas ≤ {CAVITY_HU:g} HU ringed by consolidation, ≥ {CAVITY_MIN_DIAMETER_MM:g} mm across, round",
            None if hu is None else False, "no HU volume" if hu is None else "no lesion")
    if grid is not None and hu is not None:
        eff_ml, eff_per = _effusion_ml(grid, post_sign, medians, _feet_sign(direction))
        add("effusion", "Pleural effusion (dependent fluid)", eff_ml if eff_ml == eff_ml else None, "mL",
            f"≥ {EFFUSION_MIN_ML:g} mL of {FLUID_HU[0]:g}…{FLUID_HU[1]:g} HU dorsal to the lung, against it, "
            "≥ 5 mm thick", bool(eff_ml >= EFFUSION_MIN_ML) if eff_ml == eff_ml else None,
            f"right {_fmt(eff_per.get(1, float('nan')))} mL, left {_fmt(eff_per.get(2, float('nan')))} mL"
            if eff_per else "orientation unknown")
    else:
        add("effusion", "Pleural effusion (dependent fluid)", None, "mL",
            f"≥ {EFFUSION_MIN_ML:g} mL of {FLUID_HU[0]:g}…{FLUID_HU[1]:g} HU dorsal to the lung", None,
            "no HU volume" if hu is None else "no lung")
    add("reverse_halo", "Reverse halo / organizing pneumonia signs", None, "", "not measured", None)
    add("nodules", "Small centrilobular / tree-in-bud nodules", None, "", "not measured", None)

    category, decisive, reasons = _decide(crit, lung_ml, burden)
    criteria = tuple(replace(c, decisive=c.key in decisive) for c in crit.values())
    return Screening(category=category, category_label=CATEGORY_LABELS[category], criteria=criteria,
                     reasons=tuple(reasons), seconds=time.perf_counter() - t0)


def _decide(c: dict[str, Criterion], lung_ml: float, burden: float) -> tuple[str, set[str], list[str]]:
    """Apply the hierarchy of Simpson et al. 2020 (Table 1) to the measured criteria."""
    if lung_ml <= 0:
        return "indeterminate", {"burden"}, ["No lung was found, so the category cannot be assessed "
                                             "(indeterminate, not negative)."]
    if not c["burden"].met:
        return "negative", {"burden"}, [
            f"Lesion burden {_fmt(burden, 2)} % of the lung is below the noise floor of {NOISE_FLOOR_PERCENT:g} %: "
            "no CT feature of pneumonia."]
    ggo = bool(c["ggo"].met)
    bil = bool(c["bilateral"].met)
    per = bool(c["peripheral"].met)
    rnd = bool(c["rounded"].met)
    atyp = [k for k in ("isolated_consolidation", "cavitation", "effusion") if c[k].met]
    atyp_names = ", ".join(c[k].label.split(" (")[0].lower() for k in atyp)
    extra = [f"Atypical feature(s) also present ({atyp_names}); typical features take precedence in the RSNA "
             "scheme."] if atyp else []
    if ggo and bil and per:
        return "typical", {"ggo", "bilateral", "peripheral"}, [
            f"Bilateral ({c['bilateral'].detail}), peripheral ({c['peripheral'].value_text()} of the lesion in the "
            f"outer third) ground-glass opacity ({c['ggo'].value_text()} of the lesion volume)."] + extra
    if ggo and rnd:
        return "typical", {"ggo", "rounded", "multifocal"}, [
            f"Multifocal ground-glass opacity of rounded morphology ({c['rounded'].detail}, "
            f"{c['rounded'].value_text()} of the lesion volume)."] + extra
    if ggo:
        missing = [k for k, ok in (("bilateral", bil), ("peripheral", per)) if not ok]
        words = {"bilateral": "unilateral", "peripheral": "without peripheral predominance"}
        # "rounded" decided too when it was measured and not met (unmeasurable shapes decide nothing)
        decided = {"ggo", *missing} | ({"rounded"} if c["rounded"].met is False else set())
        return "indeterminate", decided, [
            f"Ground-glass opacity ({c['ggo'].value_text()} of the lesion volume) that is "
            + " and ".join(words[k] for k in missing)
            + ", and not multifocal rounded: no typical distribution."] + (
            [f"Atypical feature(s) present ({atyp_names}), but ground-glass opacity makes the pattern "
             "indeterminate in the RSNA scheme."] if atyp else [])
    if atyp:
        return "atypical", {"ggo", *atyp}, [
            f"Consolidation without ground glass (GGO {c['ggo'].value_text()} of the lesion volume) with "
            f"{atyp_names}."]
    return "indeterminate", {"ggo", "isolated_consolidation", "cavitation", "effusion"}, [
        f"Consolidation-predominant pattern (GGO {c['ggo'].value_text()}) that is neither isolated nor shows "
        "cavitation or effusion; organizing-pneumonia signs are not measured."]


def assess_result(result: Any) -> Screening:
    """:func:`assess` on an :class:`~ctscreen.imaging.result.AnalysisResult`."""
    vol = result.volume
    return assess(vol.hu, result.lung, result.lesion, vol.spacing_mm, vol.direction, result.measurements)


def with_classifier(screening: Screening, probabilities: dict[str, float], top_slices: Any = (),
                    model_name: str = "", model_version: str = "", scoring: str = "") -> Screening:
    """The same screening with the classifier's study probabilities (and its verdict) added;
    ``scoring`` says how its slice scores were pooled (``Screening.classifier_scoring``)."""
    probs = {str(k): float(v) for k, v in dict(probabilities).items()}
    verdict = max(probs, key=probs.get) if probs else ""
    return replace(screening, probabilities=probs, verdict=verdict,
                   top_slices=tuple(int(k) for k in top_slices), model_name=str(model_name),
                   model_version=str(model_version), classifier_scoring=str(scoring))
