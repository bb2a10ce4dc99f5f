"""Window/level: map Hounsfield units to 8-bit grey for display.

The mapping is the linear VOI LUT function of DICOM PS3.3 C.11.2.1.2.1::

    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255,  clipped to [0, 255]

with ``c`` the level (window centre) and ``w`` the width. This sits on the
viewer's scrolling hot path, so ``int16`` slices go through a 65,536-entry
lookup table (one ``np.take`` per slice, tables cached per window).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["PRESETS", "default_window_from_header", "window_lut", "window_to_uint8"]

#: Window presets as (width, level) in HU.
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500, -600),
    "mediastinum": (350, 40),
    "bone": (2000, 500),
    "soft": (400, 50),
}


def _linear(x: np.ndarray, width: float, level: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear function, rounded to the nearest grey level."""
    w = max(float(width), 1.0)
    c = float(level)
    y = ((x - (c - 0.5)) / (w - 1.0 if w > 1.0 else 1.0) + 0.5) * 255.0
    np.clip(y, 0.0, 255.0, out=y)
    y += 0.5
    return y.astype(np.uint8)


@lru_cache(maxsize=16)
def window_lut(width: float, level: float) -> np.ndarray:
    """Lookup table indexed by the *bit pattern* of an int16 value (its uint16 view).

    ``window_lut(w, l)[hu.view(np.uint16)]`` equals ``window_to_uint8(hu, w, l)``
    for int16 ``hu``; indexing by the bit pattern avoids a cast per slice.
    """
    values = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.float64)
    lut = _linear(values, width, level)
    lut.setflags(write=False)
    return lut


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to display grey levels (uint8, same shape) for a window ``width`` / ``level``.

    Parameters
    ----------
    hu
        Any shape; ``int16`` uses a cached LUT, other dtypes are computed directly.
    width, level
        Window width (> 0, values below 1 are treated as 1) and level (centre) in HU.
    """
    hu = np.asarray(hu)
    if hu.dtype == np.int16:
        return np.take(window_lut(float(width), float(level)), hu.view(np.uint16))
    return _linear(hu.astype(np.float32, copy=True), width, level)


def _first_float(value: Any) -> float:
    """A DS value or the first of a multi-valued one (several windows may be stored)."""
    try:
        return float(value)
    except TypeError:
        return float(value[0])


def default_window_from_header(ds: Any) -> tuple[float, float] | None:
    """The first (width, level) stored in a header, or ``None``.

    Looks at WindowWidth/WindowCenter (C.11.2), then at the Frame VOI LUT
    functional group of an enhanced multi-frame header.
    """
    candidates = [ds]
    for groups_kw in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(groups_kw) if hasattr(ds, "get") else None
        if groups:
            seq = groups[0].get("FrameVOILUTSequence")
            if seq:
                candidates.append(seq[0])
    for item in candidates:
        try:
            width, level = item.get("WindowWidth"), item.get("WindowCenter")
        except AttributeError:
            return None
        if width is None or level is None:
            continue
        try:
            w, c = _first_float(width), _first_float(level)
        except (TypeError, ValueError, IndexError):
            continue
        if np.isfinite(w) and np.isfinite(c) and w > 0:
            return (w, c)
    return None
