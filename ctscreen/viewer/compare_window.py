"""File → Compare with…: a prior study beside the current one, synchronised by anatomy.

Research use, not for diagnosis.

Both studies are shown side by side (prior left, current right) with their lesion
overlays. Scrolling either pane moves the other to the slice that shows the same
anatomy, by the lung-mask registration of :func:`ctscreen.imaging.compare.compare`
(not by slice number); window/level is linked. Below, the change table per lung
and zone (lesion mL, % involved, severity, GGO/consolidation) with the direction
of change.

Either study may be a finished :class:`AnalysisResult`, a loaded :class:`Volume`
(analysed here), or a folder (a DICOM folder, loaded and analysed, or a
``ctscreen analyze --nifti`` output folder, re-opened). The work is the plain
generator :func:`prepare_comparison`, run by :class:`GeneratorWorker` off the GUI
thread, as the main window's analysis is.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QCheckBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QMainWindow, QMessageBox,
                               QProgressBar, QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import Cancelled
from ctscreen.viewer.overlays import OverlayLayers
from ctscreen.viewer.slice_view import SliceView
from ctscreen.viewer.worker import GeneratorWorker

#: Columns of the change table.
COLUMNS = ("Region", "Lesion (mL)", "Δ mL", "Involved (%)", "Δ points", "Severity", "GGO (mL)",
           "Consolidation (mL)", "Change")
_DIRECTION_COLOURS = {"worse": "#e06060", "better": "#50b070", "unchanged": "#a0a0a0"}


def _is_result(obj: Any) -> bool:
    return hasattr(obj, "lesion") and hasattr(obj, "measurements") and hasattr(obj, "volume")


def prepare_comparison(prior: Any, current: Any, model: str | None = None, device: str = "auto",
                       cancel: threading.Event | None = None) -> Generator[tuple[str, float], None, Any]:
    """Load and analyse whichever study needs it, then compare; yields ``(message, fraction)``.

    Parameters
    ----------
    prior, current : AnalysisResult, Volume, or path
        A path is a DICOM folder (its default series is analysed) or an analysis folder.
    model, device : str
        Used for a study that must be analysed (Grad-CAM off).
    cancel : threading.Event, optional

    Returns
    -------
    Comparison
    """
    results: list[Any] = []
    for n, (label, src) in enumerate((("prior", prior), ("current", current))):
        base = n / 2
        if not _is_result(src) and isinstance(src, (str, Path)):
            from ctscreen.io.nifti import is_analysis_folder, read_analysis_folder

            folder = Path(src)
            if is_analysis_folder(folder):
                yield f"{label}: reading the analysis in {folder.name}", base
                src = read_analysis_folder(folder)
            else:
                from ctscreen.io.study import pick_series
                from ctscreen.io.dicom import load_series

                yield f"{label}: loading {folder.name}", base
                src = load_series(pick_series(folder, None))
        if cancel is not None and cancel.is_set():
            raise Cancelled("comparison cancelled")
        if not _is_result(src):
            from ctscreen.inference.pipeline import STAGE_LABELS, AnalyzeOptions, analyze

            gen = analyze(src, AnalyzeOptions(model=model or None, device=device or "auto", cam="none",
                                              cancel=cancel))
            try:
                while True:
                    try:
                        p = next(gen)
                    except StopIteration as stop:
                        src = stop.value
                        break
                    yield f"{label}: {STAGE_LABELS.get(p.stage, p.stage)}", base + 0.5 * p.fraction
            finally:
                gen.close()
        results.append(src)
    yield "aligning the lungs", 1.0
    from ctscreen.imaging.compare import compare

    return compare(results[0], results[1])


def _fmt(v: float, digits: int = 1, sign: bool = False) -> str:
    if v is None or v != v:
        return "–"
    v = round(float(v), digits) + 0.0  # no "-0.0"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


class CompareWindow(QMainWindow):
    """Prior and current study side by side, synchronised by anatomy, with the change table.

    Signals
    -------
    comparisonReady(object)
        The :class:`~ctscreen.imaging.compare.Comparison` once shown.
    failed(str)
        Why the comparison could not be made (also shown in a message box unless ``quiet``).
    """

    comparisonReady = Signal(object)
    failed = Signal(str)
    closed = Signal()

    def __init__(self, current: Any = None, prior: Any = None, parent: QWidget | None = None, *,
                 model: str | None = None, device: str = "auto", quiet: bool = False) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"ctscreen — follow-up comparison — {RESEARCH_NOTICE}")
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
        self.comparison: Any = None
        self.quiet = quiet
        self._syncing = False
        self._worker: GeneratorWorker | None = None

        self.prior_view = SliceView(plane="axial")
        self.current_view = SliceView(plane="axial")
        self.prior_overlays = OverlayLayers(self.prior_view)
        self.current_overlays = OverlayLayers(self.current_view)
        self.prior_title = QLabel("Prior")
        self.current_title = QLabel("Current")
        for t in (self.prior_title, self.current_title):
            t.setStyleSheet("font-weight: bold; padding: 2px;")
        panes = QWidget()
        row = QHBoxLayout(panes)
        row.setContentsMargins(0, 0, 0, 0)
        for title, view in ((self.prior_title, self.prior_view), (self.current_title, self.current_view)):
            box = QWidget()
            col = QVBoxLayout(box)
            col.setContentsMargins(0, 0, 0, 0)
            col.setSpacing(2)
            col.addWidget(title)
            col.addWidget(view, 1)
            row.addWidget(box, 1)

        self.link_box = QCheckBox("Link slices by anatomy")
        self.link_box.setChecked(True)
        self.link_box.setToolTip("Scrolling one study shows the same anatomy in the other (lung-mask registration)")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(22)
        bottom = QWidget()
        col = QVBoxLayout(bottom)
        col.setContentsMargins(4, 4, 4, 4)
        top_row = QHBoxLayout()
        top_row.addWidget(self.summary, 1)
        top_row.addWidget(self.link_box)
        col.addLayout(top_row)
        col.addWidget(self.table, 1)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(panes)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([580, 370])  # the whole change table (9 rows) stays in view
        self.setCentralWidget(split)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setMaximumWidth(220)
        self.progress.hide()
        notice = QLabel(RESEARCH_NOTICE)
        notice.setStyleSheet("color: #ff9f40; font-weight: bold;")
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(notice)
        self.resize(1400, 950)

        menu = self.menuBar().addMenu("&File")
        self.save_action = menu.addAction("&Save comparison (JSON, CSV, PNG)…", self.save_comparison)
        self.save_action.setEnabled(False)
        menu.addAction("&Close", self.close)
        #: Replaced in tests: returns the chosen folder ("" = cancelled) and whether to overwrite.
        self.choose_folder = lambda: QFileDialog.getExistingDirectory(self, "Save the comparison into")
        self.ask_overwrite = lambda names: QMessageBox.question(
            self, "Overwrite?", f"{', '.join(names)} exist here. Overwrite?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No) == QMessageBox.StandardButton.Yes
        self._saver: GeneratorWorker | None = None

        self.current_view.sliceChanged.connect(self._current_moved)
        self.prior_view.sliceChanged.connect(self._prior_moved)
        self.current_view.windowChanged.connect(lambda w: self._link_window(self.prior_view, w))
        self.prior_view.windowChanged.connect(lambda w: self._link_window(self.current_view, w))

        if current is not None and prior is not None:
            self.start(prior, current, model=model, device=device)

    # -- the work -----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def start(self, prior: Any, current: Any, model: str | None = None, device: str = "auto") -> None:
        """Analyse what needs it and compare, off the GUI thread (or at once when both are results)."""
        if _is_result(prior) and _is_result(current):
            from ctscreen.imaging.compare import compare

            try:
                cmp = compare(prior, current)
            except ValueError as exc:
                self._fail(str(exc))
                return
            self.set_comparison(cmp)
            return
        if self._worker is not None:
            return
        worker = GeneratorWorker(prepare_comparison, prior, current, model=model, device=device, background=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self.set_comparison)
        worker.errored.connect(lambda exc: self._fail(str(exc)) if not isinstance(exc, Cancelled) else None)
        worker.finished.connect(lambda: self._worker_done(worker))
        self._worker = worker
        self.progress.setValue(0)
        self.progress.show()
        self.statusBar().showMessage("Preparing the comparison …")
        worker.start()

    def _on_progress(self, item: Any) -> None:
        message, fraction = item
        self.progress.setValue(int(1000 * max(0.0, min(1.0, float(fraction)))))
        self.statusBar().showMessage(str(message))

    def _worker_done(self, worker: GeneratorWorker) -> None:
        if self._worker is worker:
            self._worker = None
        self.progress.hide()
        worker.deleteLater()

    def _fail(self, message: str) -> None:
        text = f"Cannot compare the studies: {message}"
        self.statusBar().showMessage(text)
        self.failed.emit(text)
        if not self.quiet:
            QMessageBox.warning(self, "Comparison failed", text)

    def closeEvent(self, ev: Any) -> None:  # noqa: N802 - Qt override
        if self._worker is not None:
            self._worker.cancel()
        super().closeEvent(ev)
        self.closed.emit()

    # -- showing ------------------------------------------------------------------------------
    def set_comparison(self, cmp: Any) -> None:
        """Show ``cmp``: both studies with overlays, the change table, the registration summary."""
        self.comparison = cmp
        self.statusBar().clearMessage()
        for view, overlays, title, res, name in (
                (self.prior_view, self.prior_overlays, self.prior_title, cmp.prior, "PRIOR"),
                (self.current_view, self.current_overlays, self.current_title, cmp.current, "CURRENT")):
            vol = res.volume
            self._syncing = True
            try:
                view.set_volume(vol)
            finally:
                self._syncing = False
            overlays.set_result(res)
            title.setText(f"{name} — {vol.series_description or 'series'}, {vol.shape[0]} slices, "
                          f"{vol.spacing_mm[0]:g} mm")
        self._fill_table(cmp)
        self.save_action.setEnabled(True)
        reg = cmp.registration
        ox, oy, oz = reg.offset_mm
        both = cmp.row("both")
        warn = "".join(f'<br><span style="color:#e0a040;">⚠ {w}</span>' for w in cmp.warnings)
        self.summary.setText(
            f"<b>Lesions {_fmt(both.prior['lesion_ml'])} → {_fmt(both.current['lesion_ml'])} mL "
            f"({_fmt(both.change['lesion_ml'], sign=True)} mL, {both.direction})</b>, "
            f"involved {_fmt(both.prior['percent_involved'])} → {_fmt(both.current['percent_involved'])} %, "
            f"severity {both.prior['severity']:.0f} → {both.current['severity']:.0f} / 30.<br>"
            f"Aligned by the lung masks ({reg.method}): prior = current + ({ox:+.1f}, {oy:+.1f}, {oz:+.1f}) mm "
            f"(LPS); residual {_fmt(reg.residual_mm)} mm. Unchanged = within max(0.5 mL, 10 % of prior)."
            f"{warn}<br><span style='color:#ff9f40;'>{RESEARCH_NOTICE}</span>")
        # start at the current study's slice with the most lesion; the prior follows
        les = cmp.current.lesion.reshape(cmp.current.lesion.shape[0], -1)
        area = les.astype(bool).sum(axis=1)
        k = int(area.argmax()) if area.any() else cmp.current.lesion.shape[0] // 2
        self.current_view.set_slice(k)
        self._current_moved(k)
        self.comparisonReady.emit(cmp)

    def _fill_table(self, cmp: Any) -> None:
        self.table.setRowCount(len(cmp.rows))
        for r, row in enumerate(cmp.rows):
            p, c, d = row.prior, row.current, row.change
            cells = [
                (row.label, None),
                (f"{_fmt(p['lesion_ml'])} → {_fmt(c['lesion_ml'])}", c["lesion_ml"]),
                (_fmt(d["lesion_ml"], sign=True), d["lesion_ml"]),
                (f"{_fmt(p['percent_involved'])} → {_fmt(c['percent_involved'])}", c["percent_involved"]),
                (_fmt(d["percent_involved"], sign=True), d["percent_involved"]),
                (f"{p['severity']:.0f} → {c['severity']:.0f} ({d['severity']:+.0f})", d["severity"]),
                (f"{_fmt(p['ggo_ml'])} → {_fmt(c['ggo_ml'])}", d["ggo_ml"]),
                (f"{_fmt(p['consolidation_ml'])} → {_fmt(c['consolidation_ml'])}", d["consolidation_ml"]),
                (row.direction, None),
            ]
            for col, (text, value) in enumerate(cells):
                item = QTableWidgetItem(text)
                if value is not None:
                    item.setData(Qt.ItemDataRole.UserRole, float(value))
                if col > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == len(cells) - 1:
                    item.setForeground(QBrush(QColor(_DIRECTION_COLOURS.get(row.direction, "#a0a0a0"))))
                    item.setToolTip(f"by lesion volume; unchanged within ±{row.tolerance_ml:.2f} mL")
                if r < 3:
                    font = item.font()
                    font.setBold(True)
                    item.setFont(font)
                self.table.setItem(r, col, item)

    # -- synchronisation ------------------------------------------------------------------------
    def save_comparison(self, folder: str | None = None) -> bool:
        """Write comparison.json/.csv/.png (as ``ctscreen compare``) into a folder, off the GUI thread."""
        from ctscreen.io.export_compare import COMPARISON_NAMES, write_comparison

        if self.comparison is None or self._saver is not None:
            return False
        folder = folder or self.choose_folder()
        if not folder:
            return False
        existing = [n for n in COMPARISON_NAMES if (Path(folder) / n).exists()]
        if existing and not self.ask_overwrite(existing):
            self.statusBar().showMessage("Not saved; nothing was overwritten.", 8000)
            return False
        cmp = self.comparison

        def job(cancel: threading.Event) -> Generator[None, None, Any]:
            yield None
            return write_comparison(cmp, folder, force=bool(existing))

        saver = GeneratorWorker(job)
        saver.returned.connect(lambda written: self.statusBar().showMessage(
            f"Wrote {', '.join(p.name for p in written)} to {folder}", 10000))
        saver.errored.connect(lambda exc: self._fail(f"saving failed: {exc}"))
        saver.finished.connect(lambda: (setattr(self, "_saver", None), saver.deleteLater()))
        self._saver = saver
        saver.start()
        return True

    def _current_moved(self, k: int) -> None:
        if self._syncing or self.comparison is None or not self.link_box.isChecked():
            return
        self._syncing = True
        try:
            self.prior_view.set_slice(self.comparison.map_current_to_prior(int(k)))
        finally:
            self._syncing = False

    def _prior_moved(self, k: int) -> None:
        if self._syncing or self.comparison is None or not self.link_box.isChecked():
            return
        self._syncing = True
        try:
            self.current_view.set_slice(self.comparison.map_prior_to_current(int(k)))
        finally:
            self._syncing = False

    def _link_window(self, other: SliceView, window: Any) -> None:
        if self._syncing or other.volume is None:
            return
        self._syncing = True
        try:
            other.set_window(window)
        finally:
            self._syncing = False


def compare_with(main_window: Any) -> CompareWindow | None:
    """File → Compare with…: ask for the prior study's folder and open the comparison window.

    The current study is the main window's analysis result when it has one for the volume on
    screen, else that volume (analysed in the comparison window).
    """
    volume = getattr(main_window.slice_view, "volume", None)
    controller = getattr(main_window, "analysis", None)
    result = getattr(controller, "result", None)
    current = result if result is not None and volume is not None and result.volume is volume else volume
    if current is None:
        main_window.show_error("Compare with…", "Open the current study first, then choose the prior study to "
                                                "compare it with.")
        return None
    settings = getattr(main_window, "settings", None)
    start = getattr(settings, "last_folder", "") or str(Path.home())
    folder = QFileDialog.getExistingDirectory(main_window, "Compare with a prior study (DICOM folder)", start)
    if not folder:
        return None
    win = CompareWindow(current=current, prior=folder, parent=None, model=getattr(controller, "model", None),
                        device=getattr(controller, "device", "auto") or "auto")
    keep = main_window.__dict__.setdefault("_compare_windows", [])
    keep.append(win)  # a closed window lets go of its two studies
    win.closed.connect(lambda: keep.remove(win) if win in keep else None)
    win.show()
    return win
