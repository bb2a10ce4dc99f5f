"""Saving, finding and loading the segmentation models.

A model file (``.pt``) is a plain dictionary saved with :func:`torch.save`
and read back with ``weights_only=True`` (no code is unpickled)::

    {"format": "ctscreen-model/1", "arch": "unet", "config": {...},
     "state_dict": {... float16 tensors ...}, "card": {...}}

The shipped models live in ``ctscreen/resources/models/`` beside their model
cards (``<name>.md``, ``<name>.json``); ``default.txt`` names the default.
Nothing is ever downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ctscreen.errors import ModelLoadError
from ctscreen.inference import nets
from ctscreen.inference.device import resolve_device
from ctscreen.inference.preprocess import MODEL_SIZE, slices_to_model_input

FORMAT = "ctscreen-model/1"
MODELS_DIR = Path(__file__).resolve().parents[1] / "resources" / "models"
ARCH_LABELS = {"unet": "UNet", "deeplab": "DeepLabv3+"}


def available_models() -> list[str]:
    """Names of the shipped models (``unet``, ``deeplab``) whose weights are present."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.pt"))


def default_model_name() -> str:
    """The shipped default (the better model on validation), from ``default.txt``."""
    f = MODELS_DIR / "default.txt"
    if f.exists():
        name = f.read_text().strip()
        if name:
            return name
    names = available_models()
    if not names:
        raise ModelLoadError(
            f"no model weights in {MODELS_DIR}; train one with "
            "'ctscreen train --data ../shared/data/covid-semiseg --arch unet --out "
            f"{MODELS_DIR / 'unet.pt'}'"
        )
    return names[0]


def model_path(name_or_path: str | Path | None) -> Path:
    """Resolve ``None`` (default), a shipped model name or a file path to a weights file."""
    if name_or_path is None or str(name_or_path) == "":
        name_or_path = default_model_name()
    s = str(name_or_path)
    if s in nets.ARCHS or (MODELS_DIR / f"{s}.pt").exists():
        p = MODELS_DIR / f"{s}.pt"
    else:
        p = Path(s).expanduser()
    if not p.exists():
        raise ModelLoadError(
            f"model weights not found: {p} - name a shipped model ({', '.join(available_models()) or 'none installed'}) "
            "or the path of a file written by 'ctscreen train'"
        )
    return p


def save_model(net: torch.nn.Module, arch: str, path: str | Path, card: dict[str, Any]) -> Path:
    """Write weights (float16) and the card dict atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to("cpu").half() if v.is_floating_point() else v.detach().to("cpu"))
             for k, v in net.state_dict().items()}
    blob = {"format": FORMAT, "arch": arch, "config": getattr(net, "config", {}), "state_dict": state, "card": card}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


@dataclass
class LoadedModel:
    """A network ready for inference, with what is needed to feed it HU slices."""

    name: str
    arch: str
    version: str
    net: torch.nn.Module
    device: torch.device
    card: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    input_size: int = MODEL_SIZE

    @property
    def label(self) -> str:
        return ARCH_LABELS.get(self.arch, self.arch)

    def to(self, device: str | torch.device) -> "LoadedModel":
        dev = resolve_device(device) if isinstance(device, str) else device
        self.net.to(dev)
        self.device = dev
        return self

    def cam_layers(self) -> dict[str, torch.nn.Module]:
        return self.net.cam_layers()

    @property
    def default_cam_layer(self) -> str:
        return next(iter(self.cam_layers()))

    def prepare(self, hu_slices: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """HU slices ``(n, y, x)`` -> ``(n, 1, S, S)`` float32 tensor on the model's device."""
        x = slices_to_model_input(np.asarray(hu_slices), box, self.input_size)
        return torch.from_numpy(x).to(self.device)

    def restore(self, t: torch.Tensor, box: tuple[int, int, int, int], out_shape: tuple[int, int]) -> np.ndarray:
        """``(n, C, S, S)`` maps at model geometry -> ``(n, C, y, x)`` float32 at slice geometry.

        The crop box is resized back and pasted into a zero canvas (zero = no lesion,
        no activation outside the thorax).
        """
        y0, y1, x0, x1 = box
        t = t.float()
        up = torch.nn.functional.interpolate(t, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        out = np.zeros((t.shape[0], t.shape[1], *out_shape), dtype=np.float32)
        out[:, :, y0:y1, x0:x1] = up.cpu().numpy()
        return out


def load_model(name_or_path: str | Path | None = None, device: str | torch.device = "auto") -> LoadedModel:
    """Load a shipped model by name (``unet``, ``deeplab``), ``None`` for the default, or a file.

    Raises
    ------
    ModelLoadError
        The file is missing, corrupt, or not a ctscreen model.
    """
    path = model_path(name_or_path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same for the user
        raise ModelLoadError(f"{path}: cannot read model weights ({exc.__class__.__name__}: {exc}); "
                             "the file is corrupt or not a ctscreen model - retrain or reinstall it") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelLoadError(f"{path}: not a ctscreen model file (expected format {FORMAT})")
    arch = blob.get("arch", "")
    try:
        net = nets.build(arch, blob.get("config"))
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in blob["state_dict"].items()}
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: weights do not match architecture {arch!r} ({exc})") from exc
    dev = resolve_device(device) if not isinstance(device, torch.device) else device
    net.eval().to(dev)
    if dev.type == "cpu":
        # NHWC weights let oneDNN pick its faster convolution kernels on the CPU (same numbers up to
        # float rounding, about 1e-6 in probability; ~25 % less time per forward pass, benchmarks/analyze.py)
        net.to(memory_format=torch.channels_last)
    card = blob.get("card") or {}
    name = path.stem
    version = str(card.get("version") or f"{arch}-{card.get('git_commit', 'unknown')[:8]}")
    return LoadedModel(name=name, arch=arch, version=version, net=net, device=dev, card=card, path=str(path),
                       input_size=int(card.get("input_size", MODEL_SIZE)))
