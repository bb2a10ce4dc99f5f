"""The slice view: one plane (axial by default) in a ViewBox whose units are millimetres.

Mouse and keys follow the radiology reading-room convention:

* wheel, Up/Down, Page Up/Down (10 slices), Home/End: change slice
* Ctrl+wheel: zoom around the cursor; left or middle drag: pan
* right drag: window (horizontal: width, vertical: level)

The image is placed with ``ImageItem.setRect`` in millimetres (column spacing
by row spacing) so pixels keep their true aspect, and the ViewBox's y axis is
inverted so row 0 is at the top, as ``Volume`` stores it. A view shows one
plane (:mod:`ctscreen.imaging.planes`): axial (the default, the fast path of a
plain ``hu[k]``), coronal or sagittal. Corner annotations
are ``TextItem``s parented to the ViewBox itself (not to its scaled child
group), so they stay put in screen pixels while the image zooms and pans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QKeyEvent
from PySide6.QtWidgets import QHBoxLayout, QSlider, QWidget

from ctscreen.imaging import planes
from ctscreen.imaging.volume import Volume
from ctscreen.viewer.display import Window, WindowLut

_TEXT_COLOUR = (230, 230, 230)
_DIM_COLOUR = (170, 200, 230)
_MARGIN_PX = 6.0
_NARROW_PX = 360.0


@dataclass(frozen=True)
class CursorInfo:
    """What lies under the mouse: its voxel (axial slice, row, column, whatever the plane), HU and LPS mm."""

    slice_index: int
    row: int
    col: int
    hu: float
    patient_xyz_mm: tuple[float, float, float]

    @property
    def text(self) -> str:
        x, y, z = self.patient_xyz_mm
        return f"HU {self.hu:.0f}   ({x:.1f}, {y:.1f}, {z:.1f}) mm   [{self.col}, {self.row}]"


def orientation_letter(vector: np.ndarray) -> str:
    """Patient direction (DICOM LPS) a screen direction mostly points to: L/R, P/A, S/I."""
    return planes.orientation_letter(vector)


class ScaleBar(pg.ScaleBar):
    """A scale bar (bottom right) whose length is a round number of mm, about a fifth of the view."""

    def __init__(self) -> None:
        super().__init__(10.0, width=4, brush=(230, 230, 230), pen=None, suffix="mm", offset=(-14, -48))

    def updateBar(self) -> None:  # noqa: N802 - pyqtgraph override
        view = self.parentItem()
        if view is None:
            return
        (x0, x1), _ = view.viewRange()
        target = max((x1 - x0) / 5.0, 1e-3)
        exp = 10.0 ** np.floor(np.log10(target))
        size = max((m * exp for m in (1.0, 2.0, 5.0, 10.0) if m * exp <= target), default=exp)
        if size != self.size:
            self.size = size
            self.text.setText(f"{size:g} mm")
        super().updateBar()


class SliceViewBox(pg.ViewBox):
    """ViewBox with the reading-room mouse conventions; forwards slice/window gestures."""

    def __init__(self, view: "SliceView") -> None:
        super().__init__(lockAspect=True, invertY=True, enableMenu=False, defaultPadding=0.0)
        self._view = view
        self._wheel_accum = 0.0
        self.setMouseMode(pg.ViewBox.PanMode)

    def wheelEvent(self, ev, axis=None) -> None:  # noqa: N802 - Qt override
        if ev.modifiers() & Qt.KeyboardModifier.ControlModifier:
            super().wheelEvent(ev, axis)
            return
        # Trackpads send many small deltas: accumulate to whole notches (120).
        self._wheel_accum += ev.delta()
        steps = int(self._wheel_accum / 120)
        if steps:
            self._wheel_accum -= steps * 120
            self._view.scroll_by(-steps)  # wheel towards the user = next slice
        ev.accept()

    def mouseDragEvent(self, ev, axis=None) -> None:  # noqa: N802 - Qt override
        handler = self._view.drag_handler
        if ev.button() == Qt.MouseButton.LeftButton and handler is not None:
            start, pos = self.mapSceneToView(ev.buttonDownScenePos()), self.mapSceneToView(ev.scenePos())
            if handler(self._view, start, pos, bool(ev.isStart()), bool(ev.isFinish())):
                ev.accept()
                return
        if ev.button() == Qt.MouseButton.RightButton:
            ev.accept()
            delta = ev.screenPos() - ev.lastScreenPos()
            self._view.drag_window(delta.x(), delta.y())
            return
        super().mouseDragEvent(ev, axis)  # left and middle: pan

    def mouseClickEvent(self, ev) -> None:  # noqa: N802 - no context menu, keep keyboard focus
        ev.accept()
        self._view.graphics.setFocus()
        if ev.button() == Qt.MouseButton.LeftButton and self._view.volume is not None:
            self._view.clicked.emit(self.mapSceneToView(ev.scenePos()))


class _Graphics(pg.GraphicsLayoutWidget):
    """The graphics widget; slice keys are handled here so they work whenever it has focus.

    ``painted`` is emitted after each repaint, so latency can be measured up to the screen.
    """

    painted = Signal()

    def __init__(self, view: "SliceView") -> None:
        super().__init__()
        self._view = view
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def paintEvent(self, ev) -> None:  # noqa: N802 - Qt override
        super().paintEvent(ev)
        self.painted.emit()

    def keyPressEvent(self, ev: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if self._view.handle_key(ev.key()):
            ev.accept()
            return
        super().keyPressEvent(ev)


class SliceView(QWidget):
    """Shows one slice of a :class:`Volume` at a time, windowed, with PACS-style annotations.

    Signals
    -------
    sliceChanged(int)
        The index of the slice now shown.
    windowChanged(object)
        The :class:`Window` now applied.
    cursorMoved(object)
        A :class:`CursorInfo`, or ``None`` when the mouse leaves the image.
    clicked(QPointF)
        A left click (not a drag) on the image, in view millimetres.

    ``plane`` is ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``; the slice index
    counts along that plane's axis. ``drag_handler``, when set, is offered every left
    drag first: ``handler(view, start_mm, pos_mm, is_start, is_finish) -> bool`` (True:
    used, e.g. by a measuring tool; False: pan as usual).
    """

    sliceChanged = Signal(int)
    windowChanged = Signal(object)
    cursorMoved = Signal(object)
    clicked = Signal(object)

    def __init__(self, parent: QWidget | None = None, window: Window | None = None, plane: str = "axial") -> None:
        super().__init__(parent)
        if plane not in planes.PLANES:
            raise ValueError(f"unknown plane {plane!r}")
        self.plane = plane
        self.drag_handler = None
        self._volume: Volume | None = None
        self._index = 0
        self._lut = WindowLut(window or Window.preset("lung"))
        self._shape_yx: tuple[int, int] | None = None
        self._spacing_yx = (1.0, 1.0)
        self._preview: np.ndarray | None = None
        self._last_scene_pos: QPointF | None = None
        self._cursor: CursorInfo | None = None

        self.graphics = _Graphics(self)
        self.graphics.setBackground("k")
        self.graphics.ci.setContentsMargins(0, 0, 0, 0)
        self.view_box = SliceViewBox(self)
        self.graphics.ci.addItem(self.view_box, row=0, col=0)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.image_item.setAutoDownsample(False)
        self.view_box.addItem(self.image_item)

        self.slider = QSlider(Qt.Orientation.Vertical)
        self.slider.setInvertedAppearance(True)  # slice 1 at the top, like the scroll direction
        self.slider.setInvertedControls(True)
        self.slider.setEnabled(False)
        self.slider.setVisible(False)
        self.slider.setToolTip("Slice (wheel, Up/Down, Page Up/Down, Home/End)")
        self.slider.valueChanged.connect(self.set_slice)

        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.slider)

        self._make_annotations()
        self.scale_bar = ScaleBar()
        self.scale_bar.setParentItem(self.view_box)
        self.scale_bar.setZValue(1000)
        self.scale_bar.hide()
        self.view_box.sigResized.connect(self._place_annotations)
        self.graphics.scene().sigMouseMoved.connect(self._on_mouse_moved)
        self._update_annotations()

    # -- annotations ------------------------------------------------------------------
    def _make_annotations(self) -> None:
        def text(anchor, colour=_TEXT_COLOUR, bold=False) -> pg.TextItem:
            item = pg.TextItem("", color=colour, anchor=anchor)
            font = item.textItem.font()
            font.setPointSizeF(9.5)
            font.setBold(bold)
            item.setFont(font)
            item.setParentItem(self.view_box)
            item.setZValue(1000)
            return item

        self.text_top_left = text((0, 0))
        self.text_top_right = text((1, 0))
        self.text_bottom_left = text((0, 1))
        self.text_bottom_right = text((1, 1))
        self.orient_left = text((0, 0.5), _DIM_COLOUR, bold=True)
        self.orient_right = text((1, 0.5), _DIM_COLOUR, bold=True)
        self.orient_top = text((0.5, 0), _DIM_COLOUR, bold=True)
        self.orient_bottom = text((0.5, 1), _DIM_COLOUR, bold=True)
        self.empty_hint = text((0.5, 0.5), (150, 150, 150))
        self.empty_hint.setText("Drop a DICOM folder or files here\nor use File → Open folder… (Ctrl+O)")

    def _place_annotations(self, *_: object) -> None:
        rect = self.view_box.boundingRect()
        w, h, m = rect.width(), rect.height(), _MARGIN_PX
        self.text_top_left.setPos(m, m)
        self.text_top_right.setPos(w - m, m)
        self.text_bottom_left.setPos(m, h - m)
        self.text_bottom_right.setPos(w - m, h - m)
        self.orient_left.setPos(m, h / 2)
        self.orient_right.setPos(w - m, h / 2)
        # Top/bottom letters sit below/above the corner text blocks' first line.
        self.orient_top.setPos(w / 2, m)
        self.orient_bottom.setPos(w / 2, h - m)
        self.empty_hint.setPos(w / 2, h / 2)
        # A narrow pane (1x3 layout) has no room for two text columns: the study text gives way,
        # and the top / bottom letters move clear of the slice and window text.
        narrow = w < _NARROW_PX
        self.text_top_left.setVisible(not narrow)
        if narrow:
            self.orient_top.setPos(w / 2, m + 50)
            self.orient_bottom.setPos(w / 2, h - m - 22)

    def _update_annotations(self) -> None:
        vol = self._volume
        if vol is None:
            self.text_top_left.setText("" if self._preview is None else "Loading…")
            self.text_top_right.setText("")
            self.text_bottom_right.setText("")
            for item in (self.orient_left, self.orient_right, self.orient_top, self.orient_bottom):
                item.setText("")
        else:
            lines = [vol.patient_name, vol.patient_id, vol.series_description, vol.modality]
            # The axial pane names the study; the other planes of a layout need not repeat it.
            self.text_top_left.setText("\n".join(line for line in lines if line) if self.plane == "axial" else "")
            letters = planes.orientation_letters(vol.direction, self.plane)
            self.orient_right.setText(letters["right"])
            self.orient_left.setText(letters["left"])
            self.orient_bottom.setText(letters["bottom"])
            self.orient_top.setText(letters["top"])
            self._update_slice_text()
        self._update_window_text()
        self.scale_bar.setVisible(vol is not None)
        self.empty_hint.setVisible(vol is None and self._preview is None)
        self._place_annotations()

    def _update_slice_text(self) -> None:
        vol = self._volume
        if vol is None:
            return
        k, n = self._index, planes.plane_count(vol.shape, self.plane)
        if self.plane != "axial":
            lines = [f"{self.plane.capitalize()} {k + 1} / {n}"]
        else:
            lines = [f"Im {k + 1} / {n}"]
            if len(vol.z_mm) > k:
                lines.append(f"Z {vol.z_mm[k]:.1f} mm")
        z, y, x = vol.spacing_mm
        lines.append(f"{x:.2f} × {y:.2f} × {z:.2f} mm")
        self.text_top_right.setText("\n".join(lines))

    def _update_window_text(self) -> None:
        self.text_bottom_left.setText(self._lut.window.label)

    # -- public state ----------------------------------------------------------------------
    @property
    def volume(self) -> Volume | None:
        return self._volume

    @property
    def slice_index(self) -> int:
        return self._index

    @property
    def window(self) -> Window:
        return self._lut.window

    @property
    def cursor_info(self) -> CursorInfo | None:
        return self._cursor

    def plane_array(self, array: np.ndarray) -> np.ndarray:
        """The 2-D cut of a (z, y, x) array (e.g. a label map of the volume) that this view shows."""
        return planes.plane_slice(array, self.plane, self._index)

    def pixel_rect_mm(self) -> QRectF:
        """The image's extent in view coordinates (mm), for overlays that must line up."""
        if self._shape_yx is None:
            return QRectF(0, 0, 1, 1)
        ny, nx = self._shape_yx
        sy, sx = self._spacing_yx
        return QRectF(0.0, 0.0, nx * sx, ny * sy)

    def add_layer(self, item: pg.GraphicsObject, z: float) -> None:
        """Add an overlay item above the image, in the same millimetre coordinates."""
        item.setZValue(z)
        self.view_box.addItem(item, ignoreBounds=True)

    # -- loading ---------------------------------------------------------------------------------
    def clear(self) -> None:
        self._volume = None
        self._preview = None
        self._shape_yx = None
        self._cursor = None
        self.image_item.clear()
        self.slider.setEnabled(False)
        self.slider.setVisible(False)
        self._update_annotations()

    def show_preview(self, hu_slice: np.ndarray, spacing_yx_mm: tuple[float, float] = (1.0, 1.0)) -> None:
        """Show one slice while the rest of the series is still loading."""
        self._volume = None
        self._preview = np.asarray(hu_slice)
        self._set_image(self._preview, spacing_yx_mm)
        self.slider.setEnabled(False)
        self._update_annotations()

    def set_volume(self, volume: Volume, slice_index: int | None = None) -> None:
        """Show ``volume`` from slice ``slice_index`` (default: the first, as a PACS opens)."""
        self._volume = volume
        self._preview = None
        n = planes.plane_count(volume.shape, self.plane)
        if slice_index is None:  # axial: the first, as a PACS opens; coronal / sagittal: the middle
            slice_index = 0 if self.plane == "axial" else n // 2
        k = int(np.clip(slice_index, 0, n - 1))
        self._index = k
        spacing = planes.plane_spacing_mm(volume.spacing_mm, self.plane)
        self._set_image(planes.plane_slice(volume.hu, self.plane, k), spacing)
        self.slider.blockSignals(True)
        self.slider.setRange(0, n - 1)
        self.slider.setPageStep(10)
        self.slider.setValue(k)
        self.slider.blockSignals(False)
        self.slider.setEnabled(n > 1)
        self.slider.setVisible(n > 1)
        self._update_annotations()
        self._refresh_cursor()
        self.sliceChanged.emit(k)

    def _set_image(self, hu: np.ndarray, spacing_yx: tuple[float, float]) -> None:
        new_geometry = (hu.shape, spacing_yx) != (self._shape_yx, self._spacing_yx)
        self.image_item.setImage(self._lut.to_uint8(hu), autoLevels=False, levels=(0, 255))
        if new_geometry:
            self._shape_yx = tuple(hu.shape)  # type: ignore[assignment]
            self._spacing_yx = spacing_yx
            self.image_item.setRect(self.pixel_rect_mm())
            self.reset_view()

    # -- navigation -----------------------------------------------------------------------------
    def set_slice(self, index: int) -> None:
        """Show slice ``index`` (clamped to the volume)."""
        vol = self._volume
        if vol is None:
            return
        k = int(np.clip(index, 0, planes.plane_count(vol.shape, self.plane) - 1))
        if k == self._index and self.image_item.image is not None:
            return
        self._index = k
        self.image_item.setImage(self._lut.to_uint8(planes.plane_slice(vol.hu, self.plane, k)), autoLevels=False)
        if self.slider.value() != k:
            self.slider.blockSignals(True)
            self.slider.setValue(k)
            self.slider.blockSignals(False)
        self._update_slice_text()
        self._refresh_cursor()
        self.sliceChanged.emit(k)

    def scroll_by(self, steps: int) -> None:
        self.set_slice(self._index + int(steps))

    def handle_key(self, key: int) -> bool:
        """Slice keys; returns whether the key was used."""
        if self._volume is None:
            return False
        n = planes.plane_count(self._volume.shape, self.plane)
        moves = {
            Qt.Key.Key_Up: self._index - 1, Qt.Key.Key_Down: self._index + 1,
            Qt.Key.Key_PageUp: self._index - 10, Qt.Key.Key_PageDown: self._index + 10,
            Qt.Key.Key_Home: 0, Qt.Key.Key_End: n - 1,
        }
        if key not in moves:
            return False
        self.set_slice(moves[key])
        return True

    def reset_view(self) -> None:
        """Fit the whole slice in the view (R)."""
        self.view_box.autoRange(items=[self.image_item], padding=0.0)

    # -- window ------------------------------------------------------------------------------------
    def set_window(self, window: Window) -> None:
        if window == self._lut.window:
            return
        self._lut.window = window
        self._redraw()
        self._update_window_text()
        self.windowChanged.emit(window)

    def set_preset(self, name: str) -> None:
        self.set_window(Window.preset(name))

    def drag_window(self, dx_px: float, dy_px: float) -> None:
        """Right-drag: horizontal changes width, vertical changes level (down = higher level)."""
        w = self._lut.window
        hu_per_px = max(w.width, 50.0) / 250.0
        self.set_window(w.adjusted(dx_px * hu_per_px, dy_px * hu_per_px))

    def _redraw(self) -> None:
        if self._volume is not None:
            self.image_item.setImage(self._lut.to_uint8(self.plane_array(self._volume.hu)), autoLevels=False)
        elif self._preview is not None:
            self.image_item.setImage(self._lut.to_uint8(self._preview), autoLevels=False)

    # -- cursor read-out ------------------------------------------------------------------------
    def info_at(self, x_mm: float, y_mm: float) -> CursorInfo | None:
        """HU and patient position of the pixel at view point (x_mm, y_mm) of the current slice."""
        vol = self._volume
        if vol is None or self._shape_yx is None:
            return None
        sy, sx = self._spacing_yx
        row, col = int(np.floor(y_mm / sy)), int(np.floor(x_mm / sx))
        ny, nx = self._shape_yx
        if not (0 <= row < ny and 0 <= col < nx):
            return None
        k, y, x = planes.voxel_of(self.plane, self._index, row, col)
        return CursorInfo(k, y, x, float(vol.hu[k, y, x]), planes.patient_xyz_mm(vol, (k, y, x)))

    def _on_mouse_moved(self, scene_pos: QPointF) -> None:
        self._last_scene_pos = QPointF(scene_pos)
        self._refresh_cursor()

    def _refresh_cursor(self) -> None:
        info = None
        pos = self._last_scene_pos
        if pos is not None and self.view_box.sceneBoundingRect().contains(pos):
            p = self.view_box.mapSceneToView(pos)
            info = self.info_at(p.x(), p.y())
        if info != self._cursor:
            self._cursor = info
            self.text_bottom_right.setText(info.text.replace("   ", "\n", 1) if info else "")
            self.cursorMoved.emit(info)

    def leaveEvent(self, ev) -> None:  # noqa: N802 - Qt override
        self._last_scene_pos = None
        self._refresh_cursor()
        super().leaveEvent(ev)
