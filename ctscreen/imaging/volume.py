"""The in-memory CT volume every other part of ctscreen works on.

Conventions (shared by imaging, inference and viewer):

* ``hu`` is a ``(z, y, x)`` array in Hounsfield units (modality LUT applied,
  DICOM PS3.3 C.11.1), dtype ``int16`` when slope/intercept are integral,
  else ``float32``.
* Array order is *radiological display order*: ``hu[k]`` is one axial slice,
  row 0 is the top of the screen (anterior for an axial CT), column 0 the left
  of the screen (the patient's right). The loader flips stored arrays as needed
  so this holds whatever order the files were written in; ``direction`` records
  the result so patient geometry is never guessed from the screen.
* ``direction[:, i]`` is the unit vector in patient coordinates (DICOM LPS:
  +x = patient left, +y = posterior, +z = head) along array axis ``i``
  (0 = z, 1 = y, 2 = x). ``origin_mm`` is the LPS position of voxel ``[0, 0, 0]``.
  ``patient_xyz = origin_mm + direction @ (index * spacing_mm)``.
* ``spacing_mm`` is ``(z, y, x)``; z comes from the slice positions, never from
  SliceThickness.
* ``sop_instance_uids[k]``, ``instance_numbers[k]`` and ``z_mm[k]`` describe slice ``k``.
  ``z_mm[k]`` is the position of slice ``k`` along the slice normal.
* Slice order (set by :mod:`ctscreen.io.dicom`): index 0 is the slice
  farthest along the positive patient axis closest to the slice normal. For an
  axial CT that is the **most superior slice** (the head end): the index grows
  towards the feet, ``direction[:, 0]`` is about ``(0, 0, -1)`` and ``z_mm``
  (the LPS z of each slice for an untilted series) decreases with ``k``.
  Without slice positions the order is InstanceNumber ascending (with a warning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


#: LPS unit vectors (columns) of the z, y, x array axes for an axial series loaded
#: head first: z towards the feet, y posterior, x to the patient's left.
STANDARD_AXIAL_DIRECTION = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class Volume:
    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Default: the loader's standard axial layout (index 0 most superior, rows to
    #: posterior, columns to patient left).
    direction: np.ndarray = field(default_factory=lambda: STANDARD_AXIAL_DIRECTION.copy())
    sop_instance_uids: tuple[str, ...] = ()
    instance_numbers: tuple[int | None, ...] = ()
    z_mm: tuple[float, ...] = ()
    modality: str = "CT"
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    series_description: str = ""
    patient_name: str = ""
    patient_id: str = ""
    frame_of_reference_uid: str = ""
    source_files: tuple[str, ...] = ()
    #: Data-quality problems found while loading (strings meant for the user).
    warnings: tuple[str, ...] = ()
    #: Why the series cannot be analysed ("" when it can): non-CT, not axial, ...
    not_analysable_reason: str = ""
    #: One header (pydicom Dataset without pixel data) per slice, for the tag panel.
    headers: tuple[Any, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def analysable(self) -> bool:
        return not self.not_analysable_reason

    @property
    def voxel_volume_ml(self) -> float:
        z, y, x = self.spacing_mm
        return float(z * y * x) / 1000.0

    def patient_left_is_plus_x(self) -> bool:
        """True when increasing array column index moves towards the patient's left."""
        return bool(self.direction[0, 2] >= 0)
