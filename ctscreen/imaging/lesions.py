"""The 3-D lesions of an analysis: connected pieces of the lesion map, with volume, lung, zone and type.

A lesion is a 26-connected piece of ``lesion > 0`` (GGO and consolidation that touch
are one lesion, as in :func:`ctscreen.imaging.measurements.count_lesions`), at least
``min_volume_ml`` large. Lung and zone come from the lung label and the slice thirds
of :func:`ctscreen.imaging.measurements.slice_thirds` (the zones of the severity score)
under the lesion's voxels. Type: ``"GGO"`` (no consolidation voxel), ``"consolidation"``
(no GGO voxel) or ``"mixed"``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ctscreen.imaging.measurements import (_CONNECTIVITY_26, CONSOLIDATION, GGO, LEFT, MIN_LESION_VOLUME_ML,
                                           RIGHT, _nonzero_box, slice_thirds)

_THIRDS = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Lesion:
    """One 3-D lesion; voxel indices are (k, y, x) of the volume, ``number`` 1 is the largest."""

    number: int
    volume_ml: float
    ggo_ml: float
    consolidation_ml: float
    voxel_count: int
    #: The lesion's voxel nearest its centroid (a voxel of the lesion even when it is curved).
    centre_voxel: tuple[int, int, int]
    #: (k0, k1, y0, y1, x0, x1), end-exclusive.
    bbox: tuple[int, int, int, int, int, int]
    #: "right", "left", "both" or "outside" (no lung voxel under it).
    lung: str
    #: Zones holding its voxels, e.g. ("R lower", "L lower"), in the score's order.
    zones: tuple[str, ...]
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_lesions(lesion: np.ndarray, lung: np.ndarray, volume: Any,
                 min_volume_ml: float = MIN_LESION_VOLUME_ML) -> list[Lesion]:
    """The lesions of a (z, y, x) lesion map, largest first (see the module docstring).

    Parameters
    ----------
    lesion, lung
        Label maps (0/1 GGO/2 consolidation; 0/1 right/2 left) of ``volume``'s shape.
    volume
        The :class:`~ctscreen.imaging.volume.Volume` (spacing, slice positions, direction).
    min_volume_ml
        Pieces smaller than this are left out (as in the lesion count).
    """
    lesion = np.asarray(lesion)
    lung = np.asarray(lung)
    box = _nonzero_box(lesion)
    sub = lesion[box]
    if sub.size == 0 or not sub.any():
        return []
    k_off, y_off, x_off = (s.start or 0 for s in box)
    labels, n = ndi.label(sub > 0, structure=_CONNECTIVITY_26)
    if n == 0:
        return []
    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    thirds = slice_thirds(volume, lung)
    lung_sub = lung[box]
    found = []
    for i, slices in enumerate(ndi.find_objects(labels), start=1):
        if slices is None or sizes[i] * voxel_ml < min_volume_ml * (1 - 1e-9):
            continue
        mask = labels[slices] == i
        values = sub[slices][mask]
        lung_values = lung_sub[slices][mask]
        kk, yy, xx = np.nonzero(mask)
        kk = kk + slices[0].start + k_off
        yy = yy + slices[1].start + y_off
        xx = xx + slices[2].start + x_off
        centroid = np.array([kk.mean(), yy.mean(), xx.mean()])
        spacing = np.asarray(volume.spacing_mm, dtype=float)
        nearest = int(np.argmin((((np.stack([kk, yy, xx], 1) - centroid) * spacing) ** 2).sum(1)))
        sides = [side for side, label in (("right", RIGHT), ("left", LEFT)) if (lung_values == label).any()]
        zones = []
        for side, label in (("right", RIGHT), ("left", LEFT)):
            ks = kk[lung_values == label]
            present = set(int(t) for t in thirds[side][ks] if t >= 0)
            zones += [f"{side[0].upper()} {_THIRDS[t]}" for t in sorted(present)]
        n_ggo = int((values == GGO).sum())
        n_cons = int((values == CONSOLIDATION).sum())
        kind = "GGO" if n_cons == 0 else ("consolidation" if n_ggo == 0 else "mixed")
        found.append(dict(
            volume_ml=float(sizes[i] * voxel_ml), ggo_ml=n_ggo * voxel_ml, consolidation_ml=n_cons * voxel_ml,
            voxel_count=int(sizes[i]), centre_voxel=(int(kk[nearest]), int(yy[nearest]), int(xx[nearest])),
            bbox=(int(kk.min()), int(kk.max()) + 1, int(yy.min()), int(yy.max()) + 1,
                  int(xx.min()), int(xx.max()) + 1),
            lung="both" if len(sides) == 2 else (sides[0] if sides else "outside"),
            zones=tuple(zones), kind=kind))
    found.sort(key=lambda d: (-d["voxel_count"], d["bbox"]))
    return [Lesion(number=j, **d) for j, d in enumerate(found, start=1)]


def lesions_of(result: Any, min_volume_ml: float | None = None) -> list[Lesion]:
    """:func:`find_lesions` of an :class:`~ctscreen.imaging.result.AnalysisResult`."""
    if min_volume_ml is None:
        min_volume_ml = float(getattr(result.measurements, "min_lesion_volume_ml", MIN_LESION_VOLUME_ML))
    return find_lesions(result.lesion, result.lung, result.volume, min_volume_ml)


#: Side of the lesion-focus view as a share of the thorax box's shorter side: the top of the
#: lesion-crop training range (:data:`ctscreen.inference.train_classifier.LESION_CROP_SIDE`), i.e.
#: the least zoomed view that still frames the lesion. Chosen over the a-priori 0.45 (the middle of
#: that range) on six left-out runs (``benchmarks/study_views.py --sides``, README): with
#: whole-image-trained models, as shipped, 0.45 pushed 5 of 12 non-COVID study scores past 0.5
#: (every lesion gains P(COVID) when zoomed), 0.6 none, while the unseen COVID-19 study stayed
#: above 0.5 in 5 of 6 runs. A choice made on validation: the held-back studies decide.
FOCUS_SIDE = 0.6


def focus_box(lesion_slice: np.ndarray, box: tuple[int, int, int, int],
              side: float | None = None) -> tuple[int, int, int, int] | None:
    """The lesion-focus crop ``(y0, y1, x0, x1)`` of one slice: a square of ``side`` (default
    :data:`FOCUS_SIDE`) of the thorax box's shorter side (more when the lesion is larger), centred
    on the largest lesion piece (8-connected), kept inside the thorax box; ``None`` without a
    lesion pixel in the box.

    The view the screening classifier scores a lesion slice by
    (:func:`ctscreen.inference.classifier.study_probabilities`); the Screening panel frames it.
    """
    import cv2

    y0, y1, x0, x1 = box
    m = (np.asarray(lesion_slice)[y0:y1, x0:x1] > 0).astype(np.uint8)
    if not m.any():
        return None
    n, _lab, stats, cents = cv2.connectedComponentsWithStats(m, connectivity=8)
    k = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    h, w = y1 - y0, x1 - x0
    extent = 1.3 * max(stats[k, cv2.CC_STAT_WIDTH], stats[k, cv2.CC_STAT_HEIGHT])
    share = FOCUS_SIDE if side is None else float(side)
    n_px = int(round(min(min(h, w), max(share * min(h, w), extent))))
    cx, cy = cents[k]
    a = int(np.clip(round(cy - n_px / 2), 0, h - n_px))
    b = int(np.clip(round(cx - n_px / 2), 0, w - n_px))
    return (y0 + a, y0 + a + n_px, x0 + b, x0 + b + n_px)
