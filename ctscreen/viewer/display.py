"""HU to screen grey levels, fast enough to follow the mouse wheel.

The mapping is the core's :func:`ctscreen.imaging.windowing.window_to_uint8`
(DICOM PS3.3 C.11.2.1.2.1 linear VOI function). For int16 volumes the core
keeps a 65,536-entry table per window, so a slice change costs one ``take``;
:class:`WindowLut` holds the table of the current window so that the slice
path does not even pay for the cache look-up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctscreen.imaging.windowing import PRESETS, window_lut, window_to_uint8

#: Presets on keys 1..4, in this order.
PRESET_ORDER = ("lung", "mediastinum", "bone", "soft")
PRESET_LABELS = {"lung": "Lung", "mediastinum": "Mediastinum", "bone": "Bone", "soft": "Soft tissue"}


@dataclass(frozen=True)
class Window:
    """A VOI window in HU; ``name`` is the preset it came from or ``"custom"``."""

    width: float
    level: float
    name: str = "custom"

    @classmethod
    def preset(cls, name: str) -> "Window":
        width, level = PRESETS[name]
        return cls(float(width), float(level), name)

    def adjusted(self, d_width: float, d_level: float) -> "Window":
        return Window(max(1.0, self.width + d_width), self.level + d_level, "custom")

    @property
    def label(self) -> str:
        name = PRESET_LABELS.get(self.name, "Custom")
        return f"W {self.width:.0f}  L {self.level:.0f}  ({name})"


class WindowLut:
    """Converts HU slices to uint8 for one window at a time (exactly ``window_to_uint8``)."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self._lut = window_lut(window.width, window.level)

    @property
    def window(self) -> Window:
        return self._window

    @window.setter
    def window(self, window: Window) -> None:
        if window != self._window:
            self._lut = window_lut(window.width, window.level)
            self._window = window

    def to_uint8(self, hu: np.ndarray) -> np.ndarray:
        """Grey levels (uint8, same shape) of an HU array under the current window."""
        if hu.dtype == np.int16:
            return np.take(self._lut, hu.view(np.uint16))  # the table is indexed by the bit pattern
        return window_to_uint8(hu, self._window.width, self._window.level)
