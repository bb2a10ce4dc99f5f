"""Per-image segmentation scores (numpy only).

Protocol used by ``ctscreen evaluate``: the lesion probability is thresholded
at 0.5 at the mask's resolution; each image gets Dice, IoU, sensitivity and
specificity; the reported figure is the mean over images. An image whose mask
and prediction are both empty scores 1 for Dice, IoU and sensitivity.
"""

from __future__ import annotations

import numpy as np


def binary_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice, IoU, sensitivity and specificity of two boolean masks of equal shape."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    tp = float(np.count_nonzero(p & t))
    fp = float(np.count_nonzero(p & ~t))
    fn = float(np.count_nonzero(~p & t))
    tn = float(p.size) - tp - fp - fn
    dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    sens = 1.0 if tp + fn == 0 else tp / (tp + fn)
    spec = 1.0 if tn + fp == 0 else tn / (tn + fp)
    return {"dice": dice, "iou": iou, "sensitivity": sens, "specificity": spec}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over the rows that have it."""
    keys = sorted({k for r in rows for k in r})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
