"""Running a loaded model over HU slices.

Test-time augmentation (``tta=True``) averages the softmax of the slice and of
its vertically flipped copy: the training images come in both anterior-up and
posterior-up orientation, and the average is steadier than either alone.
"""

from __future__ import annotations

import numpy as np
import torch

from ctscreen.inference.models import LoadedModel
from ctscreen.inference.preprocess import thorax_box

__all__ = ["thorax_box", "segment_batch", "predict_tensor"]


def predict_tensor(model: LoadedModel, x: torch.Tensor, tta: bool = True) -> torch.Tensor:
    """Softmax probabilities ``(n, 3, S, S)`` for a prepared input batch."""
    net = model.net
    use_bf16 = model.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        p = torch.softmax(net(x).float(), dim=1)
        if tta:
            pf = torch.softmax(net(torch.flip(x, dims=[2])).float(), dim=1)
            p = 0.5 * (p + torch.flip(pf, dims=[2]))
    return p


def segment_batch(model: LoadedModel, hu_slices: np.ndarray, box: tuple[int, int, int, int],
                  tta: bool = True) -> np.ndarray:
    """Probabilities ``(n, 3, y, x)`` (background, GGO, consolidation) for HU slices ``(n, y, x)``."""
    hu_slices = np.asarray(hu_slices)
    x = model.prepare(hu_slices, box)
    p = predict_tensor(model, x, tta=tta)
    return model.restore(p, box, hu_slices.shape[-2:])
