"""The series of the open folder, with a thumbnail of each one's middle slice."""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ctscreen.viewer.study_loader import series_slice_count, series_uid

THUMB_PX = 96


def series_title(info: Any) -> str:
    desc = str(getattr(info, "series_description", "") or getattr(info, "description", "") or "").strip()
    number = getattr(info, "series_number", None)
    title = desc or "(no description)"
    return f"{number}: {title}" if number not in (None, "") else title


def series_subtitle(info: Any) -> str:
    modality = str(getattr(info, "modality", "") or "?")
    n = series_slice_count(info)
    rows, cols = getattr(info, "rows", None), getattr(info, "columns", None)
    size = f" · {cols}×{rows}" if rows and cols else ""
    view_only = " · view only" if getattr(info, "analysable_reason", "") else ""
    return f"{modality} · {n} slice{'s' if n != 1 else ''}{size}{view_only}"


def series_tooltip(info: Any) -> str:
    """The UID, why the series cannot be analysed (if so) and its data warnings, one per line."""
    lines = [series_uid(info)]
    reason = getattr(info, "analysable_reason", "")
    if reason:
        lines.append(f"View only: {reason}")
    lines += [f"Warning: {w}" for w in getattr(info, "warnings", ()) or ()]
    return "\n".join(lines)


def thumbnail_pixmap(grey: np.ndarray, size: int = THUMB_PX) -> QPixmap:
    """A square pixmap of a uint8 (y, x) image, aspect kept, on black."""
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    h, w = grey.shape
    image = QImage(grey.data, w, h, grey.strides[0], QImage.Format.Format_Grayscale8).copy()
    scaled = QPixmap.fromImage(image).scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                                             Qt.TransformationMode.SmoothTransformation)
    canvas = QPixmap(size, size)
    canvas.fill(QColor("black"))
    from PySide6.QtGui import QPainter
    painter = QPainter(canvas)
    painter.drawPixmap((size - scaled.width()) // 2, (size - scaled.height()) // 2, scaled)
    painter.end()
    return canvas


def iter_thumbnails(series: Sequence[Any], cancel: threading.Event
                    ) -> Generator[tuple[str, np.ndarray], None, int]:
    """Yield ``(series_uid, uint8 thumbnail)`` per series, from a file half-way through its list.

    A series whose file cannot be decoded gets no thumbnail (the placeholder stays);
    a thumbnail is a nicety, never an error.
    """
    from ctscreen.io import dicom
    from ctscreen.viewer.display import Window, WindowLut

    lung = WindowLut(Window.preset("lung"))
    done = 0
    for info in series:
        if cancel.is_set():
            break
        files = list(getattr(info, "files", ()) or ())
        if not files:
            continue
        try:
            volume = dicom.load_series(sorted(files)[len(files) // 2], workers=1, cancel=cancel)
            hu = np.asarray(volume.hu[volume.shape[0] // 2])
        except Exception:  # noqa: BLE001
            continue
        if str(getattr(info, "modality", "")).upper() == "CT" and hu.dtype == np.int16:
            grey = lung.to_uint8(hu)
        else:  # not HU: stretch the 1st-99th percentile
            lo, hi = np.percentile(hu, (1, 99))
            grey = np.clip((hu - lo) * (255.0 / max(float(hi - lo), 1e-6)), 0, 255).astype(np.uint8)
        done += 1
        yield series_uid(info), grey
    return done


class SeriesBrowser(QWidget):
    """A list of series; activating one (double-click or Enter) emits ``seriesActivated``."""

    seriesActivated = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = QLabel("")
        self.header.setWordWrap(True)
        self.list = QListWidget()
        self.list.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.list.setSpacing(2)
        self.list.setWordWrap(True)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setToolTip("Double-click or press Enter to open a series")
        self.list.itemActivated.connect(self._on_activated)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.header)
        layout.addWidget(self.list)
        self._series: list[Any] = []

    @property
    def series(self) -> list[Any]:
        return list(self._series)

    def set_series(self, series: Sequence[Any], current_uid: str = "", ignored_count: int = 0) -> None:
        self._series = list(series)
        self.list.clear()
        placeholder = QPixmap(THUMB_PX, THUMB_PX)
        placeholder.fill(QColor(40, 40, 40))
        for info in self._series:
            item = QListWidgetItem(QIcon(placeholder), f"{series_title(info)}\n{series_subtitle(info)}")
            item.setData(Qt.ItemDataRole.UserRole, series_uid(info))
            item.setToolTip(series_tooltip(info))
            self.list.addItem(item)
        extra = f", {ignored_count} other file(s) ignored" if ignored_count else ""
        self.header.setText(f"{len(self._series)} series in this folder{extra}")
        self.set_current(current_uid)

    def set_current(self, uid: str) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            current = item.data(Qt.ItemDataRole.UserRole) == uid
            font = item.font()
            font.setBold(current)
            item.setFont(font)
            if current:
                self.list.setCurrentItem(item)

    def set_thumbnail(self, uid: str, grey: np.ndarray) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == uid:
                item.setIcon(QIcon(thumbnail_pixmap(grey)))

    def _on_activated(self, item: QListWidgetItem) -> None:
        uid = item.data(Qt.ItemDataRole.UserRole)
        for info in self._series:
            if series_uid(info) == uid:
                self.seriesActivated.emit(info)
                return
