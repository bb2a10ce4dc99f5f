"""The Screening panel of the Results dock: the RSNA category, why, the classifier's answer, and where it looked.

Shows :attr:`AnalysisResult.screening` (:class:`ctscreen.imaging.screening.Screening`):

* the reporting category (Simpson et al. 2020) with the sentences naming the criteria
  that decided it, and the research notice beside it;
* a table of every criterion: value, threshold, met; the deciding ones in bold;
* the classifier's three study probabilities as bars, and the slices that weighed most
  in its study score (buttons: click to show the slice);
* for the slice on screen, the segmentation's Grad-CAM (from the result) beside the
  classifier's Grad-CAM, which is computed on demand off the GUI thread
  (:class:`ClassifierCamOnDemand`, one slice at a time, debounced, cached), the way
  :mod:`ctscreen.viewer.cam_on_demand` computes other layers' maps.

torch is imported only inside the worker's generator (:func:`compute_classifier_cam`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator
from html import escape
from typing import Any

import cv2
import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QColor, QFont, QImage, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QGridLayout, QHBoxLayout, QHeaderView, QLabel, QProgressBar,
                               QPushButton, QScrollArea, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import Cancelled
from ctscreen.imaging.lesions import focus_box
from ctscreen.viewer.on_demand import OnDemandSlices

#: Colour of each category's name (a reading aid, not an alarm).
CATEGORY_COLOURS = {"typical": "#ff8a65", "indeterminate": "#ffd54f", "atypical": "#4fc3f7",
                    "negative": "#81c784"}
#: The classifier's classes, in display order, with their bar colours.
CLASSES = (("covid19", "COVID-19 pneumonia", "#ff8a65"), ("other_pneumonia", "Other pneumonia", "#4fc3f7"),
           ("no_pneumonia", "No pneumonia", "#81c784"))
CRITERIA_COLUMNS = ("Criterion", "Value", "Met", "Threshold")
THUMB_PX = 230
DEBOUNCE_MS = 200
MAX_MAPS = 48
LUNG_WINDOW = (1500.0, -600.0)


def verdict_html(screening: Any) -> str:
    """One line for the top of the Results dock: category, classifier verdict, notice."""
    if screening is None:
        return ""
    colour = CATEGORY_COLOURS.get(screening.category, "#dddddd")
    text = (f"<b>Screening:</b> <b style='color:{colour}'>{escape(screening.category_label)}</b>"
            " <small>(RSNA)</small>")
    if screening.probabilities:
        label = dict((k, lab) for k, lab, _ in CLASSES).get(screening.verdict, screening.verdict)
        text += (f" · classifier: <b>{escape(label)}</b> "
                 f"{float(screening.probabilities.get(screening.verdict, 0.0)):.2f}")
    return text + f" · <span style='color:#ff6b5e'>{escape(RESEARCH_NOTICE)}</span>"


def criteria_rows(screening: Any) -> list[tuple[str, str, str, str, bool, str]]:
    """``(label, value, threshold, met, decisive, detail)`` per criterion, as shown in the table."""
    rows = []
    for c in screening.criteria:
        met = "–" if c.met is None else ("yes" if c.met else "no")
        rows.append((c.label, c.value_text(), c.threshold, met, bool(c.decisive), c.detail))
    return rows


# -------------------------------------------------------------------------------- Grad-CAM pictures

def _to_rgb(hu_slice: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    width, level = window
    lo = level - width / 2.0
    grey = np.clip((np.asarray(hu_slice, np.float32) - lo) * (255.0 / width), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


def cam_picture(hu_slice: np.ndarray, cam: np.ndarray | None, box: tuple[int, ...] = (),
                size_px: int = THUMB_PX, opacity: float = 0.5, frame: tuple[int, ...] | None = None) -> np.ndarray:
    """The slice in the lung window with ``cam`` (``[0, 1]``) blended in turbo colours; RGB uint8.

    ``frame`` ``(y0, y1, x0, x1)``: a square outlined in white (the classifier's lesion view).
    Cropped to the thorax ``box`` ``(y0, y1, x0, x1)`` when given, then scaled to ``size_px`` wide.
    """
    rgb = _to_rgb(hu_slice)
    if cam is not None:
        c = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
        colour = cv2.applyColorMap((c * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
        alpha = (opacity * np.clip(c / 0.2, 0.0, 1.0))[..., None]  # faint activation fades out
        rgb = (rgb * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    if frame is not None and len(frame) == 4:
        fy0, fy1, fx0, fx1 = (int(v) for v in frame)
        t = max(1, int(round(max(rgb.shape[:2]) / 200)))
        rgb = np.ascontiguousarray(rgb)
        cv2.rectangle(rgb, (fx0, fy0), (fx1 - 1, fy1 - 1), (255, 255, 255), t)
    if len(box) == 4:
        y0, y1, x0, x1 = (int(v) for v in box)
        if y1 > y0 and x1 > x0:
            rgb = rgb[y0:y1, x0:x1]
    h, w = rgb.shape[:2]
    out_h = max(1, int(round(h * size_px / max(w, 1))))
    return np.ascontiguousarray(cv2.resize(rgb, (size_px, out_h), interpolation=cv2.INTER_AREA))


def _pixmap(rgb: np.ndarray) -> QPixmap:
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


# ------------------------------------------------------------------------ classifier Grad-CAM worker

@dataclasses.dataclass(frozen=True)
class ClassifierCamJob:
    result: Any
    model: str
    device: str
    index: int


_CLASSIFIERS: dict[tuple[str, str], tuple[Any, threading.Lock]] = {}
_CLASSIFIERS_LOCK = threading.Lock()


def cached_classifier(model: str, device: str) -> tuple[Any, threading.Lock]:
    """The loaded classifier for ``(model, device)`` and its lock (loads it the first time; call off the GUI thread)."""
    key = (str(model or ""), str(device or "auto"))
    with _CLASSIFIERS_LOCK:
        entry = _CLASSIFIERS.get(key)
        if entry is None:
            from ctscreen.inference.classifier import load_classifier

            entry = (load_classifier(model or None, device=device or "auto"), threading.Lock())
            _CLASSIFIERS[key] = entry
    return entry


def compute_classifier_cam(job: ClassifierCamJob, cancel: threading.Event
                           ) -> Generator[str, None, tuple[ClassifierCamJob, np.ndarray]]:
    """The generator the worker runs: load (or reuse) the classifier, then its Grad-CAM of one slice."""
    yield "model"
    clf, lock = cached_classifier(job.model, job.device)
    if cancel.is_set():
        raise Cancelled("classifier Grad-CAM cancelled")
    yield "gradcam"
    from ctscreen.inference.classifier import classifier_cam

    r = job.result
    box = tuple(int(v) for v in getattr(r, "thorax_box", ()) or ())
    with lock:
        lesion = getattr(r, "lesion", None)
        cam = classifier_cam(clf, np.asarray(r.volume.hu[job.index]), np.asarray(r.lung[job.index]),
                             box=box if len(box) == 4 else None,
                             lesion_slice=np.asarray(lesion[job.index]) if lesion is not None else None)
    return job, np.ascontiguousarray(cam, dtype=np.float16)


class ClassifierCamOnDemand(OnDemandSlices):
    """The classifier's Grad-CAM of the slice on screen, computed in a background worker and cached.

    Signals
    -------
    mapReady(int)
        The map of slice ``index`` is now in :meth:`map_for`.
    failed(str)
        A one-line reason; nothing more is tried for this result.
    """

    mapReady = Signal(int)
    failed = Signal(str)

    def __init__(self, parent: QObject | None = None,
                 compute: Callable[..., Generator[Any, None, Any]] = compute_classifier_cam) -> None:
        super().__init__(compute, DEBOUNCE_MS, MAX_MAPS, parent)
        self.model = ""
        self.device = "auto"
        self.index = -1
        self.active = True
        self.error = ""
        self._maps: OrderedDict[int, np.ndarray]  # slice -> map

    def set_result(self, result: Any, device: str = "auto") -> None:
        self._forget()
        self.result = result
        s = getattr(result, "screening", None) if result is not None else None
        self.model = str(getattr(s, "model_name", "") or "") if s is not None else ""
        self.device = device or "auto"
        self.error = ""

    def set_active(self, active: bool) -> None:
        """Inactive (the panel hidden), nothing is scheduled; a map being computed still lands in the cache."""
        self.active = bool(active)
        if not self.active:
            self._timer.stop()

    @property
    def available(self) -> bool:
        """A classifier ran for this result (so its Grad-CAM can be computed)."""
        return self.result is not None and bool(self.model) and not self.error

    def map_for(self, index: int) -> np.ndarray | None:
        return self._maps.get(index)

    def slice_changed(self, index: int) -> None:
        self.index = int(index)
        if self.available and self.active and index not in self._maps:
            self._timer.start()
        else:
            self._timer.stop()

    @Slot()
    def request_current(self) -> None:
        k = self.index
        if (not self.available or not self.active or k < 0 or k in self._maps or self._worker is not None
                or k >= self.result.volume.shape[0]):
            return
        self._start(ClassifierCamJob(self.result, self.model, self.device, k))

    @Slot(object)
    def _on_returned(self, value: Any) -> None:
        job, cam = value
        if self._ignored(job=job):
            return
        self._remember(job.index, cam)
        self.mapReady.emit(job.index)

    @Slot(object)
    def _on_errored(self, exc: BaseException) -> None:
        if self._ignored(exc):
            return
        self.error = self.reason(exc)
        self.failed.emit(f"Classifier Grad-CAM could not be computed: {self.error}")


# ----------------------------------------------------------------------------------------- the panel

class ScreeningPanel(QWidget):
    """Category, deciding criteria, probabilities, top slices and the two Grad-CAMs of the slice on screen."""

    sliceRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None,
                 compute: Callable[..., Generator[Any, None, Any]] = compute_classifier_cam) -> None:
        super().__init__(parent)
        self.setObjectName("screeningPanel")
        self.result: Any = None
        self.index = 0

        self.header = QLabel()
        self.header.setObjectName("screeningHeader")
        self.header.setWordWrap(True)
        self.header.setTextFormat(Qt.TextFormat.RichText)
        self.header.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.table = QTableWidget(0, len(CRITERIA_COLUMNS))
        self.table.setObjectName("screeningCriteria")
        self.table.setHorizontalHeaderLabels(list(CRITERIA_COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setWordWrap(True)
        self.table.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        head = self.table.horizontalHeader()
        head.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        head.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        head.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        head.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
        head.sectionResized.connect(lambda *_: self._fit_table())
        self.table.setToolTip("Every criterion of the RSNA category, measured on the segmentation; "
                              "bold rows decided the category. Hover a row for the figures behind it.")

        self.bars: dict[str, QProgressBar] = {}
        probs = QWidget()
        grid = QGridLayout(probs)
        grid.setContentsMargins(0, 0, 0, 0)
        for row, (key, label, colour) in enumerate(CLASSES):
            bar = QProgressBar()
            bar.setObjectName(f"prob_{key}")
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setStyleSheet(f"QProgressBar::chunk {{ background-color: {colour}; }}"
                              "QProgressBar { text-align: center; color: #111; max-height: 16px; }")
            grid.addWidget(QLabel(label), row, 0)
            grid.addWidget(bar, row, 1)
            self.bars[key] = bar
        self.prob_note = QLabel()
        self.prob_note.setWordWrap(True)
        self.prob_box = probs

        self.top_label = QLabel("Slices that weighed most in the classifier's score:")
        self.top_row = QHBoxLayout()
        self.top_row.setContentsMargins(0, 0, 0, 0)
        top = QWidget()
        top.setLayout(self.top_row)
        self.top_buttons: list[QPushButton] = []

        self.seg_cam = QLabel()
        self.clf_cam = QLabel()
        for lab in (self.seg_cam, self.clf_cam):
            lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lab.setMinimumSize(120, 120)
        self.seg_caption = QLabel("Segmentation Grad-CAM")
        self.clf_caption = QLabel("Classifier Grad-CAM")
        for cap in (self.seg_caption, self.clf_caption):
            cap.setAlignment(Qt.AlignmentFlag.AlignCenter)
            cap.setWordWrap(True)
        cams = QGridLayout()
        cams.addWidget(self.seg_caption, 0, 0)
        cams.addWidget(self.clf_caption, 0, 1)
        cams.addWidget(self.seg_cam, 1, 0)
        cams.addWidget(self.clf_cam, 1, 1)
        cam_box = QWidget()
        cam_box.setLayout(cams)

        self.notice = QLabel(f"<b style='color:#ff6b5e'>{escape(RESEARCH_NOTICE)}</b> The category is computed "
                             "by stated rules from an automatic segmentation; the probabilities come from a "
                             "classifier trained on public data.")
        self.notice.setWordWrap(True)

        inner = QWidget()
        layout = QVBoxLayout(inner)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.header)
        layout.addWidget(self.table)
        layout.addWidget(self.prob_box)
        layout.addWidget(self.prob_note)
        layout.addWidget(self.top_label)
        layout.addWidget(top)
        layout.addWidget(cam_box)
        layout.addWidget(self.notice)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(inner)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)

        self.cam = ClassifierCamOnDemand(self, compute=compute)
        self.cam.mapReady.connect(self._on_map_ready)
        self.cam.failed.connect(lambda msg: self.clf_caption.setText(f"Classifier Grad-CAM: {escape(msg)}"))
        self.set_result(None)

    # -- content -------------------------------------------------------------------------------------
    def set_result(self, result: Any, device: str = "auto") -> None:
        self.result = result
        s = getattr(result, "screening", None) if result is not None else None
        self.cam.set_result(result if s is not None else None, device)
        self._fill_header(result, s)
        self._fill_table(s)
        self._fill_probabilities(result, s)
        self._fill_top_slices(s)
        self._update_cams()

    def _fill_header(self, result: Any, s: Any) -> None:
        if result is None:
            self.header.setText("Run <b>Analyze</b> (F5) for the screening verdict: the RSNA reporting category "
                                "and the classifier's probabilities.")
            return
        if s is None:
            reason = next((w for w in getattr(result, "warnings", ()) if "screening" in w.lower()), "")
            self.header.setText("No screening verdict for this analysis." + (f"<br><small>{escape(reason)}</small>"
                                                                            if reason else ""))
            return
        colour = CATEGORY_COLOURS.get(s.category, "#dddddd")
        reasons = "".join(f"<li>{escape(r)}</li>" for r in s.reasons)
        decided = ", ".join(escape(c.label) for c in s.criteria if c.decisive)
        self.header.setText(
            f"<span style='font-size:15pt'><b style='color:{colour}'>{escape(s.category_label)}</b></span>"
            f" &nbsp;<small>RSNA reporting category (Simpson et al. 2020)</small>"
            f"<br><small>Decided by: <b>{decided or '–'}</b></small><ul style='margin:2px'>{reasons}</ul>"
            f"<span style='color:#ff6b5e'><b>{escape(s.notice)}</b></span>")

    def _fill_table(self, s: Any) -> None:
        self.table.setRowCount(0)
        if s is None:
            return
        rows = criteria_rows(s)
        self.table.setRowCount(len(rows))
        bold = QFont(self.table.font())
        bold.setBold(True)
        for r, (label, value, threshold, met, decisive, detail) in enumerate(rows):
            cells = [QTableWidgetItem(("◆ " if decisive else "") + label), QTableWidgetItem(value),
                     QTableWidgetItem(met), QTableWidgetItem(threshold)]
            cells[1].setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            cells[2].setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            if met == "yes":
                cells[2].setForeground(QColor("#81c784"))
            elif met == "no":
                cells[2].setForeground(QColor("#e57373"))
            for c, item in enumerate(cells):
                if decisive:
                    item.setFont(bold)
                item.setToolTip(detail or threshold)
                self.table.setItem(r, c, item)
        self._fit_table()

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        QTimer.singleShot(0, self._fit_table)  # after the columns took their new widths

    def _fit_table(self) -> None:
        """Rows as tall as their wrapped text; the table as tall as its rows (the panel scrolls, not the table)."""
        self.table.resizeRowsToContents()
        height = self.table.horizontalHeader().height() + 2 * self.table.frameWidth()
        height += sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        self.table.setFixedHeight(max(height, 40))

    def _fill_probabilities(self, result: Any, s: Any) -> None:
        probs = dict(getattr(s, "probabilities", {}) or {}) if s is not None else {}
        self.prob_box.setVisible(bool(probs))
        for key, bar in self.bars.items():
            p = float(probs.get(key, 0.0))
            bar.setValue(int(round(1000 * p)))
            bar.setFormat(f"{p:.2f}")
        if s is None:
            self.prob_note.setText("")
        elif probs:
            model = escape(f"{s.model_name} {s.model_version}".strip())
            self.prob_note.setText(f"<small>Classifier {model}: study probabilities (each lesion slice scored "
                                   "by a view framed on its largest lesion, pooled over the lesion slices; "
                                   "'no pneumonia' follows the lesion burden).</small>")
        else:
            reason = next((w for w in getattr(result, "warnings", ()) if "classifier" in w.lower()), "")
            self.prob_note.setText("<small>No classifier probabilities"
                                   + (f": {escape(reason)}" if reason else ".") + "</small>")

    def _fill_top_slices(self, s: Any) -> None:
        for b in self.top_buttons:
            self.top_row.removeWidget(b)
            b.deleteLater()
        self.top_buttons = []
        top = tuple(getattr(s, "top_slices", ()) or ()) if s is not None else ()
        self.top_label.setVisible(bool(top))
        for k in top:
            b = QPushButton(f"{int(k) + 1}")
            b.setObjectName(f"topSlice_{int(k)}")
            b.setToolTip(f"Show slice {int(k) + 1}")
            b.setMaximumWidth(56)
            b.clicked.connect(lambda _=False, k=int(k): self.sliceRequested.emit(k))
            self.top_row.addWidget(b)
            self.top_buttons.append(b)
        self.top_row.addStretch(1)

    # -- the two Grad-CAMs of the slice on screen ---------------------------------------------------------
    def set_current_slice(self, k: int) -> None:
        """The slice on screen changed. Hidden (another tab, dock closed), the panel only remembers it:
        no picture is drawn and no classifier map computed, so scrolling costs nothing here."""
        self.index = int(k)
        if not self.isVisible():
            return
        self.cam.slice_changed(self.index)
        self._update_cams()

    def showEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        self.cam.set_active(True)
        self.cam.slice_changed(self.index)
        self._update_cams()

    def hideEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        super().hideEvent(event)
        self.cam.set_active(False)

    def _on_map_ready(self, k: int) -> None:
        if k == self.index:
            self._update_cams()

    def _update_cams(self) -> None:
        r = self.result
        has_screening = r is not None and getattr(r, "screening", None) is not None
        for w in (self.seg_cam, self.clf_cam, self.seg_caption, self.clf_caption):
            w.setVisible(has_screening)
        if not has_screening or not (0 <= self.index < r.volume.shape[0]):
            return
        k = self.index
        box = tuple(getattr(r, "thorax_box", ()) or ())
        hu = np.asarray(r.volume.hu[k])
        seg = r.cam.get(k) if r.cam else None
        self.seg_cam.setPixmap(_pixmap(cam_picture(hu, seg, box)))
        layer = f" ({r.cam_layer})" if r.cam_layer else ""
        self.seg_caption.setText(f"Segmentation Grad-CAM{layer}, slice {k + 1}"
                                 + ("" if seg is not None else ": no map on this slice"))
        if not self.cam.available:
            self.clf_cam.setPixmap(_pixmap(cam_picture(hu, None, box)))
            if not self.cam.error:
                self.clf_caption.setText("Classifier Grad-CAM: no classifier ran")
            return
        cm = self.cam.map_for(k)
        frame = None
        if getattr(r, "lesion", None) is not None and len(box) == 4:  # the lesion view the score used
            les = np.asarray(r.lesion[k]) > 0
            if getattr(r, "lung", None) is not None:
                les &= np.asarray(r.lung[k]) > 0
            frame = focus_box(les, tuple(int(v) for v in box))
        self.clf_cam.setPixmap(_pixmap(cam_picture(hu, cm, box, frame=frame)))
        self.clf_caption.setText(f"Classifier Grad-CAM (COVID-19), slice {k + 1}"
                                 + (", lesion view (framed)" if frame is not None else ", whole slice")
                                 + ("" if cm is not None else ": computing…"))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the classifier Grad-CAM worker (a window's shutdown hooks pass ``timeout_s``)."""
        self.cam.shutdown(timeout_s)
