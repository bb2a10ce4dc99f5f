"""Grad-CAM for the lesion segmentation network (torch only).

Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391), in the form used for
segmentation networks (Vinogradova et al., AAAI 2020, arXiv:2002.11434):

* target ``y`` = sum of the lesion logits (ground-glass + consolidation
  channels) over the predicted lesion region - the analysis' final labels when
  given (what the user sees), else the pixels this forward pass predicts as
  lesion - or over the whole slice when there is none;
* ``w_c`` = the gradient ``dy/dA_c`` averaged over the layer's spatial grid;
* ``cam = ReLU(sum_c w_c A_c)``, resized to the slice (the crop to the thorax
  box and the resize to the network's input are undone) and divided by its
  maximum so it lies in ``[0, 1]``;
* the share of the map's salient part (values >= 0.5) outside the lung mask
  is reported per slice as a sanity check (:func:`outside_fraction`).

Slices are independent in an ``eval()`` network, so the gradient of the *sum*
of the per-slice targets gives every slice its own gradient: one backward pass
serves a whole batch.

Only the part of the network after the chosen layer is recorded for autograd:
the layer's output is cut from the graph and made a leaf, and the parameters
are frozen for the duration. The encoder therefore runs as plain inference,
which keeps one slice's map well under a second on a laptop CPU.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: Channels of the segmentation output: background, ground-glass opacity, consolidation.
LESION_CHANNELS = (1, 2)


def available_layers(model: Any) -> dict[str, torch.nn.Module]:
    """The layers a user may pick for Grad-CAM, by name (the model's own list when it has one)."""
    if hasattr(model, "cam_layers"):
        return dict(model.cam_layers())
    return dict(_net(model).named_modules())


def default_layer(model: Any) -> str:
    """The model's default Grad-CAM layer (deepest decoder / ASPP stage)."""
    name = getattr(model, "default_cam_layer", None)
    if name:
        return name
    layers = available_layers(model)
    if not layers:
        raise ValueError("the model lists no layers for Grad-CAM")
    return next(reversed(layers))


def _net(model: Any) -> torch.nn.Module:
    return model.net if hasattr(model, "net") else model


def resolve_layer(model: Any, layer: str | None) -> tuple[str, torch.nn.Module]:
    """``(name, module)`` of a layer: one of ``model.cam_layers()``, else any named module; ValueError if none."""
    name = layer or default_layer(model)
    layers = available_layers(model)
    if name in layers:
        return name, layers[name]
    modules = dict(_net(model).named_modules())
    if name in modules:
        return name, modules[name]
    raise ValueError(f"unknown Grad-CAM layer '{name}'; choose one of: {', '.join(layers)}")


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return _first_tensor(out["out"] if "out" in out else next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    raise TypeError(f"cannot read a tensor from a layer output of type {type(out).__name__}")


@contextlib.contextmanager
def _frozen_parameters(net: torch.nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextlib.contextmanager
def _leaf_at(module: torch.nn.Module, store: dict[str, torch.Tensor]) -> Iterator[None]:
    """Replace ``module``'s output by a leaf that requires grad, and keep that leaf in ``store``."""

    def hook(_mod: torch.nn.Module, _inp: Any, out: Any) -> Any:
        if "A" in store:  # a module used twice: explain its first use
            return None
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"Grad-CAM needs a layer that outputs one tensor, got {type(out).__name__}")
        leaf = out.detach().requires_grad_(True)
        store["A"] = leaf
        # A non-leaf copy goes on, so an in-place op after the layer (ReLU(inplace=True)) stays legal.
        return leaf * 1.0

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _forward_logits(model: Any, x: torch.Tensor) -> torch.Tensor:
    return _first_tensor(_net(model)(x))


def cam_from_activations(activations: torch.Tensor, gradients: torch.Tensor, kind: str = "gradcam") -> torch.Tensor:
    """The map from a layer's activations and gradients: (n, C, h, w) twice -> (n, h, w), not normalised.

    ``kind``:

    * ``"gradcam"``: ``ReLU(sum_c mean_hw(dy/dA_c) * A_c)`` (Selvaraju et al. 2017);
    * ``"hirescam"``: ``ReLU(sum_c dy/dA_c * A_c)``, the gradient kept per pixel instead of
      averaged (Draelos & Carin 2020, arXiv:2011.08891): the map is what the target's
      first-order change is made of, so it cannot light up where the gradient is zero;
    * ``"gradcam++"``: channel weights ``sum_hw alpha * ReLU(dy/dA)`` with the second-order
      ``alpha`` of Chattopadhyay et al. (WACV 2018, arXiv:1710.11063), as pytorch-grad-cam computes it.
    """
    if kind == "hirescam":
        return torch.relu((gradients * activations).sum(dim=1))
    if kind == "gradcam++":
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        sum_a = activations.sum(dim=(2, 3), keepdim=True)
        denom = 2 * g2 + sum_a * g3
        alpha = torch.where(gradients != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                            torch.zeros_like(g2))
        weights = (alpha * torch.relu(gradients)).sum(dim=(2, 3), keepdim=True)
        return torch.relu((weights * activations).sum(dim=1))
    if kind != "gradcam":
        raise ValueError(f"unknown CAM kind {kind!r}")
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


#: Map-making methods, by name. ``seg-`` methods explain the lesion logits summed over the
#: predicted lesion region (Seg-Grad-CAM, Vinogradova et al. 2020); the others over the whole
#: slice. The default (``camlayers.DEFAULT_CAM_METHOD``) was chosen by ``benchmarks/explanations.py``
#: (see the model card).
CAM_METHODS: dict[str, tuple[str, bool]] = {
    "seg-hirescam": ("hirescam", True),
    "seg-gradcam": ("gradcam", True),
    "seg-gradcam++": ("gradcam++", True),
    "hirescam": ("hirescam", False),
    "gradcam": ("gradcam", False),
    "gradcam++": ("gradcam++", False),
}


def check_method(method: str | None) -> str:
    """``method`` (None: the default) if known; ValueError with a one-line message listing the valid names."""
    from ctscreen.inference.camlayers import CAM_METHOD_NAMES, DEFAULT_CAM_METHOD, unknown_method_message

    name = method or DEFAULT_CAM_METHOD
    if name not in CAM_METHODS or name not in CAM_METHOD_NAMES:
        raise ValueError(unknown_method_message(name))
    return name


def target_region(logits: torch.Tensor) -> torch.Tensor:
    """Pixels predicted as lesion (argmax is a lesion channel); the whole slice where there are none.

    Returns a float (n, 1, H, W) weight map at the logits' resolution.
    """
    pred = logits.argmax(dim=1, keepdim=True)
    region = torch.zeros_like(pred, dtype=logits.dtype)
    for c in LESION_CHANNELS:
        region = region + (pred == c).to(logits.dtype)
    empty = region.flatten(1).sum(dim=1) == 0
    if bool(empty.any()):
        region[empty] = 1.0
    return region


def region_to_input(region: np.ndarray, box: Sequence[int], input_hw: tuple[int, int]) -> torch.Tensor:
    """Lesion masks at slice geometry (n, y, x) -> (n, 1, H, W) float weights at the network input.

    The same crop to ``box`` and resize the network input gets (area-averaged), so a
    mask pixel keeps its place; a border pixel gets a fractional weight.
    """
    y0, y1, x0, x1 = (int(v) for v in box)
    crop = torch.from_numpy(np.ascontiguousarray(np.asarray(region)[:, y0:y1, x0:x1] > 0, dtype=np.float32))
    return F.adaptive_avg_pool2d(crop[:, None], input_hw) if crop.shape[-2] >= input_hw[0] and \
        crop.shape[-1] >= input_hw[1] else F.interpolate(crop[:, None], size=input_hw, mode="bilinear",
                                                          align_corners=False)


def _restore(model: Any, cam_small: torch.Tensor, box: Sequence[int], out_shape: tuple[int, int],
             input_hw: tuple[int, int]) -> np.ndarray:
    """Undo the network's geometry: (n, h, w) map -> (n, y, x) float32 at slice size, 0 outside ``box``."""
    cam_in = F.interpolate(cam_small[:, None], size=input_hw, mode="bilinear", align_corners=False)
    if hasattr(model, "restore_map"):
        out = model.restore_map(cam_in, box, out_shape)
    elif hasattr(model, "restore"):
        out = model.restore(cam_in, box, out_shape)
    else:
        y0, y1, x0, x1 = (int(v) for v in box)
        inside = F.interpolate(cam_in, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        out = torch.zeros((cam_in.shape[0], 1, *out_shape), dtype=cam_in.dtype)
        out[:, :, y0:y1, x0:x1] = inside.cpu()
    out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return np.ascontiguousarray(out[:, 0], dtype=np.float32)


def normalise(maps: np.ndarray) -> np.ndarray:
    """Divide each map by its maximum (maps that are all zero stay zero); clip to [0, 1]."""
    maps = np.maximum(maps, 0, out=maps)
    peak = maps.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peak > 0, 1.0 / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)
    maps *= scale[:, None, None]
    return np.clip(maps, 0.0, 1.0, out=maps)


#: Activation below this share of a slice's maximum is left out of :func:`outside_fraction`.
SALIENT_LEVEL = 0.5


def outside_fraction(maps: np.ndarray, lung: np.ndarray | None, min_level: float = SALIENT_LEVEL) -> np.ndarray:
    """Share of each map's salient activation (sum of values >= ``min_level``) that lies where ``lung`` is 0.

    Maps are normalised to a maximum of 1. Counting only the salient part (by
    default the half-maximum region) keeps the faint, diffuse activation that
    coarse layers spread over the whole body from outweighing where the map
    actually peaks: on P001 with the shipped UNet, the plain sum put more than
    half of the activation outside the lung on every slice even at layers whose
    peaks sit on the lesions. ``min_level=0`` gives the plain sum. 0 for an all-zero map.
    """
    n = len(maps)
    if lung is None:
        return np.zeros(n, dtype=np.float64)
    lung = np.asarray(lung).reshape(maps.shape)
    counted = np.where(maps >= min_level, maps, 0) if min_level > 0 else maps
    total = counted.reshape(n, -1).sum(axis=1, dtype=np.float64)
    outside = np.where(lung == 0, counted, 0).reshape(n, -1).sum(axis=1, dtype=np.float64)
    return np.where(total > 0, outside / np.where(total > 0, total, 1.0), 0.0)


class RecordedPass:
    """A forward pass recorded for Grad-CAM: the logits and the chosen layer's output (a leaf)."""

    def __init__(self, model: Any, x: torch.Tensor, logits: torch.Tensor, activations: torch.Tensor):
        self.model = model
        self.x = x
        self.logits = logits
        self.activations = activations

    def region_weights(self, region: np.ndarray | None, box: Sequence[int], restrict: bool = True) -> torch.Tensor:
        """(n, 1, H, W) target weights: ``region`` (slice geometry) or this pass's own prediction.

        ``restrict=False``: the whole slice (the lesion logits of every pixel), for the methods
        of :data:`CAM_METHODS` that are not restricted to the predicted region.
        """
        if not restrict:
            return torch.ones((self.logits.shape[0], 1, *self.logits.shape[-2:]), dtype=self.logits.dtype,
                              device=self.logits.device)
        if region is None:
            return target_region(self.logits.detach())
        n = self.logits.shape[0]
        weights = region_to_input(np.asarray(region).reshape(n, *np.shape(region)[-2:]), box,
                                  tuple(self.logits.shape[-2:])).to(self.logits.device, self.logits.dtype)
        empty = weights.flatten(1).sum(dim=1) == 0
        if bool(empty.any()):
            weights[empty] = 1.0
        return weights

    def maps(self, weights: torch.Tensor, box: Sequence[int], out_shape: tuple[int, int],
             lung_slices: np.ndarray | None = None, rows: Sequence[int] | None = None, kind: str = "gradcam"
             ) -> tuple[np.ndarray, np.ndarray]:
        """One backward pass; normalised maps and outside-lung shares for ``rows`` (default: all).

        ``kind`` is how the map is made from activations and gradients (:func:`cam_from_activations`).

        ``lung_slices`` covers the whole batch. Rows left out get zero weight, so they add nothing to the target (their
        gradient is computed with the batch but not used).
        """
        n = self.logits.shape[0]
        rows = list(range(n)) if rows is None else list(rows)
        if len(rows) < n:
            keep = torch.zeros((n, 1, 1, 1), dtype=weights.dtype, device=weights.device)
            keep[rows] = 1.0
            weights = weights * keep
        target = (self.logits[:, list(LESION_CHANNELS)] * weights).sum()
        (grads,) = torch.autograd.grad(target, self.activations)
        with torch.no_grad():
            cam_small = cam_from_activations(self.activations.detach()[rows], grads[rows], kind)
        maps = normalise(_restore(self.model, cam_small, box, tuple(out_shape), tuple(self.x.shape[-2:])))
        lung = None if lung_slices is None else np.asarray(lung_slices).reshape(n, *out_shape)[rows]
        return maps, outside_fraction(maps, lung)


def recorded_forward(model: Any, x: torch.Tensor, layer: str | None = None) -> RecordedPass:
    """Run the network on a prepared batch, recording for autograd only what follows ``layer``.

    The logits are those of a plain forward pass (the same numbers as inference),
    so a caller can use them for the segmentation too and save a second pass.
    """
    name, module = resolve_layer(model, layer)
    store: dict[str, torch.Tensor] = {}
    with torch.enable_grad(), _frozen_parameters(_net(model)), _leaf_at(module, store):
        logits = _forward_logits(model, x)
    if "A" not in store:
        raise ValueError(f"the Grad-CAM layer '{name}' was not used by the forward pass")
    return RecordedPass(model, x, logits, store["A"])


def gradcam_batch(model: Any, hu_slices: np.ndarray, box: Sequence[int], lung_slices: np.ndarray | None = None,
                  layer: str | None = None, region: np.ndarray | None = None, method: str | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps for several slices with one forward and one backward pass.

    Parameters
    ----------
    model : LoadedModel
        From :func:`ctscreen.inference.models.load_model` (needs ``net``, ``prepare``, ``restore``).
    hu_slices : ndarray, (n, y, x)
        Slices in Hounsfield units.
    box : (y0, y1, x0, x1)
        The thorax box the segmentation used (:func:`ctscreen.inference.segment.thorax_box`).
    lung_slices : ndarray, (n, y, x), optional
        Lung mask of the slices (0 outside) for the outside-the-lung share.
    layer : str, optional
        Layer name (a key of ``model.cam_layers()``); default ``model.default_cam_layer``.
    region : ndarray, (n, y, x), optional
        The lesion region to explain, at slice geometry (e.g. the analysis' final,
        lung-constrained labels). Default: the pixels this forward pass predicts as
        lesion. A slice with an empty region is explained over the whole slice.
    method : str, optional
        A key of :data:`CAM_METHODS` (default: the shipped default,
        :data:`ctscreen.inference.camlayers.DEFAULT_CAM_METHOD`).

    Returns
    -------
    maps : ndarray of float32, (n, y, x)
        Normalised to [0, 1] per slice; 0 outside the thorax box.
    outside : ndarray of float64, (n,)
        Share of each map's salient activation outside the lung mask
        (:func:`outside_fraction`; 0 when no mask is given).
    """
    hu_slices = np.asarray(hu_slices)
    if hu_slices.ndim == 2:
        hu_slices = hu_slices[None]
    from ctscreen.inference.segment import prepare_input  # on the model's device, as the segmentation

    kind, restrict = CAM_METHODS[check_method(method)]
    rec = recorded_forward(model, prepare_input(model, hu_slices, box), layer)
    weights = rec.region_weights(region, box, restrict)
    return rec.maps(weights, box, tuple(hu_slices.shape[-2:]), lung_slices, kind=kind)


def gradcam_slice(model: Any, hu_slice: np.ndarray, box: Sequence[int], lung_slice: np.ndarray | None = None,
                  layer: str | None = None, region: np.ndarray | None = None, method: str | None = None
                  ) -> tuple[np.ndarray, float]:
    """Grad-CAM of one slice, for on-demand use in the viewer.

    Returns the (y, x) float32 map in [0, 1] and the share of its activation outside ``lung_slice``.
    ``region`` (y, x) is the lesion region to explain (default: what the network predicts).
    """
    hu = np.asarray(hu_slice)[None]
    lung = None if lung_slice is None else np.asarray(lung_slice)[None]
    reg = None if region is None else np.asarray(region)[None]
    maps, outside = gradcam_batch(model, hu, box, lung, layer, reg, method)
    return maps[0], float(outside[0])


def gradcam_for_result(model: Any, result: Any, index: int, layer: str | None = None,
                       method: str | None = None) -> tuple[np.ndarray, float]:
    """Grad-CAM of slice ``index`` of an :class:`~ctscreen.imaging.result.AnalysisResult` (viewer helper).

    Uses the result's thorax box, lung mask and lesion labels (the region explained),
    so the map matches the maps the analysis computed; ``layer`` and ``method`` pick another
    layer or method (default: the result's own, else the shipped default).
    """
    hu = result.volume.hu
    box = tuple(getattr(result, "thorax_box", ()) or ())
    if len(box) != 4:
        from ctscreen.inference.preprocess import thorax_box

        box = thorax_box(np.asarray(hu))
    method = method or getattr(result, "cam_method", "") or None
    return gradcam_slice(model, hu[index], box, result.lung[index], layer, region=result.lesion[index],
                         method=method)
