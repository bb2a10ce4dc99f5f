"""Which torch device runs the networks, and how to recognise running out of its memory.

Policy: CUDA, then Apple MPS, then the CPU, unless the user names one. Asking
for an accelerator that is not there is an error, not a silent fall back: the
user asked for it and should know it is not being used.
"""

from __future__ import annotations

import torch

from ctscreen.errors import CtscreenError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


class DeviceUnavailable(CtscreenError):
    """The device the user asked for does not exist on this machine."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn a user's device choice into a :class:`torch.device`.

    Parameters
    ----------
    name : str, torch.device or None
        ``"auto"`` (or None): CUDA if available, then Apple MPS, then the CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``: that device, or an error
        when it is not available.

    Raises
    ------
    DeviceUnavailable
        The named device is unknown or not available here.
    """
    if isinstance(name, torch.device):
        name = str(name)
    choice = (name or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device '{choice}' was asked for but no CUDA GPU is available to this torch build "
                f"(torch {torch.__version__}); use --device auto or --device cpu"
            )
        try:
            dev = torch.device(choice)
        except RuntimeError as exc:
            raise DeviceUnavailable(f"device '{choice}' is not a valid device name ({exc}); use auto|cpu|cuda|mps") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device '{choice}' does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)"
            )
        return dev
    if choice == "mps":
        if not _mps_available():
            raise DeviceUnavailable("device 'mps' was asked for but Apple MPS is not available; use --device auto or --device cpu")
        return torch.device("mps")
    raise DeviceUnavailable(f"unknown device '{name}'; use one of {', '.join(DEVICE_CHOICES)}")


def is_out_of_memory(exc: BaseException) -> bool:
    """True when ``exc`` says an accelerator ran out of memory (CUDA or MPS)."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_accelerator_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error so a smaller batch can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        try:
            torch.mps.empty_cache()
        except Exception:  # pragma: no cover - depends on the torch build
            pass


def describe_device(device: torch.device) -> str:
    """A short human name for a device, e.g. ``"cuda:0 (NVIDIA H100)"`` or ``"cpu (2 threads)"``."""
    if device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
        except (RuntimeError, AssertionError):  # no usable CUDA runtime: still name the device
            return str(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
