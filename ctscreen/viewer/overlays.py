"""Analysis overlays on the slice view: lesions, lung outline and Grad-CAM.

Each is one ``ImageItem`` placed on the image's millimetre rectangle, updated
on every slice change from the result's arrays (a palette ``take`` per slice,
no item re-created). Lesions are drawn filled or as contours; the legend, the
Grad-CAM colour bar and the "activation mostly outside the lung" flag are
items of the same view.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg

from ctscreen.imaging.planes import cam_plane
from ctscreen.imaging.result import CONSOLIDATION, GGO
from ctscreen.viewer.slice_view import SliceView

#: RGB of the lesion classes and of the lung outline (distinct from the Grad-CAM map's blue-to-red).
GGO_RGB = (255, 214, 0)
CONSOLIDATION_RGB = (255, 40, 200)
LUNG_RGB = (70, 220, 120)
CAM_COLORMAP = "turbo"
#: Grad-CAM opacity ramps from 0 at CAM_FLOOR to full at CAM_FULL, so weak activation does
#: not tint the whole thorax and the anatomy stays readable under the map.
CAM_FLOOR = 0.1
CAM_FULL = 0.5


def boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` (labels) that touch a pixel with a different label (4-neighbourhood)."""
    m = np.asarray(mask)
    edge = np.zeros(m.shape, dtype=bool)
    edge[1:, :] |= m[1:, :] != m[:-1, :]
    edge[:-1, :] |= m[:-1, :] != m[1:, :]
    edge[:, 1:] |= m[:, 1:] != m[:, :-1]
    edge[:, :-1] |= m[:, :-1] != m[:, 1:]
    return edge & (m > 0)


def _palette(colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    pal = np.zeros((256, 4), dtype=np.uint8)
    for value, rgb in colours.items():
        pal[value, :3] = rgb
        pal[value, 3] = 255
    return pal


_LESION_PALETTE = _palette({GGO: GGO_RGB, CONSOLIDATION: CONSOLIDATION_RGB})
_LUNG_PALETTE = _palette({1: LUNG_RGB, 2: LUNG_RGB})


class _SagittalCache:
    """x-major copies of a result's label and Grad-CAM maps, so a sagittal cut is one contiguous read.

    ``array[:, :, x]`` touches one cache line per voxel (about 25 ms for lesion, lung and
    Grad-CAM of a 148 x 512 x 512 study on a loaded 2-core machine); the copies cost one
    transposition per result (labels) and per computed Grad-CAM map (kept by identity, so
    maps computed on demand are added one by one).
    """

    def __init__(self) -> None:
        self.labels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.cam: np.ndarray | None = None
        self.cam_src: dict[int, np.ndarray] = {}

    def clear(self) -> None:
        self.labels.clear()
        self.cam = None
        self.cam_src = {}

    def label_plane(self, name: str, array: np.ndarray, x: int) -> np.ndarray:
        entry = self.labels.get(name)
        if entry is None or entry[0] is not array:
            entry = (array, np.ascontiguousarray(np.moveaxis(np.asarray(array), 2, 0)))  # (x, z, y)
            self.labels[name] = entry
        return entry[1][x]

    def cam_plane(self, cam: dict, x: int, shape: tuple[int, int, int]) -> np.ndarray | None:
        if not cam:
            return None
        nz, ny, nx = shape
        if self.cam is None or self.cam.shape != (nx, nz, ny):
            self.cam = np.zeros((nx, nz, ny), dtype=np.float16)
            self.cam_src = {}
        for k, m in cam.items():
            if 0 <= k < nz and self.cam_src.get(k) is not m:
                self.cam[:, k, :] = np.asarray(m).T
                self.cam_src[k] = m
        for k in [k for k in self.cam_src if k not in cam]:
            self.cam[:, k, :] = 0
            del self.cam_src[k]
        return self.cam[x]


class OverlayLayers:
    """Lesion, lung-outline and Grad-CAM layers of one :class:`SliceView`.

    The layers follow ``view.sliceChanged`` in the view's plane (axial, coronal or
    sagittal); :meth:`set_result` gives them a result (or None to clear them).
    Layers added with :meth:`add_follower` (those of the other panes of a layout)
    get every setting and result this one gets.
    """

    def __init__(self, view: SliceView) -> None:
        self.view = view
        self.result: Any = None
        self._flagged: set[int] = set()
        self._placed: set[pg.ImageItem] = set()
        self.followers: list[OverlayLayers] = []
        self._sagittal = _SagittalCache()
        self.lesions_visible = True
        self.lung_visible = False
        self.cam_visible = False
        self.fill = True

        self.lung_item = pg.ImageItem(axisOrder="row-major")
        self.cam_item = pg.ImageItem(axisOrder="row-major")
        self.lesion_item = pg.ImageItem(axisOrder="row-major")
        cmap = pg.colormap.get(CAM_COLORMAP)
        lut = cmap.getLookupTable(0.0, 1.0, 256, alpha=True)
        ramp = np.clip((np.linspace(0.0, 1.0, 256) - CAM_FLOOR) / (CAM_FULL - CAM_FLOOR), 0.0, 1.0)
        lut[:, 3] = np.round(ramp * 255).astype(np.uint8)
        self.cam_item.setLookupTable(lut)
        self.cam_item.setLevels((0.0, 1.0))
        view.add_layer(self.lung_item, 10)
        view.add_layer(self.cam_item, 15)
        view.add_layer(self.lesion_item, 20)
        self.lesion_item.setOpacity(0.5)
        self.cam_item.setOpacity(0.45)

        # Legend (bottom left, above the window text) and the Grad-CAM flag (top centre).
        self.legend = pg.TextItem(anchor=(0, 1))
        self.legend.setHtml(
            f'<span style="color: rgb{GGO_RGB}; font-size: 9pt;">■</span>'
            f'<span style="color: #e6e6e6; font-size: 9pt;"> GGO&nbsp;&nbsp;</span>'
            f'<span style="color: rgb{CONSOLIDATION_RGB}; font-size: 9pt;">■</span>'
            f'<span style="color: #e6e6e6; font-size: 9pt;"> Consolidation</span>')
        self.cam_flag = pg.TextItem(anchor=(0.5, 0), color=(255, 190, 60))
        font = self.cam_flag.textItem.font()
        font.setBold(True)
        self.cam_flag.setFont(font)
        for item in (self.legend, self.cam_flag):
            item.setParentItem(view.view_box)
            item.setZValue(1001)
            item.hide()

        # Colour scale of the Grad-CAM map, in the layout beside the image.
        self.cam_bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=cmap, width=12, interactive=False)
        self.cam_bar.setToolTip("Grad-CAM activation (0 = none, 1 = the slice's strongest)")
        self.cam_bar.axis.setTextPen(pg.mkPen((220, 220, 220)))
        self.cam_bar.axis.setStyle(tickLength=4)
        view.graphics.ci.addItem(self.cam_bar, row=0, col=1)
        self.cam_bar.hide()
        self.cam_bar.setMaximumWidth(0)

        view.view_box.sigResized.connect(self._place_labels)
        view.sliceChanged.connect(self.update)
        self._place_labels()

    # -- state -----------------------------------------------------------------------------------
    def add_follower(self, other: "OverlayLayers") -> None:
        """Let ``other`` (another pane's layers) mirror this one's result and settings from now on."""
        self.followers.append(other)
        other.lesions_visible, other.lung_visible, other.cam_visible = (
            self.lesions_visible, self.lung_visible, self.cam_visible)
        other.fill = self.fill
        other.set_lesion_opacity(self.lesion_item.opacity())
        other.set_cam_opacity(self.cam_item.opacity())
        other.set_result(self.result)

    def _forward(self, name: str, *args: Any) -> None:
        for other in self.followers:
            getattr(other, name)(*args)

    def set_result(self, result: Any) -> None:
        self._forward("set_result", result)
        self.result = result
        if result is None:
            self._sagittal.clear()
        self._flagged = set(result.cam_flagged_slices()) if result is not None else set()
        self._placed.clear()
        for item in (self.lung_item, self.cam_item, self.lesion_item):
            item.clear()
        self.update()

    def _show(self, item: pg.ImageItem, image: np.ndarray, levels: tuple[float, float]) -> None:
        item.setImage(image, autoLevels=False, levels=levels)
        if item not in self._placed:
            # setRect scales by the image's size, so it can only follow the first setImage.
            item.setRect(self.view.pixel_rect_mm())
            self._placed.add(item)

    def set_lesions_visible(self, visible: bool) -> None:
        self._forward("set_lesions_visible", visible)
        self.lesions_visible = bool(visible)
        self.update()

    def set_lung_visible(self, visible: bool) -> None:
        self._forward("set_lung_visible", visible)
        self.lung_visible = bool(visible)
        self.update()

    def set_cam_visible(self, visible: bool) -> None:
        self._forward("set_cam_visible", visible)
        self.cam_visible = bool(visible)
        self.update()

    def set_fill(self, fill: bool) -> None:
        self._forward("set_fill", fill)
        self.fill = bool(fill)
        self.update()

    def set_lesion_opacity(self, opacity: float) -> None:
        self._forward("set_lesion_opacity", opacity)
        self.lesion_item.setOpacity(float(opacity))

    def set_cam_opacity(self, opacity: float) -> None:
        self._forward("set_cam_opacity", opacity)
        self.cam_item.setOpacity(float(opacity))

    # -- drawing ---------------------------------------------------------------------------------------
    def lesion_rgba(self, k: int | None = None) -> np.ndarray:
        """The lesion layer of axial slice ``k`` (default: the plane on screen) as RGBA (filled or contour)."""
        labels = np.asarray(self.result.lesion[k] if k is not None else self._plane_labels("lesion"))
        if not self.fill:
            labels = np.where(boundary(labels), labels, 0).astype(np.uint8)
        return np.take(_LESION_PALETTE, labels, axis=0)

    def _plane_labels(self, name: str) -> np.ndarray:
        """The plane on screen of the result's ``lesion`` or ``lung`` labels (sagittal from the x-major copy)."""
        array = getattr(self.result, name)
        if self.view.plane == "sagittal":
            return self._sagittal.label_plane(name, array, self.view.slice_index)
        return np.asarray(self.view.plane_array(array))

    def update(self, *_: Any) -> None:
        result = self.result
        has = result is not None and self.view.volume is result.volume
        k = self.view.slice_index
        axial = self.view.plane == "axial"
        show_lesions = has and self.lesions_visible
        if show_lesions:
            self._show(self.lesion_item, self.lesion_rgba(k if axial else None), (0, 255))
        self.lesion_item.setVisible(show_lesions)
        self.legend.setVisible(show_lesions)

        show_lung = has and self.lung_visible
        if show_lung:
            lung = self._plane_labels("lung")
            self._show(self.lung_item, np.take(_LUNG_PALETTE, np.where(boundary(lung), lung, 0), axis=0), (0, 255))
        self.lung_item.setVisible(show_lung)

        cam = None
        if has and self.cam_visible:
            cam = (self._sagittal.cam_plane(result.cam, k, result.lesion.shape) if self.view.plane == "sagittal"
                   else cam_plane(result.cam, self.view.plane, k, result.lesion.shape))
        if cam is not None:
            self._show(self.cam_item, np.asarray(cam, dtype=np.float32), (0.0, 1.0))
        self.cam_item.setVisible(cam is not None)
        show_bar = has and self.cam_visible
        self.cam_bar.setVisible(show_bar)
        self.cam_bar.setMaximumWidth(80 if show_bar else 0)

        flag = ""
        if has and self.cam_visible:
            if axial and k in self._flagged:
                share = result.cam_outside_fraction[k]
                flag = f"⚠ Grad-CAM: {share:.0%} of the activation lies outside the lung on this slice"
            elif cam is None:
                flag = "no Grad-CAM map for this slice" if axial else "no Grad-CAM map yet"
        self.cam_flag.setText(flag)
        self.cam_flag.setVisible(bool(flag))

    def _place_labels(self, *_: Any) -> None:
        rect = self.view.view_box.boundingRect()
        self.legend.setPos(6, rect.height() - 24)
        self.cam_flag.setPos(rect.width() / 2, 24)
