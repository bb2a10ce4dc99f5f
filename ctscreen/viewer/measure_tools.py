"""Measuring tools on every pane: distance ruler, elliptical ROI (area, HU mean/SD/min/max), point probe.

The figures are computed by :mod:`ctscreen.imaging.annotations` (no Qt) and kept in its
:class:`~ctscreen.imaging.annotations.Annotations`, which the report reads; this module
draws them, lets the reader make them with the mouse and lists them in a panel where
they can be deleted (Delete) or visited (double click).

Mouse: with the ruler, ellipse or freehand tool, a left drag draws (from one end to the
other / across the ellipse's bounding box / around the region, closed on release);
with the probe, a left click. Middle drag still pans.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QKeySequence, QPainterPath, QPen, QPolygonF, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QGraphicsEllipseItem, QGraphicsLineItem, QGraphicsPathItem,
                               QHBoxLayout,
                               QHeaderView, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ctscreen.imaging import annotations as ann
from ctscreen.viewer.slice_view import SliceView

#: tool -> (label, shortcut, tooltip)
TOOLS = {
    "navigate": ("Navigate", "V", "Click moves the crosshair, drag pans (V)"),
    "ruler": ("Ruler", "D", "Distance in mm: drag from one point to the other (D)"),
    "ellipse": ("Ellipse ROI", "E", "Area and HU mean / SD / min / max: drag across the ellipse (E)"),
    "freehand": ("Freehand ROI", "F", "Area and HU mean / SD / min / max: drag around the region (F)"),
    "probe": ("Probe", "P", "HU and position of one point: click (P)"),
}
_COLOUR = QColor(255, 150, 40)
_COLUMNS = ("#", "Tool", "Plane", "Slice", "Value")


def _pen() -> QPen:
    pen = QPen(_COLOUR)
    pen.setWidthF(1.5)
    pen.setCosmetic(True)  # the same width on screen at any zoom
    return pen


class MeasurementPanel(QWidget):
    """The list of measurements with a Delete button."""

    def __init__(self) -> None:
        super().__init__()
        self.table = QTableWidget(0, len(_COLUMNS))
        self.table.setObjectName("measurementTable")
        self.table.setHorizontalHeaderLabels(_COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(len(_COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected measurements (Delete)")
        self.clear_button = QPushButton("Delete all")
        buttons = QHBoxLayout()
        buttons.addWidget(self.delete_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)


class MeasureTools(QObject):
    """The tools on a set of panes, their drawings and the list panel.

    Parameters
    ----------
    views : dict
        plane name -> :class:`SliceView` of that plane.
    link : PaneLink, optional
        Told to stop moving the crosshair on clicks while the probe is the tool.

    Signals
    -------
    changed()
        A measurement was added or deleted.
    toolChanged(str)
    """

    changed = Signal()
    toolChanged = Signal(str)

    def __init__(self, views: dict[str, SliceView], link: Any = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.views = views
        self.link = link
        self.store = ann.Annotations()
        self.tool = "navigate"
        self._graphics: dict[int, tuple[str, list[Any]]] = {}
        self._draft: list[Any] = []
        self._path: list[tuple[float, float]] = []
        self.panel = MeasurementPanel()
        self.panel.delete_button.clicked.connect(self.delete_selected)
        self.panel.clear_button.clicked.connect(self.clear)
        self.panel.table.cellDoubleClicked.connect(self._visit_row)
        shortcut = QShortcut(QKeySequence(Qt.Key.Key_Delete), self.panel.table)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        shortcut.activated.connect(self.delete_selected)
        for plane, view in views.items():
            view.clicked.connect(partial(self._on_click, plane))
            view.sliceChanged.connect(partial(self._show_plane, plane))

    # -- tool ---------------------------------------------------------------------------------------
    def set_tool(self, name: str) -> None:
        if name not in TOOLS:
            raise ValueError(f"unknown tool {name!r}")
        self.tool = name
        for view in self.views.values():
            view.drag_handler = self._on_drag if name in ("ruler", "ellipse", "freehand") else None
        if self.link is not None:
            self.link.clicks_move_point = name == "navigate"
        self.toolChanged.emit(name)

    # -- adding (the mouse and tests come here) -----------------------------------------------------
    def add_ruler(self, plane: str, start_mm: tuple[float, float], end_mm: tuple[float, float]) -> int:
        view = self.views[plane]
        return self._add(ann.ruler(plane, view.slice_index, start_mm, end_mm))

    def add_ellipse(self, plane: str, centre_mm: tuple[float, float], radii_mm: tuple[float, float]) -> int:
        view = self.views[plane]
        return self._add(ann.ellipse_roi(view.volume, plane, view.slice_index, centre_mm, radii_mm))

    def add_freehand(self, plane: str, points_mm: list[tuple[float, float]]) -> int:
        view = self.views[plane]
        return self._add(ann.freehand_roi(view.volume, plane, view.slice_index, points_mm))

    def add_probe(self, plane: str, point_mm: tuple[float, float]) -> int | None:
        view = self.views[plane]
        a = ann.probe(view.volume, plane, view.slice_index, point_mm)
        return None if a is None else self._add(a)

    def _add(self, a: ann.Annotation) -> int:
        key = self.store.add(a)
        self._draw(key, a)
        self._fill_panel()
        self.changed.emit()
        return key

    # -- removing -----------------------------------------------------------------------------------
    def remove(self, key: int) -> None:
        self.store.remove(key)
        plane, items = self._graphics.pop(key, ("", []))
        for item in items:
            view = self.views.get(plane)
            if view is not None:
                view.view_box.removeItem(item)
        self._fill_panel()
        self.changed.emit()

    def delete_selected(self) -> None:
        rows = sorted({i.row() for i in self.panel.table.selectedIndexes()})
        keys = [int(self.panel.table.item(r, 0).data(Qt.ItemDataRole.UserRole)) for r in rows]
        for key in keys:
            self.remove(key)

    def clear(self) -> None:
        for key in list(self.store.items):
            self.remove(key)

    # -- mouse --------------------------------------------------------------------------------------
    def _on_click(self, plane: str, pos_mm: QPointF) -> None:
        if self.tool == "probe" and self.views[plane].volume is not None:
            self.add_probe(plane, (pos_mm.x(), pos_mm.y()))

    def _on_drag(self, view: SliceView, start: QPointF, pos: QPointF, is_start: bool, is_finish: bool) -> bool:
        if view.volume is None or self.tool not in ("ruler", "ellipse", "freehand"):
            return False
        for item in self._draft:
            view.view_box.removeItem(item)
        self._draft = []
        plane = view.plane
        if self.tool == "freehand":
            if is_start:
                self._path = [(start.x(), start.y())]
            self._path.append((pos.x(), pos.y()))
            if is_finish:
                if len(self._path) >= 3 and ann.polygon_area_mm2(self._path) > 0:
                    self._add(ann.freehand_roi(view.volume, plane, view.slice_index, self._path))
                self._path = []
            else:
                self._draft = self._items_for(view, ann.FreehandRoi(
                    plane, view.slice_index, tuple(self._path), ann.RoiStats(ann.polygon_area_mm2(self._path), 0,
                                                                             *(float("nan"),) * 4)))
            return True
        if self.tool == "ruler":
            a = ann.ruler(plane, view.slice_index, (start.x(), start.y()), (pos.x(), pos.y()))
        else:
            centre = ((start.x() + pos.x()) / 2, (start.y() + pos.y()) / 2)
            radii = (abs(pos.x() - start.x()) / 2, abs(pos.y() - start.y()) / 2)
            if is_finish:
                a = ann.ellipse_roi(view.volume, plane, view.slice_index, centre, radii)
            else:  # while dragging, the outline only
                a = ann.EllipseRoi(plane, view.slice_index, centre, radii,
                                   ann.RoiStats(3.141592653589793 * radii[0] * radii[1], 0, *(float("nan"),) * 4))
        if is_finish:
            if (self.tool == "ruler" and a.length_mm > 0) or (self.tool == "ellipse" and min(a.radii_mm) > 0):
                self._add(a)
        else:
            self._draft = self._items_for(view, a)
        return True

    # -- drawing ------------------------------------------------------------------------------------
    def _items_for(self, view: SliceView, a: ann.Annotation, label: str = "") -> list[Any]:
        items: list[Any] = []
        if isinstance(a, ann.Ruler):
            line = QGraphicsLineItem(*a.start_mm, *a.end_mm)
            line.setPen(_pen())
            items.append(line)
            anchor = a.end_mm
        elif isinstance(a, ann.EllipseRoi):
            (cx, cy), (rx, ry) = a.centre_mm, a.radii_mm
            ellipse = QGraphicsEllipseItem(QRectF(cx - rx, cy - ry, 2 * rx, 2 * ry))
            ellipse.setPen(_pen())
            items.append(ellipse)
            anchor = (cx + rx, cy + ry)
        elif isinstance(a, ann.FreehandRoi):
            path = QPainterPath()
            path.addPolygon(QPolygonF([QPointF(x, y) for x, y in a.points_mm]))
            path.closeSubpath()
            outline = QGraphicsPathItem(path)
            outline.setPen(_pen())
            items.append(outline)
            anchor = max(a.points_mm, key=lambda p: p[0] + p[1])
        else:
            target = pg.TargetItem(pos=a.point_mm, size=9, movable=False, pen=pg.mkPen(_COLOUR, width=1.5))
            items.append(target)
            anchor = a.point_mm
        text = pg.TextItem((label + " " if label else "") + a.summary, color=_COLOUR, anchor=(0, 0),
                           fill=pg.mkBrush(0, 0, 0, 150))
        text.setPos(*anchor)
        items.append(text)
        for item in items:
            view.add_layer(item, 600)
        return items

    def _draw(self, key: int, a: ann.Annotation) -> None:
        view = self.views[a.plane]
        items = self._items_for(view, a, f"#{key}")
        self._graphics[key] = (a.plane, items)
        for item in items:
            item.setVisible(view.slice_index == a.index)

    def _show_plane(self, plane: str, index: int) -> None:
        for key, (p, items) in self._graphics.items():
            if p == plane:
                visible = self.store.items[key].index == index
                for item in items:
                    item.setVisible(visible)

    # -- panel ----------------------------------------------------------------------------------------
    def _fill_panel(self) -> None:
        table = self.panel.table
        table.setRowCount(0)
        for key, a in self.store.items.items():
            r = table.rowCount()
            table.insertRow(r)
            cells = (f"{key}", TOOLS[a.kind][0], a.plane,
                     f"{a.index + 1}", a.summary)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c == 0:
                    item.setData(Qt.ItemDataRole.UserRole, key)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        table.horizontalHeader().setSectionResizeMode(len(_COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)

    def _visit_row(self, row: int, _col: int) -> None:
        key = int(self.panel.table.item(row, 0).data(Qt.ItemDataRole.UserRole))
        a = self.store.items.get(key)
        if a is not None:
            self.views[a.plane].set_slice(a.index)
