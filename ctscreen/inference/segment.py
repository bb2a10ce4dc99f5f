"""Running a loaded model over HU slices.

Test-time augmentation averages the softmax over flipped copies of the slice:
the training images come in several orientations (anterior up and down), and
the average is steadier than any one view. Over 12 validation runs the
2-view average changed Dice by -0.004 to +0.020 (mean +0.005); 4 views added
about 0.004 more on the two splits measured (see the model cards).

Labels follow the evaluation protocol: a pixel is lesion when the lesion
probability (GGO + consolidation) is at least 0.5, and its type is the larger
of the two lesion probabilities.

Where the work runs: :func:`prepare_input` crops, normalises and resizes the
slices on the model's device when that is an accelerator (the int16 HU go up
once per batch; the crop/resize on the CPU per slice was most of the app's time
per slice on a GPU), and with OpenCV on the CPU, where that is the faster way.
Both follow :mod:`ctscreen.inference.preprocess` (one intensity function, the
same resize weights). :func:`segment_labels` then resizes the two lesion
channels back to the crop on the device, applies the labelling rule there and
copies back only the uint8 labels and the float16 lesion probability the
result keeps, not three float32 maps per pixel.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

import torch.nn.functional as F

from ctscreen.inference.models import LoadedModel
from ctscreen.inference.preprocess import hu_to_unit, resize_taps, thorax_box, uses_area

__all__ = ["thorax_box", "segment_batch", "segment_labels", "prepare_input", "prepare_on_device",
           "labels_on_device", "predict_tensor", "labels_from_probs", "tta_views", "TTA_FLIPS"]

#: Device types whose input is prepared with OpenCV on the host (per slice) rather than on the device.
HOST_PREPARE_DEVICES = ("cpu",)

#: Flipped views per TTA level (tensor dims flipped, on (n, 1, S, S)); the first is the plain slice.
TTA_FLIPS = {1: [()], 2: [(), (2,)], 4: [(), (2,), (3,), (2, 3)]}


def tta_views(tta: bool | int, device: torch.device) -> int:
    """Number of flipped views: an int is taken as is; True = 4 on a GPU, 1 on the CPU; False = 1.

    One view on the CPU since issue 9: the second view cost as much time again as the first
    and changed lesion Dice on the 50 labelled COVID-SemiSeg slices by +0.004 (0.856 -> 0.860,
    training slices of the shipped weights), the slice-level ROC AUC on P001 by +0.0025
    (0.9730 -> 0.9755) and on cap001 by -0.011 (``benchmarks/lesion_split.py``,
    ``benchmarks/dicom_lesions.py --tta``); ``ctscreen analyze --tta 2`` keeps it.
    """
    if tta is True:
        return 4 if device.type != "cpu" else 1
    if tta is False or tta is None:
        return 1
    n = int(tta)
    if n not in TTA_FLIPS:
        raise ValueError(f"tta must be 1, 2 or 4 views, not {tta!r}")
    return n


def predict_tensor(model: LoadedModel, x: torch.Tensor, tta: bool | int = True) -> torch.Tensor:
    """Softmax probabilities ``(n, 3, S, S)`` for a prepared input batch."""
    net = model.net
    use_bf16 = model.device.type == "cuda"
    views = TTA_FLIPS[tta_views(tta, model.device)]
    with torch.inference_mode(), torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        p = None
        for dims in views:
            xi = torch.flip(x, dims=list(dims)) if dims else x
            pi = torch.softmax(net(xi).float(), dim=1)
            if dims:
                pi = torch.flip(pi, dims=list(dims))
            p = pi if p is None else p + pi
    return p / len(views)


def labels_from_probs(probs: np.ndarray) -> np.ndarray:
    """Labels 0/1/2 from probabilities ``(..., 3, y, x)`` by the evaluation protocol (see module doc)."""
    ggo, cons = probs[..., 1, :, :], probs[..., 2, :, :]
    lesion = (ggo + cons) >= 0.5
    return np.where(lesion, np.where(cons > ggo, 2, 1), 0).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _taps_on(device: torch.device, n_in: int, n_out: int, area: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`preprocess.resize_taps` as tensors on ``device`` (flat index, weights ``(n_out, k)``), cached."""
    index, weights = resize_taps(n_in, n_out, area)
    return torch.tensor(index.reshape(-1), device=device), torch.tensor(weights, device=device)


def _resize_axis(x: torch.Tensor, n_out: int, area: bool, dim: int) -> torch.Tensor:
    """Resize ``x`` along ``dim`` with :func:`preprocess.resize_taps` weights (a few taps per output pixel)."""
    idx, w = _taps_on(x.device, int(x.shape[dim]), int(n_out), bool(area))
    k = w.shape[1]
    g = x.index_select(dim, idx)  # taps laid out along dim: n_out * k
    shape = list(x.shape)
    shape[dim:dim + 1] = [n_out, k]
    g = g.view(shape)
    w_shape = [1] * g.dim()
    w_shape[dim], w_shape[dim + 1] = n_out, k
    return (g * w.view(w_shape)).sum(dim=dim + 1)


def prepare_on_device(hu_slices: np.ndarray, box: tuple[int, int, int, int], size: int,
                      device: torch.device | str) -> torch.Tensor:
    """HU slices ``(n, y, x)`` -> network input ``(n, 1, size, size)`` float32, computed on ``device``.

    The thorax crop goes up once in its stored type (int16 HU: half the bytes of
    float32); :func:`preprocess.hu_to_unit` and the resize of
    :func:`preprocess.resize_to_model` (its exact weights: x first, then y, as OpenCV)
    run there. Equal to :func:`preprocess.slices_to_model_input` up to float rounding.
    """
    y0, y1, x0, x1 = (int(v) for v in box)
    crop = np.ascontiguousarray(np.asarray(hu_slices)[:, y0:y1, x0:x1])
    if crop.dtype not in (np.int16, np.float32, np.float16, np.uint8, np.int32):
        crop = crop.astype(np.float32)
    t = hu_to_unit(torch.from_numpy(crop).to(device))
    area = uses_area(crop.shape[1:], size)
    t = _resize_axis(t, size, area, dim=2)
    t = _resize_axis(t, size, area, dim=1)
    return t[:, None].contiguous()


def prepare_input(model: LoadedModel, hu_slices: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The network input for ``model``: on an accelerator built there (:func:`prepare_on_device`), else
    with OpenCV on the CPU (``model.prepare``), which is faster there."""
    dev = getattr(model, "device", torch.device("cpu"))
    if dev.type in HOST_PREPARE_DEVICES or not hasattr(model, "input_size"):
        return model.prepare(np.asarray(hu_slices), box)
    return prepare_on_device(hu_slices, box, int(model.input_size), dev)


def labels_on_device(p: torch.Tensor, box: tuple[int, int, int, int], out_shape: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(n, 3, S, S)`` at model geometry -> labels and lesion probability at slice geometry.

    The two lesion channels are resized to the thorax box on ``p``'s device (bilinear, as
    ``LoadedModel.restore``), :func:`labels_from_probs`'s rule is applied there, and only
    uint8 labels and the float16 lesion probability (GGO + consolidation) come back;
    outside the box both are 0. The same numbers as ``labels_from_probs(model.restore(...))``.

    Returns
    -------
    labels : ndarray of uint8, (n, y, x)
    lesion_prob : ndarray of float16, (n, y, x)
    """
    y0, y1, x0, x1 = (int(v) for v in box)
    n = p.shape[0]
    up = F.interpolate(p[:, 1:3].float(), size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
    ggo, cons = up[:, 0], up[:, 1]
    lesion = ggo + cons
    lab = torch.where(lesion >= 0.5, torch.where(cons > ggo, 2, 1), 0).to(torch.uint8)
    prob = lesion.to(torch.float16)
    labels = np.zeros((n, *out_shape), np.uint8)
    probs = np.zeros((n, *out_shape), np.float16)
    labels[:, y0:y1, x0:x1] = lab.cpu().numpy()
    probs[:, y0:y1, x0:x1] = prob.cpu().numpy()
    return labels, probs


def segment_labels(model: LoadedModel, hu_slices: np.ndarray, box: tuple[int, int, int, int],
                   tta: bool | int = True) -> tuple[np.ndarray, np.ndarray]:
    """Labels 0/1/2 (uint8) and lesion probability (float16), both ``(n, y, x)``, for HU slices ``(n, y, x)``.

    What the app keeps of :func:`segment_batch`, computed on the model's device (see the module doc).
    """
    hu_slices = np.asarray(hu_slices)
    p = predict_tensor(model, prepare_input(model, hu_slices, box), tta=tta)
    return labels_on_device(p, box, hu_slices.shape[-2:])


def segment_batch(model: LoadedModel, hu_slices: np.ndarray, box: tuple[int, int, int, int],
                  tta: bool | int = True) -> np.ndarray:
    """Probabilities ``(n, 3, y, x)`` (background, GGO, consolidation) for HU slices ``(n, y, x)``."""
    hu_slices = np.asarray(hu_slices)
    x = prepare_input(model, hu_slices, box)
    p = predict_tensor(model, x, tta=tta)
    return model.restore(p, box, hu_slices.shape[-2:])
