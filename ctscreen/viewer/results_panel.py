"""The analysis results: study totals, one table row per lesion slice, lesion area along z.

Clicking a table row or the plot asks the window to show that slice
(``sliceRequested``); the plot's marker follows the slice on screen.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QSplitter, QTableWidget, QTableWidgetItem,
                               QTabWidget, QVBoxLayout, QWidget)

from ctscreen import RESEARCH_NOTICE
from ctscreen.viewer.overlays import CONSOLIDATION_RGB, GGO_RGB
from ctscreen.viewer.screening_panel import ScreeningPanel, verdict_html

COLUMNS = ("Slice", "z mm", "GGO mm²", "Cons. mm²", "Lung", "Zone", "% lung")
_COLUMN_TIPS = ("Slice number (1 = first); ⚠ = Grad-CAM mostly outside the lung", "Slice position along z",
                "Ground-glass opacity area", "Consolidation area", "Which lung holds the lesion pixels",
                "Zone(s) of the lesion pixels", "Lesion share of this slice's lung area")
_ZONE_KEYS = (("RU", "right_upper"), ("RM", "right_middle"), ("RL", "right_lower"),
              ("LU", "left_upper"), ("LM", "left_middle"), ("LL", "left_lower"))


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


class _NumberItem(QTableWidgetItem):
    """A cell that sorts by its number, not its text."""

    def __init__(self, value: float | None, text: str) -> None:
        super().__init__(text)
        self._value = -math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else value
        self.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _NumberItem):
            return self._value < other._value
        return super().__lt__(other)


def totals_html(result: Any) -> str:
    """The study totals as a small HTML block (shown in the dock, checked by tests)."""
    m = result.measurements
    sev = {short: getattr(m, f"severity_{key}") for short, key in _ZONE_KEYS}
    pct = {short: getattr(m, f"percent_{key}") for short, key in _ZONE_KEYS}

    def zone_cell(short: str) -> str:
        return f"<td align='center'><b>{sev[short]}</b><br><small>{_num(pct[short])} %</small></td>"

    device = escape(result.device or "?")
    model = escape(f"{result.model_name} {result.model_version}".strip())
    flagged = result.cam_flagged_slices()
    lines = [
        "<table cellspacing='0' cellpadding='2'>",
        f"<tr><td>Lesion volume</td><td><b>{_num(m.lesion_volume_ml)} mL</b> &nbsp;"
        f"(<span style='color: rgb{GGO_RGB}'>GGO {_num(m.ggo_volume_ml)} mL</span>, "
        f"<span style='color: rgb{CONSOLIDATION_RGB}'>consolidation {_num(m.consolidation_volume_ml)} mL</span>)"
        "</td></tr>",
        f"<tr><td>Lung volume</td><td>{_num(m.lung_volume_ml, 0)} mL &nbsp;(right {_num(m.right_lung_volume_ml, 0)},"
        f" left {_num(m.left_lung_volume_ml, 0)})</td></tr>",
        f"<tr><td>Involved</td><td><b>{_num(m.percent_involved)} %</b> &nbsp;(right {_num(m.percent_right)} %,"
        f" left {_num(m.percent_left)} %)</td></tr>",
        f"<tr><td>Lesions</td><td>{m.lesion_count} (pieces ≥ {m.min_lesion_volume_ml:g} mL)</td></tr>",
        f"<tr><td>Severity</td><td><b>{m.severity_total} / 30</b></td></tr>",
        "</table>",
        "<table cellspacing='0' cellpadding='3' border='1' style='border-color:#555'>"
        "<tr><th></th><th>upper</th><th>middle</th><th>lower</th></tr>"
        "<tr><th>Right</th>" + "".join(zone_cell(z) for z in ("RU", "RM", "RL")) + "</tr>"
        "<tr><th>Left</th>" + "".join(zone_cell(z) for z in ("LU", "LM", "LL")) + "</tr></table>",
        f"<small>Severity per zone 0–5 (share of the zone involved). Model {model} on {device}"
        + (f"; Grad-CAM at {escape(result.cam_layer)}" if result.cam_layer else "")
        + (f" ({escape(result.cam_method)})" if result.cam_layer and getattr(result, "cam_method", "") else "")
        + ".</small>",
    ]
    if flagged:
        shown = ", ".join(str(k + 1) for k in flagged[:12]) + (" …" if len(flagged) > 12 else "")
        lines.append(f"<br><span style='color:#ffb43c'>⚠ Grad-CAM activation mostly outside the lung on "
                     f"slice(s) {shown}</span>")
    for warning in result.warnings:
        if "Grad-CAM" not in warning:
            lines.append(f"<br><span style='color:#ffb43c'>⚠ {escape(warning)}</span>")
    lines.append(f"<br><span style='color:#ff6b5e'><b>{escape(RESEARCH_NOTICE)}</b></span>")
    return "".join(lines)


class ResultsPanel(QWidget):
    """Totals, per-slice table and the area-along-z plot of one analysis result; the screening verdict.

    The verdict line at the top (category, classifier verdict, notice) is always visible; the
    *Lesions* tab holds the measurements, the *Screening* tab the :class:`ScreeningPanel`.
    """

    sliceRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.result: Any = None
        self.totals = QLabel("Run <b>Analyze</b> (F5) to segment ground-glass opacities and "
                             "consolidation.<br><small>" + escape(RESEARCH_NOTICE) + "</small>")
        self.totals.setObjectName("resultsTotals")
        self.totals.setWordWrap(True)
        self.totals.setTextFormat(Qt.TextFormat.RichText)
        self.totals.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.totals.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        for c, tip in enumerate(_COLUMN_TIPS):
            self.table.horizontalHeaderItem(c).setToolTip(tip)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setAlternatingRowColors(True)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.horizontalHeader().setSortIndicator(0, Qt.SortOrder.AscendingOrder)  # head to feet
        self.table.setToolTip("Click a row to show that slice; click a header to sort")
        self.table.cellClicked.connect(self._on_cell_clicked)
        self.table.currentCellChanged.connect(lambda row, *_: self._on_cell_clicked(row, 0))

        self.plot = pg.PlotWidget(background=None)
        self.plot.setMinimumHeight(120)
        self.plot.setLabel("bottom", "slice position z", units="mm")
        self.plot.setLabel("left", "lesion area (mm²)")
        self.plot.getPlotItem().getAxis("left").enableAutoSIPrefix(False)
        self.plot.getPlotItem().getAxis("bottom").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMenuEnabled(False)
        self.plot.getPlotItem().setMouseEnabled(x=False, y=False)
        self.plot.getPlotItem().hideButtons()
        self.plot.addLegend(offset=(-4, 4), labelTextSize="8pt")
        self.ggo_curve = self.plot.plot([], [], pen=pg.mkPen(GGO_RGB, width=1.5), name="GGO")
        self.cons_curve = self.plot.plot([], [], pen=pg.mkPen(CONSOLIDATION_RGB, width=1.5), name="Consolidation")
        self.marker = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen((120, 200, 255), width=1.5))
        self.marker.setToolTip("Current slice (drag or click the plot to move)")
        self.marker.hide()
        self.plot.addItem(self.marker)
        self.marker.sigDragged.connect(lambda line: self._request_z(line.value()))
        self.plot.scene().sigMouseClicked.connect(self._on_plot_clicked)
        self.plot.setToolTip("Lesion area per slice; click to show a slice")

        splitter = self.splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.totals)
        splitter.addWidget(self.table)
        splitter.addWidget(self.plot)
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setStretchFactor(2, 1)
        self.screening = ScreeningPanel()
        self.screening.sliceRequested.connect(self.sliceRequested)
        self.verdict = QLabel()
        self.verdict.setObjectName("screeningVerdict")
        self.verdict.setWordWrap(True)
        self.verdict.setTextFormat(Qt.TextFormat.RichText)
        self.verdict.setToolTip("The screening verdict; the Screening tab says why")
        self.verdict.linkActivated.connect(lambda _link: self.tabs.setCurrentWidget(self.screening))
        self.verdict.hide()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("resultsTabs")
        self.tabs.addTab(splitter, "Lesions")
        self.tabs.addTab(self.screening, "Screening")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.verdict)
        layout.addWidget(self.tabs)
        self._z = np.zeros(0)
        self._items_by_slice: dict[int, QTableWidgetItem] = {}
        self._default_text = self.totals.text()

    # -- content -------------------------------------------------------------------------------
    def set_result(self, result: Any) -> None:
        self.result = result
        self.screening.set_result(result)
        line = verdict_html(getattr(result, "screening", None)) if result is not None else ""
        self.verdict.setText(line + (" &nbsp;<a href='#screening'>why?</a>" if line else ""))
        self.verdict.setVisible(bool(line))
        self._items_by_slice = {}
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if result is None:
            self.totals.setText(self._default_text)
            self.ggo_curve.setData([], [])
            self.cons_curve.setData([], [])
            self.marker.hide()
            self._z = np.zeros(0)
            return
        self.totals.setText(totals_html(result))
        rows = list(result.measurements.rows)
        flagged = set(result.cam_flagged_slices())
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            mark = " ⚠" if row.index in flagged else ""
            cells = [
                _NumberItem(row.index + 1, f"{row.index + 1}{mark}"),
                _NumberItem(row.z_mm, _num(row.z_mm)),
                _NumberItem(row.ggo_area_mm2, _num(row.ggo_area_mm2)),
                _NumberItem(row.consolidation_area_mm2, _num(row.consolidation_area_mm2)),
                QTableWidgetItem(row.lungs),
                QTableWidgetItem(row.zone),
                _NumberItem(row.percent_of_slice_lung, _num(row.percent_of_slice_lung)),
            ]
            cells[0].setData(Qt.ItemDataRole.UserRole, row.index)
            if mark:
                share = result.cam_outside_fraction.get(row.index, float("nan"))
                cells[0].setToolTip(f"Grad-CAM: {share:.0%} of the activation lies outside the lung on this slice")
            self._items_by_slice[row.index] = cells[0]
            for c, item in enumerate(cells):
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)

        volume = result.volume
        n = volume.shape[0]
        z = np.asarray(volume.z_mm if len(volume.z_mm) == n else np.arange(n) * volume.spacing_mm[0], float)
        ggo, cons = np.zeros(n), np.zeros(n)
        for row in rows:
            ggo[row.index] = row.ggo_area_mm2
            cons[row.index] = row.consolidation_area_mm2
        order = np.argsort(z)
        self._z = z
        self.ggo_curve.setData(z[order], ggo[order])
        self.cons_curve.setData(z[order], cons[order])
        top = float(max(ggo.max(initial=0.0), cons.max(initial=0.0)))
        self.plot.setYRange(0.0, top * 1.08 if top > 0 else 1.0, padding=0)
        self.plot.setXRange(float(z.min()), float(z.max()), padding=0.02)
        self.marker.show()
        # Give the totals the room they need, the table and the plot share the rest.
        total = sum(self.splitter.sizes()) or 600
        head = min(self.totals.sizeHint().height() + 8, total // 2)
        self.splitter.setSizes([head, (total - head) // 2, total - head - (total - head) // 2])

    def set_current_slice(self, k: int) -> None:
        if self.result is not None:
            self.screening.set_current_slice(k)
        if self.result is None or not len(self._z) or k >= len(self._z):
            return
        self.marker.blockSignals(True)
        self.marker.setValue(float(self._z[k]))
        self.marker.blockSignals(False)
        item = self._items_by_slice.get(k)
        self.table.blockSignals(True)
        if item is not None:
            self.table.selectRow(item.row())  # row() follows the user's sorting
            self.table.scrollToItem(item)
        else:
            self.table.clearSelection()
        self.table.blockSignals(False)

    # -- interaction -------------------------------------------------------------------------------------
    def _on_cell_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0) if row >= 0 else None
        if item is not None:
            self.sliceRequested.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    def _on_plot_clicked(self, event: Any) -> None:
        if self.result is None or not len(self._z):
            return
        vb = self.plot.getPlotItem().vb
        if not vb.sceneBoundingRect().contains(event.scenePos()):
            return
        self._request_z(vb.mapSceneToView(event.scenePos()).x())

    def _request_z(self, z_mm: float) -> None:
        if len(self._z):
            self.sliceRequested.emit(int(np.argmin(np.abs(self._z - z_mm))))
