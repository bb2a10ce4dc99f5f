"""The window's central area: axial only, 1×3 (axial, coronal, sagittal) or 2×2 (+ the z-profile).

:class:`ReadingLayout` holds the main window's axial :class:`SliceView` and, built once,
coronal and sagittal views of the same volume and a :class:`ZProfilePane`. In the
axial-only layout the other panes are hidden and not fed, so the axial path costs what it
did before the layouts existed. :func:`render_layout` draws what is on screen (all panes,
overlays, orientation letters, scale bars) with the research notice under it, for PNG export.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QRect, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QVBoxLayout, QWidget

from ctscreen import RESEARCH_NOTICE
from ctscreen.viewer.mpr_view import PaneLink, ZProfilePane
from ctscreen.viewer.overlays import OverlayLayers
from ctscreen.viewer.slice_view import SliceView

#: Layout name -> menu text.
LAYOUTS = {"axial": "Axial only", "1x3": "1 × 3: axial, coronal, sagittal",
           "2x2": "2 × 2: axial, coronal, sagittal, z-profile"}
#: ``--layout`` aliases.
LAYOUT_ALIASES = {"mpr": "2x2", "1x1": "axial"}


def _framed(title: str, widget: QWidget) -> QFrame:
    frame = QFrame()
    frame.setObjectName(f"pane_{title.lower()}")
    layout = QVBoxLayout(frame)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(0)
    label = QLabel(title)
    label.setStyleSheet("color: #9cc8f0; background: #15181b; padding: 1px 6px; font-weight: bold;")
    layout.addWidget(label)
    layout.addWidget(widget, 1)
    frame.title_label = label  # type: ignore[attr-defined]
    return frame


class ReadingLayout(QWidget):
    """Axial, coronal, sagittal and z-profile panes in one of :data:`LAYOUTS`.

    Signals
    -------
    layoutChanged(str)
        The layout now shown.
    """

    layoutChanged = Signal(str)

    def __init__(self, axial: SliceView, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("readingLayout")
        self.axial = axial
        self.coronal = SliceView(window=axial.window, plane="coronal")
        self.sagittal = SliceView(window=axial.window, plane="sagittal")
        self.views = {"axial": axial, "coronal": self.coronal, "sagittal": self.sagittal}
        self.profile = ZProfilePane()
        self.link = PaneLink(self.views, self)
        self.overlays: dict[str, OverlayLayers] = {}
        self._volume: Any = None
        self._name = "axial"

        self.frames = {
            "axial": _framed("Axial", axial), "coronal": _framed("Coronal", self.coronal),
            "sagittal": _framed("Sagittal", self.sagittal), "profile": _framed("Lesion profile", self.profile),
        }
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setSpacing(3)
        self._place()

        axial.sliceChanged.connect(self.profile.set_current_slice)
        self.profile.sliceRequested.connect(self._jump_to_slice)

    # -- layout -------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    def set_layout(self, name: str) -> None:
        """Show layout ``name`` (a key of :data:`LAYOUTS` or an alias such as ``"mpr"``)."""
        name = LAYOUT_ALIASES.get(name, name)
        if name not in LAYOUTS:
            raise ValueError(f"unknown layout {name!r}; use one of {', '.join(LAYOUTS)} or mpr")
        if name == self._name:
            return
        self._name = name
        self._place()
        if name != "axial":
            self._feed_panes()
        self.link.set_active(name != "axial" and self._volume is not None)
        self.layoutChanged.emit(name)

    def _place(self) -> None:
        for frame in self.frames.values():
            self.grid.removeWidget(frame)
            frame.hide()
        for i in range(3):
            self.grid.setRowStretch(i, 0)
            self.grid.setColumnStretch(i, 0)
        positions = {"axial": {"axial": (0, 0)},
                     "1x3": {"axial": (0, 0), "coronal": (0, 1), "sagittal": (0, 2)},
                     "2x2": {"axial": (0, 0), "coronal": (0, 1), "sagittal": (1, 0), "profile": (1, 1)}}[self._name]
        for key, (row, col) in positions.items():
            self.grid.addWidget(self.frames[key], row, col)
            self.grid.setRowStretch(row, 1)
            self.grid.setColumnStretch(col, 1)
            self.frames[key].show()
        # The pane title is only worth its line when there are several panes.
        self.frames["axial"].title_label.setVisible(self._name != "axial")  # type: ignore[attr-defined]

    # -- data ---------------------------------------------------------------------------------------
    def attach_overlays(self, primary: OverlayLayers) -> None:
        """Give the coronal and sagittal panes overlay layers that follow ``primary`` (the axial one)."""
        self.overlays["axial"] = primary
        for plane in ("coronal", "sagittal"):
            layers = OverlayLayers(self.views[plane])
            primary.add_follower(layers)
            self.overlays[plane] = layers

    def set_volume(self, volume: Any) -> None:
        """The axial view shows ``volume`` (already set there); the other panes follow when shown."""
        self._volume = volume
        self.profile.set_volume(volume)
        self.link.reset(volume)
        if self._name != "axial":
            self._feed_panes()
            self.link.set_active(True)

    def set_result(self, result: Any) -> None:
        self.profile.set_result(result)

    def _feed_panes(self) -> None:
        volume = self._volume
        if volume is None:
            return
        for plane in ("coronal", "sagittal"):
            view = self.views[plane]
            if view.volume is not volume:
                view.set_window(self.axial.window)
                view.set_volume(volume)

    def _jump_to_slice(self, index: int) -> None:
        self.axial.set_slice(index)

    def centre_on(self, voxel: Any) -> None:
        """Show the planes through ``voxel`` (k, y, x) in every pane, panned onto it."""
        if self._volume is None:
            return
        if self._name == "axial":
            self.link.point = self.link._clamp(voxel)
            self.axial.set_slice(self.link.point[0])
            return
        self.link.set_point(voxel, centre=True)


def render_layout(layout: ReadingLayout, footer: str = "") -> QImage:
    """What the layout shows (every pane with its overlays and letters) above a band with the notice."""
    shot = layout.grab().toImage()
    band = 26
    image = QImage(shot.width(), shot.height() + band, QImage.Format.Format_RGB32)
    image.fill(QColor(10, 10, 10))
    painter = QPainter(image)
    try:
        painter.drawImage(0, 0, shot)
        font = QFont(painter.font())
        font.setPointSizeF(10)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(QColor(255, 107, 94))
        rect = QRect(8, shot.height(), shot.width() - 16, band)
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), RESEARCH_NOTICE)
        if footer:
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(rect, int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter), footer)
    finally:
        painter.end()
    return image
