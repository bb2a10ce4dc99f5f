"""3-D lesion clean-up on synthetic volumes whose answer is known (issue 9)."""

from __future__ import annotations

import numpy as np

from ctscreen.imaging.postprocess import clean_lesions

SPACING = (2.0, 0.7, 0.7)  # dz, dy, dx (mm): thin slices, as the shared COVID-CT-MD series


def _lung(nz: int = 12) -> np.ndarray:
    lung = np.zeros((nz, 96, 96), np.uint8)
    lung[1:-1, 10:86, 10:86] = 1
    return lung


def test_tiny_isolated_and_rim_components_go_real_ones_stay():
    lung = _lung()
    labels = np.zeros(lung.shape, np.uint8)
    labels[3:8, 40:60, 40:60] = 1          # a real opacity: 5 slices deep inside the lung
    labels[3:8, 10:30, 60:70] = 2          # subpleural consolidation touching the edge, reaching 20 px deep
    labels[5, 40:42, 20:22] = 1            # tiny: 4 voxels (0.004 mL)
    labels[9, 60:70, 30:40] = 1            # one slice only, 100 voxels = 0.098 mL ... kept (>= 0.05 mL)
    labels[9, 20:25, 40:45] = 1            # one slice only, 25 voxels = 0.0245 mL -> removed
    labels[2:9, 84:86, 30:70] = 1          # a 2-px (1.4 mm) shell along the lung edge on 7 slices: a rim
    out, rep = clean_lesions(labels, lung, SPACING)
    assert out[3:8, 40:60, 40:60].all() and (out[3:8, 10:30, 60:70] == 2).all()
    assert out[9, 60:70, 30:40].all()
    assert not out[5, 40:42, 20:22].any() and not out[9, 20:25, 40:45].any() and not out[2:9, 84:86, 30:70].any()
    assert rep.removed_components == {"tiny": 1, "single_slice": 1, "rim": 1}
    assert rep.removed_voxels == {"tiny": 4, "single_slice": 25, "rim": 7 * 2 * 40}
    assert rep.kept_components == 3
    assert labels[5, 40, 20] == 1  # the input is not changed


def test_thick_slices_keep_single_slice_findings_and_rules_switch_off():
    lung = _lung()
    labels = np.zeros(lung.shape, np.uint8)
    labels[6, 20:25, 40:45] = 1
    out, _ = clean_lesions(labels, lung, (5.0, 0.7, 0.7))  # 5 mm slices: a small opacity may show on one only
    assert out[6, 20:25, 40:45].all()
    rim = np.zeros(lung.shape, np.uint8)
    rim[2:9, 84:86, 30:70] = 1
    out, rep = clean_lesions(rim, lung, SPACING, rim_mm=0)
    np.testing.assert_array_equal(out, rim)
    assert sum(rep.removed_voxels.values()) == 0
    empty, rep = clean_lesions(np.zeros_like(rim), lung, SPACING)
    assert not empty.any() and rep.kept_components == 0
