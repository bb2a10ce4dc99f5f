"""The Grad-CAM layers a user may pick, per architecture, without importing torch.

The viewer lists these in its "CAM layer" box and ``ctscreen analyze --cam-layer``
checks a name against them before any work, so neither has to load torch first.
The order is the one :meth:`ctscreen.inference.nets.UNet.cam_layers` and
:meth:`~ctscreen.inference.nets.DeepLabV3Plus.cam_layers` give for the shipped
configurations (``tests/test_camlayers.py`` checks that they agree); the first
name is the default (UNet: the full-resolution decoder stage, chosen by
benchmarks/explanations.py; DeepLabv3+: the ASPP stage, not re-measured).

Resolutions are of the network input (256 x 256 crop of the thorax).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

from ctscreen.errors import CtscreenError

MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"

#: Layer names per architecture, the default first.
CAM_LAYERS: dict[str, tuple[str, ...]] = {
    "unet": ("decoder1", "decoder2", "decoder3", "decoder4", "bottleneck"),
    "deeplab": ("aspp", "decoder", "layer3", "layer2"),
}

#: What each layer is, in a few words (shown as a tooltip and in ``--help``).
CAM_LAYER_NOTES: dict[str, dict[str, str]] = {
    "unet": {
        "decoder4": "deepest decoder stage, 1/8 resolution",
        "decoder3": "decoder stage at 1/4 resolution",
        "decoder2": "decoder stage at 1/2 resolution, sharper",
        "decoder1": "last decoder stage, full resolution, sharpest: the lesion evidence pixel by pixel",
        "bottleneck": "encoder bottleneck, 1/16 resolution, coarsest",
    },
    "deeplab": {
        "aspp": "atrous spatial pyramid pooling, 1/8 resolution",
        "decoder": "decoder after fusing the low-level features, 1/4 resolution, sharper",
        "layer3": "last (dilated) encoder stage, 1/8 resolution",
        "layer2": "encoder stage at 1/8 resolution, more local",
    },
}


#: How the maps may be made (keys of ``ctscreen.inference.gradcam.CAM_METHODS``).
#: ``seg-``: the lesion logits summed over the predicted lesion region are explained
#: (Seg-Grad-CAM); without it, the lesion logits of the whole slice.
CAM_METHOD_NAMES: tuple[str, ...] = ("seg-hirescam", "seg-gradcam", "seg-gradcam++", "hirescam", "gradcam",
                                     "gradcam++")
#: The shipped default, chosen by ``benchmarks/explanations.py`` (model card).
DEFAULT_CAM_METHOD = "seg-hirescam"

CAM_METHOD_NOTES: dict[str, str] = {
    "seg-hirescam": "HiResCAM of the predicted lesion region: gradient x activation per pixel",
    "seg-gradcam": "Grad-CAM of the predicted lesion region: channel-averaged gradients",
    "seg-gradcam++": "Grad-CAM++ of the predicted lesion region: second-order channel weights",
    "hirescam": "HiResCAM of the lesion logits over the whole slice",
    "gradcam": "Grad-CAM of the lesion logits over the whole slice",
    "gradcam++": "Grad-CAM++ of the lesion logits over the whole slice",
}


def describe_method(method: str) -> str:
    """``"seg-hirescam — HiResCAM of ... (default)"``."""
    note = CAM_METHOD_NOTES.get(method, "")
    return (f"{method} \u2014 {note}" if note else method) + (" (default)" if method == DEFAULT_CAM_METHOD else "")


def unknown_method_message(method: str) -> str:
    """One line naming the bad CAM method and the valid ones."""
    return f"unknown CAM method '{method}'; choose one of: {', '.join(CAM_METHOD_NAMES)}"


def layers_for(arch: str | None) -> tuple[str, ...]:
    """Layer names of ``arch`` (``unet``/``deeplab``), the default first; () for an unknown one."""
    return CAM_LAYERS.get(arch or "", ())


def default_layer(arch: str | None) -> str:
    """The default layer of ``arch`` ("" when unknown)."""
    layers = layers_for(arch)
    return layers[0] if layers else ""


def describe(arch: str | None, layer: str) -> str:
    """``"decoder4 — deepest decoder stage, 1/8 resolution (default)"``."""
    note = CAM_LAYER_NOTES.get(arch or "", {}).get(layer, "")
    text = f"{layer} \u2014 {note}" if note else layer
    return text + (" (default)" if layer and layer == default_layer(arch) else "")


def unknown_layer_message(layer: str, valid: tuple[str, ...] | list[str], what: str = "") -> str:
    """One line naming the bad layer and the valid ones."""
    return (f"unknown Grad-CAM layer '{layer}'{f' for {what}' if what else ''}; "
            f"choose one of: {', '.join(valid)}")


def check_layer(arch: str, layer: str) -> str:
    """``layer`` if ``arch`` lists it; ValueError with a one-line message listing the valid names."""
    valid = layers_for(arch)
    if layer not in valid:
        raise ValueError(unknown_layer_message(layer, valid, f"the {arch} model"))
    return layer


def _shipped_default() -> str:
    try:
        return (MODELS_DIR / "default.txt").read_text().strip()
    except OSError:
        return ""


class _NoCode(pickle.Unpickler):
    """Reads a torch checkpoint's pickle for its plain values: every class becomes a stand-in."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        return _Stub

    def persistent_load(self, pid):  # noqa: ANN001, ANN201 - tensor storages are not read
        return None


class _Stub(dict):
    """Stands in for any class or function; a dict, so an ``OrderedDict`` state_dict still loads."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __call__(self, *args, **kwargs) -> "_Stub":
        return self

    def __setstate__(self, state) -> None:
        pass


def _arch_in_file(path: Path) -> str | None:
    """The ``arch`` of a ctscreen model file (a torch zip checkpoint), read without torch; None if unreadable."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            with z.open(name) as f:
                blob = _NoCode(f).load()
    except Exception:  # noqa: BLE001 - any failure: the architecture is just not known yet
        return None
    arch = blob.get("arch") if isinstance(blob, dict) else None
    return arch if isinstance(arch, str) and arch in CAM_LAYERS else None


def arch_of_model(model: str | None) -> str | None:
    """The architecture of a model spec as the CLI and viewer take it, without torch.

    ``None``/``""`` is the shipped default, ``unet``/``deeplab`` (or another shipped
    name) is looked up in ``resources/models``, a weights file is read for its ``arch``.
    None when it cannot be told (a missing or unreadable file): the caller then checks
    the loaded model's own layers.
    """
    spec = str(model or "") or _shipped_default() or "unet"
    if spec in CAM_LAYERS and not (MODELS_DIR / f"{spec}.pt").exists():
        return spec
    shipped = MODELS_DIR / f"{spec}.pt"
    path = shipped if shipped.exists() else Path(spec).expanduser()
    if path.is_file():
        return _arch_in_file(path) or (spec if spec in CAM_LAYERS else None)
    return spec if spec in CAM_LAYERS else None


def check_cam_layer(model: str | None, layer: str | None) -> bool:
    """Refuse an unknown ``--cam-layer`` of a shipped model before any work (torch is not loaded yet).

    Returns True when checked; a weights file's layers depend on its configuration,
    so its layer is checked against the loaded model instead (:func:`check_loaded_cam_layer`).
    """
    spec = str(model or "")
    if not layer or (spec and spec not in CAM_LAYERS):
        return False
    arch = arch_of_model(spec or None)
    if arch is None:
        return False
    try:
        check_layer(arch, layer)
    except ValueError as exc:
        raise CtscreenError(str(exc)) from None
    return True


def check_loaded_cam_layer(model: Any, layer: str | None) -> None:
    """Refuse a ``--cam-layer`` the loaded model does not list (one line naming the valid ones)."""
    if not layer:
        return
    valid = list(model.cam_layers()) if hasattr(model, "cam_layers") else []
    if layer not in valid:
        what = f"model {Path(model.path).name if getattr(model, 'path', '') else getattr(model, 'name', '?')}"
        raise CtscreenError(unknown_layer_message(layer, valid, what))
