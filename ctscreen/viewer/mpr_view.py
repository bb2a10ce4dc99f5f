"""Multiplanar reading: the crosshair that links the axial, coronal and sagittal panes, and the z-profile pane.

:class:`PaneLink` keeps one 3-D point (a (k, y, x) voxel) for all panes:

* scrolling a pane moves its plane, and so the point along that pane's axis; the
  other panes' crosshair lines follow (their planes stay);
* a left click in a pane moves the point there: the two other panes change plane;
* window/level (on by default) and zoom (off by default) can be linked.

Each pane is a :class:`~ctscreen.viewer.slice_view.SliceView` of its plane, so the
panes share the axial view's fast path (one LUT ``take`` per change) and its
true-spacing geometry.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsLineItem

from ctscreen.imaging import planes
from ctscreen.viewer.overlays import CONSOLIDATION_RGB, GGO_RGB
from ctscreen.viewer.slice_view import SliceView

CROSSHAIR_RGBA = (90, 190, 255, 170)


class CrosshairLine:
    """A vertical or horizontal line across the image, in view mm (``item`` goes into the scene).

    A plain ``QGraphicsLineItem`` with a 1-pixel cosmetic pen and no antialiasing:
    pyqtgraph's ``InfiniteLine`` repaints antialiased across the whole view, about 1 ms
    per line per change, which the panes cannot afford on every slice change. (A wrapper,
    not a subclass: the scene owns and deletes the item.)
    """

    def __init__(self, vertical: bool) -> None:
        self.vertical = vertical
        self.item = QGraphicsLineItem()
        pen = QPen(QColor(*CROSSHAIR_RGBA))
        pen.setCosmetic(True)
        pen.setWidth(1)
        self.item.setPen(pen)
        self._value = 0.0

    def value(self) -> float:
        return self._value

    def isVisible(self) -> bool:  # noqa: N802 - Qt naming, as the items it stands for
        return self.item.isVisible()

    def setVisible(self, visible: bool) -> None:  # noqa: N802
        self.item.setVisible(visible)

    def hide(self) -> None:
        self.item.hide()

    def set_value(self, value: float, extent: float) -> None:
        """Put the line at ``value`` (x if vertical, else y), from 0 to ``extent`` mm the other way."""
        self._value = float(value)
        if self.vertical:
            self.item.setLine(value, 0.0, value, extent)
        else:
            self.item.setLine(0.0, value, extent, value)


class PaneLink(QObject):
    """Links the panes of a layout through one 3-D point (see the module docstring).

    Parameters
    ----------
    views : dict
        ``{"axial": view, "coronal": view, "sagittal": view}``, each view showing that plane.

    Signals
    -------
    pointChanged(object)
        The linked (k, y, x) voxel.
    """

    pointChanged = Signal(object)

    def __init__(self, views: dict[str, SliceView], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.views = views
        self.point: tuple[int, int, int] = (0, 0, 0)
        self.active = False
        #: A measuring tool that uses clicks turns this off.
        self.clicks_move_point = True
        self.link_window = True
        self.link_zoom = False
        self._zooming = False
        self.lines: dict[str, tuple[CrosshairLine, CrosshairLine]] = {}
        for plane, view in views.items():
            vline, hline = CrosshairLine(vertical=True), CrosshairLine(vertical=False)
            for line in (vline, hline):
                view.add_layer(line.item, 500)
                line.hide()
            self.lines[plane] = (vline, hline)
            view.sliceChanged.connect(partial(self._on_slice, plane))
            view.clicked.connect(partial(self._on_click, plane))
            view.windowChanged.connect(partial(self._on_window, plane))
            view.view_box.sigRangeChangedManually.connect(partial(self._on_zoom, plane))

    # -- state -------------------------------------------------------------------------------
    def set_active(self, active: bool) -> None:
        """Show the crosshair and follow the panes (a multiplanar layout) or stand still (axial only)."""
        self.active = bool(active)
        if self.active:
            axial = self.views.get("axial")
            if axial is not None and axial.volume is not None:
                p = list(self.point)
                p[0] = axial.slice_index
                self.point = self._clamp(p)
            self.set_point(self.point)
        for vline, hline in self.lines.values():
            vline.setVisible(self.active)
            hline.setVisible(self.active)

    def reset(self, volume: Any) -> None:
        """A new volume: the point goes to its centre (the axial pane keeps its slice)."""
        nz, ny, nx = volume.shape
        axial = self.views.get("axial")
        k = axial.slice_index if axial is not None and axial.volume is volume else nz // 2
        self.point = (int(k), ny // 2, nx // 2)
        if self.active:
            self.set_point(self.point)

    def _clamp(self, voxel: Any) -> tuple[int, int, int]:
        view = next((v for v in self.views.values() if v.volume is not None), None)
        if view is None:
            return tuple(int(v) for v in voxel)  # type: ignore[return-value]
        shape = view.volume.shape
        return tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(voxel, shape))  # type: ignore[return-value]

    def set_point(self, voxel: Any, centre: bool = False) -> None:
        """Move every pane to the planes through ``voxel`` (k, y, x); ``centre`` also pans them onto it."""
        self.point = self._clamp(voxel)
        for plane, view in self.views.items():
            if view.volume is None:
                continue
            index, row, col = planes.plane_position(plane, self.point)
            view.set_slice(index)  # calls _on_slice, which keeps the point
            if centre:
                sy, sx = planes.plane_spacing_mm(view.volume.spacing_mm, plane)
                view.view_box.translateBy(x=(col + 0.5) * sx - view.view_box.viewRect().center().x(),
                                          y=(row + 0.5) * sy - view.view_box.viewRect().center().y())
        self._place_lines()
        self.pointChanged.emit(self.point)

    def _place_lines(self) -> None:
        for plane, (vline, hline) in self.lines.items():
            view = self.views[plane]
            if view.volume is None:
                continue
            _, row, col = planes.plane_position(plane, self.point)
            sy, sx = planes.plane_spacing_mm(view.volume.spacing_mm, plane)
            rect = view.pixel_rect_mm()
            vline.set_value((col + 0.5) * sx, rect.height())
            hline.set_value((row + 0.5) * sy, rect.width())

    # -- pane events -----------------------------------------------------------------------------
    def _on_slice(self, plane: str, index: int) -> None:
        if not self.active:
            return
        p = list(self.point)
        p[planes.FIXED_AXIS[plane]] = int(index)
        if tuple(p) != self.point:
            self.point = tuple(p)  # type: ignore[assignment]
            self._place_lines()
            self.pointChanged.emit(self.point)

    def _on_click(self, plane: str, pos_mm: QPointF) -> None:
        view = self.views[plane]
        if not self.active or not self.clicks_move_point or view.volume is None:
            return
        sy, sx = planes.plane_spacing_mm(view.volume.spacing_mm, plane)
        row, col = int(np.floor(pos_mm.y() / sy)), int(np.floor(pos_mm.x() / sx))
        self.set_point(planes.voxel_of(plane, view.slice_index, row, col))

    def _on_window(self, plane: str, window: Any) -> None:
        if not self.link_window:
            return
        for other, view in self.views.items():
            if other != plane:
                view.set_window(window)  # no-op (and no signal) when already equal

    def _on_zoom(self, plane: str, *_: Any) -> None:
        if not self.link_zoom or self._zooming:
            return
        source = self.views[plane].view_box
        width_px = max(source.width(), 1.0)
        mm_per_px = source.viewRect().width() / width_px
        self._zooming = True
        try:
            for other, view in self.views.items():
                if other == plane or not view.isVisible():
                    continue
                box = view.view_box
                c = box.viewRect().center()
                w, h = box.width() * mm_per_px / 2, box.height() * mm_per_px / 2
                box.setRange(xRange=(c.x() - w, c.x() + w), yRange=(c.y() - h, c.y() + h), padding=0.0)
        finally:
            self._zooming = False


class ZProfilePane(pg.PlotWidget):
    """Lesion area per axial slice along the patient's length, slice 0 (head) at the top.

    The curves are GGO and consolidation (cm²) from ``result.measurements.rows``; the
    horizontal line is the axial slice on screen. A click asks for that slice
    (``sliceRequested``), so the panes jump there.
    """

    sliceRequested = Signal(int)

    def __init__(self) -> None:
        super().__init__(background=(12, 12, 12))
        self.setObjectName("zProfilePane")
        item = self.getPlotItem()
        item.invertY(True)
        item.showGrid(x=True, y=True, alpha=0.2)
        item.setLabel("bottom", "lesion area per slice (cm²)")
        item.setLabel("left", "axial slice")
        item.setMenuEnabled(False)
        item.getViewBox().setMouseEnabled(x=False, y=False)
        self.legend = item.addLegend(offset=(-10, 10))
        self.ggo_curve = item.plot([], [], pen=pg.mkPen(GGO_RGB, width=2), name="GGO")
        self.cons_curve = item.plot([], [], pen=pg.mkPen(CONSOLIDATION_RGB, width=2), name="Consolidation")
        self.marker = CrosshairLine(vertical=False)
        item.getViewBox().addItem(self.marker.item, ignoreBounds=True)
        self._x_max = 1.0
        self.hint = pg.TextItem("Analyze (F5) to plot the lesion area along z", color=(150, 150, 150),
                                anchor=(0.5, 0.5))
        self.hint.setParentItem(item.getViewBox())
        item.getViewBox().sigResized.connect(self._place_hint)
        self.scene().sigMouseClicked.connect(self._on_click)
        self.n_slices = 0
        self.set_result(None)

    def _place_hint(self, *_: Any) -> None:
        rect = self.getPlotItem().getViewBox().boundingRect()
        self.hint.setPos(rect.width() / 2, rect.height() / 2)

    def set_volume(self, volume: Any) -> None:
        self.n_slices = int(volume.shape[0]) if volume is not None else 0
        self.set_result(None)

    def set_result(self, result: Any) -> None:
        """Plot ``result``'s per-slice lesion areas (None: clear)."""
        n = self.n_slices if result is None else int(result.lesion.shape[0])
        ggo = np.zeros(max(n, 1))
        cons = np.zeros(max(n, 1))
        if result is not None:
            for row in result.measurements.rows:
                ggo[row.index] = row.ggo_area_mm2 / 100.0
                cons[row.index] = row.consolidation_area_mm2 / 100.0
        z = np.arange(ggo.size)
        if result is None:  # no curve (hiding the items instead would cross them out in the legend)
            ggo = cons = z = np.zeros(0)
        self.ggo_curve.setData(ggo, z)
        self.cons_curve.setData(cons, z)
        self.hint.setVisible(result is None)
        self.getPlotItem().setYRange(0, max(n - 1, 1), padding=0.02)
        self._x_max = max(float(max(ggo.max(), cons.max())) if ggo.size else 0.0, 1.0)
        self.getPlotItem().setXRange(0, self._x_max, padding=0.05)
        self.marker.set_value(self.marker.value(), self._x_max * 1.05)
        self._place_hint()

    def set_current_slice(self, index: int) -> None:
        self.marker.set_value(index, self._x_max * 1.05)

    def _on_click(self, ev: Any) -> None:
        if self.n_slices <= 0:
            return
        p = self.getPlotItem().getViewBox().mapSceneToView(ev.scenePos())
        self.sliceRequested.emit(int(np.clip(round(p.y()), 0, self.n_slices - 1)))
