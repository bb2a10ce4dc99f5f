"""The reader's own measurements: distance rulers, elliptical ROIs and point probes (no Qt).

Measurements live in a plane of the volume (:mod:`ctscreen.imaging.planes`) and are
given in that plane's millimetre coordinates: x along the image columns, y down the
rows, pixel ``(row, col)`` covering ``[col * col_mm, (col + 1) * col_mm)`` by
``[row * row_mm, (row + 1) * row_mm)``. Because plane pixels keep the true voxel
spacing, a ruler's length is simply the Euclidean distance of its ends in mm.

An ROI (ellipse or freehand polygon) takes the pixels whose centres lie inside it and
reports their HU mean, standard deviation (sample, ``ddof=1``; 0 for one pixel),
minimum and maximum; its area is the shape's own (pi * a * b for an ellipse, the
shoelace formula for a polygon), beside the pixel count.

:class:`Annotations` keeps a study's measurements in order with stable ids, for the
viewer's list and for reports (:meth:`Annotations.to_dicts`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from collections.abc import Sequence
from typing import Any, Union

import numpy as np

from ctscreen.imaging import planes


@dataclass(frozen=True)
class Ruler:
    plane: str
    index: int
    start_mm: tuple[float, float]
    end_mm: tuple[float, float]
    length_mm: float
    kind: str = "ruler"

    @property
    def summary(self) -> str:
        return f"{self.length_mm:.1f} mm"


@dataclass(frozen=True)
class RoiStats:
    area_mm2: float
    pixel_count: int
    mean_hu: float
    sd_hu: float
    min_hu: float
    max_hu: float


@dataclass(frozen=True)
class EllipseRoi:
    plane: str
    index: int
    centre_mm: tuple[float, float]
    radii_mm: tuple[float, float]
    stats: RoiStats
    kind: str = "ellipse"

    @property
    def summary(self) -> str:
        s = self.stats
        if s.pixel_count == 0:
            return f"{s.area_mm2:.0f} mm², no pixel centre inside"
        return (f"{s.area_mm2:.0f} mm²  mean {s.mean_hu:.0f}  SD {s.sd_hu:.0f}  "
                f"min {s.min_hu:.0f}  max {s.max_hu:.0f} HU")


@dataclass(frozen=True)
class Probe:
    plane: str
    index: int
    point_mm: tuple[float, float]
    voxel: tuple[int, int, int]
    hu: float
    patient_xyz_mm: tuple[float, float, float]
    kind: str = "probe"

    @property
    def summary(self) -> str:
        x, y, z = self.patient_xyz_mm
        return f"{self.hu:.0f} HU at ({x:.1f}, {y:.1f}, {z:.1f}) mm"


@dataclass(frozen=True)
class FreehandRoi:
    plane: str
    index: int
    points_mm: tuple[tuple[float, float], ...]
    stats: RoiStats
    kind: str = "freehand"

    @property
    def summary(self) -> str:
        return EllipseRoi.summary.fget(self)  # type: ignore[attr-defined]


Annotation = Union[Ruler, EllipseRoi, FreehandRoi, Probe]


def ruler(plane: str, index: int, start_mm: tuple[float, float], end_mm: tuple[float, float]) -> Ruler:
    """A distance ruler between two points of one plane (mm coordinates)."""
    length = math.hypot(end_mm[0] - start_mm[0], end_mm[1] - start_mm[1])
    return Ruler(plane, int(index), (float(start_mm[0]), float(start_mm[1])),
                 (float(end_mm[0]), float(end_mm[1])), float(length))


def ellipse_mask(shape: tuple[int, int], spacing_mm: tuple[float, float], centre_mm: tuple[float, float],
                 radii_mm: tuple[float, float]) -> np.ndarray:
    """Boolean (rows, cols) mask of the pixels whose centres lie inside the axis-aligned ellipse."""
    rows, cols = shape
    row_mm, col_mm = spacing_mm
    a, b = max(float(radii_mm[0]), 1e-9), max(float(radii_mm[1]), 1e-9)
    y = (np.arange(rows) + 0.5) * row_mm
    x = (np.arange(cols) + 0.5) * col_mm
    return ((x[None, :] - centre_mm[0]) / a) ** 2 + ((y[:, None] - centre_mm[1]) / b) ** 2 <= 1.0 + 1e-12


def roi_stats(values: np.ndarray, area_mm2: float) -> RoiStats:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        nan = float("nan")
        return RoiStats(float(area_mm2), 0, nan, nan, nan, nan)
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return RoiStats(float(area_mm2), int(v.size), float(v.mean()), sd, float(v.min()), float(v.max()))


def ellipse_roi(volume: Any, plane: str, index: int, centre_mm: tuple[float, float],
                radii_mm: tuple[float, float]) -> EllipseRoi:
    """HU statistics of an axis-aligned ellipse in plane ``index`` of ``volume``."""
    image = planes.plane_slice(volume.hu, plane, int(index))
    spacing = planes.plane_spacing_mm(volume.spacing_mm, plane)
    mask = ellipse_mask(image.shape, spacing, centre_mm, radii_mm)
    area = math.pi * abs(float(radii_mm[0])) * abs(float(radii_mm[1]))
    return EllipseRoi(plane, int(index), (float(centre_mm[0]), float(centre_mm[1])),
                      (abs(float(radii_mm[0])), abs(float(radii_mm[1]))), roi_stats(image[mask], area))


def polygon_area_mm2(points_mm: Sequence[tuple[float, float]]) -> float:
    """Area of a simple polygon (shoelace formula), mm²."""
    pts = np.asarray(points_mm, dtype=float)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def polygon_mask(shape: tuple[int, int], spacing_mm: tuple[float, float],
                 points_mm: Sequence[tuple[float, float]]) -> np.ndarray:
    """Boolean (rows, cols) mask of the pixels whose centres lie inside the polygon (even-odd rule)."""
    rows, cols = shape
    row_mm, col_mm = spacing_mm
    pts = np.asarray(points_mm, dtype=float)
    mask = np.zeros(shape, dtype=bool)
    if len(pts) < 3:
        return mask
    y = (np.arange(rows) + 0.5)[:, None] * row_mm
    x = (np.arange(cols) + 0.5)[None, :] * col_mm
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for ax, ay, bx, by in zip(x0, y0, x1, y1):
        if ay == by:
            continue
        crosses = (ay > y) != (by > y)  # the edge spans the pixel row's centre
        x_at = ax + (y - ay) * (bx - ax) / (by - ay)
        mask ^= crosses & (x < x_at)
    return mask


def freehand_roi(volume: Any, plane: str, index: int, points_mm: Sequence[tuple[float, float]]) -> FreehandRoi:
    """HU statistics of a closed freehand outline (polygon through ``points_mm``) in one plane."""
    image = planes.plane_slice(volume.hu, plane, int(index))
    spacing = planes.plane_spacing_mm(volume.spacing_mm, plane)
    pts = tuple((float(a), float(b)) for a, b in points_mm)
    mask = polygon_mask(image.shape, spacing, pts)
    return FreehandRoi(plane, int(index), pts, roi_stats(image[mask], polygon_area_mm2(pts)))


def probe(volume: Any, plane: str, index: int, point_mm: tuple[float, float]) -> Probe | None:
    """The HU and patient position of the pixel under ``point_mm``; None outside the image."""
    row_mm, col_mm = planes.plane_spacing_mm(volume.spacing_mm, plane)
    row, col = int(math.floor(point_mm[1] / row_mm)), int(math.floor(point_mm[0] / col_mm))
    voxel = planes.voxel_of(plane, int(index), row, col)
    if not all(0 <= v < n for v, n in zip(voxel, volume.shape)):
        return None
    return Probe(plane, int(index), (float(point_mm[0]), float(point_mm[1])), voxel, float(volume.hu[voxel]),
                 planes.patient_xyz_mm(volume, voxel))


@dataclass
class Annotations:
    """A study's measurements in the order they were made, each under a stable id."""

    items: dict[int, Annotation] = field(default_factory=dict)
    _next_id: int = 1

    def add(self, annotation: Annotation) -> int:
        key = self._next_id
        self._next_id += 1
        self.items[key] = annotation
        return key

    def remove(self, key: int) -> None:
        self.items.pop(key, None)

    def clear(self) -> None:
        self.items.clear()

    def __len__(self) -> int:
        return len(self.items)

    def on_plane(self, plane: str, index: int) -> list[tuple[int, Annotation]]:
        return [(k, a) for k, a in self.items.items() if a.plane == plane and a.index == index]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Plain, JSON-ready records (``id``, ``kind``, ``plane``, ``index``, the figures; no patient data)."""
        out = []
        for key, a in self.items.items():
            d = asdict(a)
            if isinstance(a, (EllipseRoi, FreehandRoi)):
                d.update(d.pop("stats"))
            for name, value in list(d.items()):
                if isinstance(value, float) and not math.isfinite(value):
                    d[name] = None
                elif isinstance(value, tuple):
                    d[name] = list(value)
            out.append({"id": key, **d, "summary": a.summary})
        return out
