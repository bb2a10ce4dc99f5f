"""The lesion navigator: the analysis's 3-D lesions, largest first, one click (or N / Shift+N) away.

The lesions come from :func:`ctscreen.imaging.lesions.lesions_of` (no Qt), labelled in a
background worker (about a second for a study with thousands of specks: not on the GUI
thread); choosing one emits ``lesionActivated`` with it, and the layout centres every pane
on its centre voxel.
"""

from __future__ import annotations

from typing import Any

import threading
from collections.abc import Generator

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from ctscreen.errors import Cancelled
from ctscreen.imaging.lesions import Lesion, lesions_of
from ctscreen.viewer.worker import GeneratorWorker

COLUMNS = ("#", "Volume mL", "Lung", "Zone", "Type", "Slices")


def _find_lesions(result: Any, cancel: threading.Event) -> Generator[None, None, list[Lesion]]:
    yield None
    return lesions_of(result)


class LesionNavigator(QWidget):
    """A table of lesions; ``lesionActivated(Lesion)`` when one is chosen, ``lesionsReady`` once listed."""

    lesionActivated = Signal(object)
    lesionsReady = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.lesions: list[Lesion] = []
        self.current = -1
        self._result: Any = None
        self._workers: set[GeneratorWorker] = set()
        self.summary = QLabel("No analysis yet: Analyze (F5) lists the lesions here.")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("lesionTable")
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.cellClicked.connect(lambda row, _c: self.go_to(row))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)

    @property
    def busy(self) -> bool:
        return any(w.is_running for w in self._workers)

    def set_result(self, result: Any) -> None:
        """List ``result``'s lesions (None: clear); they are found in a background worker."""
        self._result = result
        for worker in self._workers:
            worker.cancel()
        self._show([], None)
        if result is None:
            return
        self.summary.setText("Finding the 3-D lesions…")
        worker = GeneratorWorker(_find_lesions, result, background=True)
        worker.returned.connect(lambda found, r=result: self._found(r, found))
        worker.errored.connect(lambda exc, r=result: self._failed(r, exc))
        worker.finished.connect(lambda: self._finished(worker))
        self._workers.add(worker)
        worker.start()

    def _found(self, result: Any, found: list[Lesion]) -> None:
        if result is self._result:
            self._show(found, result)
            self.lesionsReady.emit()

    def _failed(self, result: Any, exc: BaseException) -> None:
        if result is self._result and not isinstance(exc, Cancelled):
            self.summary.setText(f"The lesions could not be listed: {exc}")

    def _finished(self, worker: GeneratorWorker) -> None:
        self._workers.discard(worker)
        worker.deleteLater()

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop listing (window closing)."""
        for worker in list(self._workers):
            worker.cancel()
            worker.wait(timeout_s)
            worker.blockSignals(True)

    def _show(self, lesions: list[Lesion], result: Any) -> None:
        self.lesions = lesions
        self.current = -1
        table = self.table
        table.setRowCount(len(self.lesions))
        for r, les in enumerate(self.lesions):
            k0, k1 = les.bbox[0], les.bbox[1]
            cells = (str(les.number), f"{les.volume_ml:.2f}", les.lung, ", ".join(les.zones) or "–", les.kind,
                     f"{k0 + 1}–{k1}")
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if c in (0, 1, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        table.horizontalHeader().setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        if result is None:
            self.summary.setText("No analysis yet: Analyze (F5) lists the lesions here.")
        elif not self.lesions:
            self.summary.setText("No lesion found.")
        else:
            total = sum(les.volume_ml for les in self.lesions)
            self.summary.setText(f"{len(self.lesions)} lesion(s), {total:.1f} mL, largest first. "
                                 "Click one, or N / Shift+N, to centre every pane on it.")

    def go_to(self, row: int) -> None:
        if not self.lesions:
            return
        row = row % len(self.lesions)
        self.current = row
        self.table.selectRow(row)
        self.lesionActivated.emit(self.lesions[row])

    def next(self) -> None:
        self.go_to(self.current + 1)

    def previous(self) -> None:
        self.go_to(self.current - 1 if self.current >= 0 else -1)
