"""The immutable result of one lesion analysis (no torch, no Qt).

Produced by :func:`ctscreen.inference.pipeline.analyze`; consumed by the viewer,
the exports (:mod:`ctscreen.io.export`) and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ctscreen.imaging.volume import Volume

#: Label values in ``AnalysisResult.lesion``.
GGO = 1
CONSOLIDATION = 2
#: Label values in ``AnalysisResult.lung``.
RIGHT_LUNG = 1
LEFT_LUNG = 2


@dataclass(frozen=True)
class AnalysisResult:
    """Everything one analysis produced, arrays in the volume's (z, y, x) display order.

    Attributes
    ----------
    volume : Volume
        The analysed volume.
    lung : ndarray of uint8
        0 outside, 1 patient's right lung, 2 patient's left lung.
    lesion : ndarray of uint8
        0 none, 1 ground-glass opacity, 2 consolidation; constrained to ``lung``.
    lesion_prob : ndarray of float16
        Probability of lesion (GGO + consolidation) per voxel.
    cam : dict[int, ndarray of float16]
        Grad-CAM map per slice index where computed, (y, x), normalised to [0, 1]. Stored as
        float16 to halve the memory (0.5 MB per 512 x 512 slice; steps of at most 4.9e-4 in
        [0, 1], far below a display grey level); convert to float32 before arithmetic or
        OpenCV, which rejects float16 in many functions.
    cam_outside_fraction : dict[int, float]
        Share of each slice's Grad-CAM activation that falls outside the lung mask.
    cam_layer : str
        The network layer the Grad-CAM maps were computed at.
    cam_method : str
        How the maps were made (``seg-hirescam``, ``seg-gradcam``, ... of
        ``ctscreen.inference.camlayers.CAM_METHOD_NAMES``; "" when none were computed).
    measurements : Any
        :class:`ctscreen.imaging.measurements.Measurements`.
    model_name, model_version, device : str
        Which model ran where.
    timings_s : dict[str, float]
        Seconds per stage (load, lung_mask, segmentation, gradcam, measurements, export).
    warnings : tuple of str
        Things the user should know (fallback to CPU, slices skipped, ...).
    screening : Any
        :class:`ctscreen.imaging.screening.Screening` (the RSNA reporting category with its
        criteria, and the classifier's probabilities), or None when not computed.
    thorax_box : tuple of int
        ``(y0, y1, x0, x1)`` crop every slice was resized from for the network;
        pass it to :func:`ctscreen.inference.gradcam.gradcam_slice` for more maps
        (empty when unknown).
    """

    volume: Volume
    lung: np.ndarray
    lesion: np.ndarray
    lesion_prob: np.ndarray
    measurements: Any
    model_name: str
    model_version: str
    device: str
    cam: dict[int, np.ndarray] = field(default_factory=dict)
    cam_outside_fraction: dict[int, float] = field(default_factory=dict)
    cam_layer: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    thorax_box: tuple[int, ...] = ()
    screening: Any = None
    cam_method: str = ""

    #: A slice whose Grad-CAM lies mostly outside the lung is flagged.
    CAM_OUTSIDE_FLAG = 0.5

    def cam_flagged_slices(self) -> list[int]:
        """Slices where most of the Grad-CAM activation falls outside the lung mask."""
        return sorted(k for k, f in self.cam_outside_fraction.items() if f > self.CAM_OUTSIDE_FLAG)
