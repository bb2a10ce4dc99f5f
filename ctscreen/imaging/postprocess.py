"""3-D clean-up of the lesion labels the network gives slice by slice (numpy/scipy only).

Research use, not for diagnosis.

The network sees one axial slice at a time; the series has a third dimension. Lesion
voxels (GGO + consolidation) are grouped into 3-D connected components (26-connected)
and a component is removed when it is:

* **tiny**: smaller than :data:`MIN_COMPONENT_ML` - a few voxels of noise;
* **isolated in z**: present on one slice only and smaller than
  :data:`SINGLE_SLICE_MAX_ML`, while the slices are thin enough (<= :data:`SINGLE_SLICE_MAX_SPACING_MM`)
  that a real opacity of that size would show on a neighbour too;
* **a rim**: every voxel of it lies within :data:`RIM_MM` of the lung mask's edge
  (in-plane distance), i.e. a thin shell along the boundary - partial volume at the
  diaphragm dome, the heart border or the chest wall, where the lung mask and the
  network disagree by a pixel or two. Real subpleural opacities reach deeper into the
  lung than that; a component with any voxel deeper is kept whole (so pleural
  consolidation with a deep part stays).

Each rule's thresholds are module constants, measured on the shared series with
``benchmarks/postprocess.py`` (see the model card), not tuned per study. The removed
volume per rule is returned so the caller can report it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

#: Components smaller than this are removed (mL).
MIN_COMPONENT_ML = 0.01
#: A component on one slice only and smaller than this is removed (mL) ...
SINGLE_SLICE_MAX_ML = 0.05
#: ... when the slices are at most this far apart (mm); thicker slices keep single-slice findings.
SINGLE_SLICE_MAX_SPACING_MM = 3.0
#: A component whose voxels all lie within this in-plane distance of the lung edge is a rim (mm).
RIM_MM = 2.0


@dataclass(frozen=True)
class CleanupReport:
    """What :func:`clean_lesions` removed: voxels and components per rule."""

    removed_voxels: dict[str, int] = field(default_factory=dict)
    removed_components: dict[str, int] = field(default_factory=dict)
    kept_components: int = 0

    def removed_ml(self, voxel_ml: float) -> dict[str, float]:
        return {k: v * voxel_ml for k, v in self.removed_voxels.items()}


def _depth_mm(lung_crop: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """In-plane distance (mm) of each lung voxel to the nearest non-lung voxel, slice by slice."""
    out = np.zeros(lung_crop.shape, np.float32)
    for k in range(lung_crop.shape[0]):
        if lung_crop[k].any():
            out[k] = ndimage.distance_transform_edt(lung_crop[k], sampling=spacing_yx)
    return out


def clean_lesions(labels: np.ndarray, lung: np.ndarray, spacing_mm: tuple[float, float, float],
                  min_component_ml: float = MIN_COMPONENT_ML, single_slice_max_ml: float = SINGLE_SLICE_MAX_ML,
                  single_slice_max_spacing_mm: float = SINGLE_SLICE_MAX_SPACING_MM, rim_mm: float = RIM_MM,
                  ) -> tuple[np.ndarray, CleanupReport]:
    """Remove tiny, z-isolated and rim-only lesion components (see the module doc).

    Parameters
    ----------
    labels : ndarray of uint8, (z, y, x)
        0 none, 1 GGO, 2 consolidation (already constrained to the lung).
    lung : ndarray, (z, y, x)
        Lung mask (0 outside).
    spacing_mm : (dz, dy, dx)
        Voxel spacing.
    rim_mm : float
        0 turns the rim rule off; likewise ``min_component_ml=0`` and ``single_slice_max_ml=0``.

    Returns
    -------
    labels : ndarray of uint8
        A cleaned copy (the input is not changed).
    report : CleanupReport
    """
    labels = np.asarray(labels)
    out = labels.copy()
    lesion = labels > 0
    if not lesion.any():
        return out, CleanupReport()
    dz, dy, dx = (float(s) for s in spacing_mm)
    voxel_ml = dz * dy * dx / 1000.0
    comp, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    boxes = ndimage.find_objects(comp)
    removed_vox = {"tiny": 0, "single_slice": 0, "rim": 0}
    removed_n = {"tiny": 0, "single_slice": 0, "rim": 0}
    pad = max(1, int(np.ceil(rim_mm / min(dy, dx)))) + 1 if rim_mm > 0 else 0
    drop = np.zeros(n + 1, bool)
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        ml = sizes[i] * voxel_ml
        rule = ""
        if ml < min_component_ml:
            rule = "tiny"
        elif box[0].stop - box[0].start == 1 and ml < single_slice_max_ml and dz <= single_slice_max_spacing_mm:
            rule = "single_slice"
        elif rim_mm > 0:
            ys = slice(max(0, box[1].start - pad), box[1].stop + pad)
            xs = slice(max(0, box[2].start - pad), box[2].stop + pad)
            crop = (box[0], ys, xs)
            depth = _depth_mm(np.asarray(lung[crop]) > 0, (dy, dx))
            mine = comp[crop] == i
            if mine.any() and float(depth[mine].max()) <= rim_mm:
                rule = "rim"
        if rule:
            drop[i] = True
            removed_vox[rule] += int(sizes[i])
            removed_n[rule] += 1
    if drop.any():
        out[drop[comp]] = 0
    return out, CleanupReport(removed_voxels=removed_vox, removed_components=removed_n,
                              kept_components=int(n - drop.sum()))
