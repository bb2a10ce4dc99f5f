"""Annotated PNG exports: one slice, every lesion slice, or a montage of lesion slices.

Research use, not for diagnosis.

Each image is the windowed CT slice resampled to square pixels, the lesion
overlay (ground-glass opacity and consolidation in two colours), orientation
letters derived from ``Volume.direction`` in a frame around the image, and
outer bands (so text never covers anatomy) with the model, slice number,
z position, window, a legend, a scale bar and :data:`ctscreen.RESEARCH_NOTICE`.
Patient name and ID are drawn only with ``include_patient=True``.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import ExportError
from ctscreen.io.files import atomic_write, fsync_dir, slice_png_name
from ctscreen.imaging.result import CONSOLIDATION, GGO

#: Overlay colours (RGB). Amber and magenta stay distinct for common colour-vision deficiencies.
GGO_RGB = (255, 200, 0)
CONSOLIDATION_RGB = (230, 0, 230)
BACKGROUND_RGB = (18, 18, 18)
TEXT_RGB = (235, 235, 235)
NOTICE_RGB = (255, 170, 60)

#: Images narrower than this (after aspect correction) are upscaled so the text stays legible.
MIN_IMAGE_WIDTH_PX = 512
FRAME_PX = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX
DEFAULT_WINDOW = (1500.0, -600.0)

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (+, -) per LPS axis


def _canvas(h: int, w: int) -> np.ndarray:
    """A ``(h, w, 3)`` uint8 image filled with :data:`BACKGROUND_RGB`.

    ``np.full`` with a colour tuple broadcasts pixel by pixel (about 2 ms for a framed
    slice); a grey is one memset, and any colour one fill of the first row plus a copy.
    """
    if len(set(BACKGROUND_RGB)) == 1:
        return np.full((h, w, 3), BACKGROUND_RGB[0], np.uint8)
    out = np.empty((h, w, 3), np.uint8)
    if h and w:
        out[0] = BACKGROUND_RGB
        out[1:] = out[0]
    return out


def _ascii(text: str) -> str:
    return str(text).encode("ascii", "replace").decode("ascii")


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5,
              color: Sequence[int] = TEXT_RGB, thickness: int = 1) -> None:
    """Draw text (every label goes through here, so tests can see what is drawn)."""
    cv2.putText(img, _ascii(text), (int(org[0]), int(org[1])), FONT, scale, tuple(int(c) for c in color),
                thickness, cv2.LINE_AA)


def _text_size(text: str, scale: float = 0.5, thickness: int = 1) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(_ascii(text), FONT, scale, thickness)
    return w, h + base


def _axis_letters(vec: np.ndarray) -> str:
    """Patient-direction letters (LPS: L/R, P/A, S/I) that ``vec`` points towards, strongest first."""
    v = np.asarray(vec, dtype=float)
    order = np.argsort(-np.abs(v))
    letters = [(_LPS_LETTERS[i][0] if v[i] > 0 else _LPS_LETTERS[i][1]) for i in order if abs(v[i]) >= 0.25]
    return "".join(letters[:2]) or "?"


def orientation_letters(direction: np.ndarray) -> dict[str, str]:
    """Letters for the screen edges of a displayed slice, from ``Volume.direction``.

    Returns
    -------
    dict
        Keys ``left``, ``right``, ``top``, ``bottom``. For a standard axial
        display: R, L, A, P.
    """
    d = np.asarray(direction, dtype=float)
    x_vec, y_vec = d[:, 2], d[:, 1]
    return {"right": _axis_letters(x_vec), "left": _axis_letters(-x_vec),
            "bottom": _axis_letters(y_vec), "top": _axis_letters(-y_vec)}


def window_to_uint8(hu: np.ndarray, window: tuple[float, float] = DEFAULT_WINDOW) -> np.ndarray:
    """Linear window ``(width, level)`` to 0..255."""
    width, level = float(window[0]), float(window[1])
    width = max(width, 1.0)
    lo = level - width / 2.0
    out = (np.nan_to_num(np.asarray(hu, dtype=np.float32), nan=-1024.0) - lo) * (255.0 / width)
    return np.clip(out, 0, 255).astype(np.uint8)


def _display_geometry(shape_yx: tuple[int, int], spacing_yx: tuple[float, float],
                      min_width: int = MIN_IMAGE_WIDTH_PX) -> tuple[int, int, float]:
    """Output (height, width) with square pixels, and the mm per output pixel."""
    ny, nx = shape_yx
    sy, sx = (float(s) if s and s > 0 else 1.0 for s in spacing_yx)
    pixel_mm = min(sy, sx)
    h, w = ny * sy / pixel_mm, nx * sx / pixel_mm
    if w < min_width:
        f = min_width / w
        h, w, pixel_mm = h * f, w * f, pixel_mm / f
    return max(1, int(round(h))), max(1, int(round(w))), pixel_mm


def _scale_bar_mm(pixel_mm: float, width_px: int) -> float:
    """The largest of 100/50/20/10/5/2/1 mm that is at most 40 % of the image width."""
    for mm in (100.0, 50.0, 20.0, 10.0, 5.0, 2.0, 1.0):
        if mm / pixel_mm <= 0.4 * width_px:
            return mm
    return 1.0


def _mm_label(mm: float) -> str:
    return f"{mm / 10:g} cm" if mm >= 10 else f"{mm:g} mm"


def _render_image(result: Any, index: int, window: tuple[float, float], fill: bool, opacity: float,
                  cam: bool, min_width: int = MIN_IMAGE_WIDTH_PX) -> tuple[np.ndarray, float, bool]:
    """The slice itself (RGB, square pixels) with overlays; returns (image, mm per pixel, cam drawn)."""
    vol = result.volume
    hu = np.asarray(vol.hu[index])
    h, w, pixel_mm = _display_geometry(hu.shape, vol.spacing_mm[1:], min_width)
    gray = window_to_uint8(hu, window)
    if gray.shape != (h, w):
        gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_LINEAR)
    img = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)

    cam_drawn = False
    cam_map = (getattr(result, "cam", None) or {}).get(index) if cam else None
    if cam_map is not None:
        c = np.clip(np.nan_to_num(np.asarray(cam_map, dtype=np.float32)), 0, 1)
        c = cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR)
        heat = cv2.cvtColor(cv2.applyColorMap((c * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        a = (0.5 * c)[..., None]
        img = (img * (1 - a) + heat * a).astype(np.uint8)
        cam_drawn = True

    lesion = np.asarray(result.lesion[index])
    for label, colour in ((GGO, GGO_RGB), (CONSOLIDATION, CONSOLIDATION_RGB)):
        m = (lesion == label).astype(np.uint8)
        if not m.any():
            continue
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        if fill and not cam_drawn:
            sel = m.astype(bool)
            img[sel] = (img[sel] * (1 - opacity) + np.array(colour, np.float32) * opacity).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(img, contours, -1, colour, 1 if fill and not cam_drawn else 2, cv2.LINE_8)
    return img, pixel_mm, cam_drawn


def _frame_with_letters(img: np.ndarray, letters: dict[str, str], frame: int = FRAME_PX) -> np.ndarray:
    h, w = img.shape[:2]
    out = _canvas(h + 2 * frame, w + 2 * frame)
    out[frame:frame + h, frame:frame + w] = img
    for key, (cx, cy) in {"left": (frame // 2, frame + h // 2), "right": (frame + w + frame // 2, frame + h // 2),
                          "top": (frame + w // 2, frame // 2), "bottom": (frame + w // 2, frame + h + frame // 2)}.items():
        tw, th = _text_size(letters[key], 0.5, 1)
        _put_text(out, letters[key], (cx - tw // 2, cy + th // 2 - 2), 0.5, (255, 255, 255), 1)
    return out


def _band(width: int, lines: list[tuple[str, Sequence[int]]], scale: float = 0.5, pad: int = 8) -> np.ndarray:
    line_h = _text_size("Ag", scale)[1] + 6
    band = _canvas(pad * 2 + line_h * len(lines), width)
    for i, (text, colour) in enumerate(lines):
        _put_text(band, text, (pad, pad + line_h * (i + 1) - 6), scale, colour)
    return band


def _legend_and_scale_band(width: int, pixel_mm: float, image_width_px: int, cam_label: str | None,
                           pad: int = 8) -> np.ndarray:
    """Legend swatches on the left, scale bar on the right (on a second row when they would touch)."""
    row_h = 30
    mm = _scale_bar_mm(pixel_mm, image_width_px)
    length = int(round(mm / pixel_mm))
    label = _mm_label(mm)
    bar_w = length + 8 + _text_size(label, 0.45)[0]

    items: list[tuple[str, Any]] = [("Ground-glass opacity", GGO_RGB), ("Consolidation", CONSOLIDATION_RGB)]
    if cam_label:
        items.append((cam_label, "ramp"))
    placed, x, y = [], pad, 0
    for text, swatch in items:
        sw = 120 if swatch == "ramp" else 14  # the heat map's colour bar
        item_w = sw + 6 + _text_size(text, 0.45)[0]
        if x + item_w > width - pad and x > pad:
            x, y = pad, y + 1
        placed.append((x, y, sw, text, swatch))
        x += item_w + 16
    bar_row = y if x + bar_w <= width - pad else y + 1
    band = _canvas((bar_row + 1) * row_h + 4, width)
    for x, y, sw, text, swatch in placed:
        top = 8 + y * row_h
        if swatch == "ramp":
            ramp = cv2.applyColorMap(np.linspace(0, 255, sw).astype(np.uint8)[None, :].repeat(14, 0),
                                     cv2.COLORMAP_JET)
            band[top:top + 14, x:x + sw] = cv2.cvtColor(ramp, cv2.COLOR_BGR2RGB)
        else:
            cv2.rectangle(band, (x, top), (x + 13, top + 13), swatch, -1)
        _put_text(band, text, (x + sw + 6, top + 13), 0.45)
    top = 8 + bar_row * row_h
    x1 = width - pad - (bar_w - length)
    x0 = x1 - length
    cv2.rectangle(band, (x0, top + 5), (x1, top + 9), (255, 255, 255), -1)
    cv2.line(band, (x0, top), (x0, top + 14), (255, 255, 255), 1)
    cv2.line(band, (x1, top), (x1, top + 14), (255, 255, 255), 1)
    _put_text(band, label, (x1 + 8, top + 13), 0.45)
    return band


def cam_legend_label(result: Any) -> str:
    """``"Grad-CAM seg-hirescam at decoder1: 0 .. slice max"``, the colour bar's label."""
    method = getattr(result, "cam_method", "") or ""
    layer = getattr(result, "cam_layer", "")
    return " ".join(p for p in ("Grad-CAM", method, f"at {layer}" if layer else "") if p) + ": 0 .. slice max"


def _patient_line(vol: Any) -> str:
    return f"Patient: {vol.patient_name or '-'}   ID: {vol.patient_id or '-'}"


def render_slice_png(result: Any, index: int, window: tuple[float, float] = DEFAULT_WINDOW,
                     include_patient: bool = False, fill: bool = True, opacity: float = 0.45,
                     cam: bool = False) -> np.ndarray:
    """Render one annotated slice.

    Parameters
    ----------
    result : AnalysisResult
    index : int
        0-based slice index in display order.
    window : (width, level)
        CT window in HU; the default is the lung window (1500, -600).
    include_patient : bool
        Draw patient name and ID. Off by default.
    fill : bool
        Filled translucent lesion overlay with outline (True) or outlines only.
    opacity : float
        Opacity of the filled overlay, 0..1.
    cam : bool
        Blend the Grad-CAM heat map when the result has one for this slice
        (lesions are then drawn as outlines so both stay visible).

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
        RGB image.
    """
    vol = result.volume
    n = vol.shape[0]
    if not 0 <= index < n:
        raise IndexError(f"slice index {index} outside 0..{n - 1}")
    img, pixel_mm, cam_drawn = _render_image(result, index, window, fill, float(np.clip(opacity, 0, 1)), cam)
    framed = _frame_with_letters(img, orientation_letters(vol.direction))
    width = framed.shape[1]
    z = f"{vol.z_mm[index]:.1f} mm" if index < len(vol.z_mm) else "n/a"
    title = [
        (f"ctscreen {__version__}  model {result.model_name} {result.model_version}", TEXT_RGB),
        (f"Slice {index + 1}/{n}   z {z}   W {window[0]:g} L {window[1]:g}", TEXT_RGB),
    ]
    if cam and not cam_drawn:
        title.append(("Grad-CAM not computed for this slice", TEXT_RGB))
    if include_patient:
        title.append((_patient_line(vol), TEXT_RGB))
    cam_label = cam_legend_label(result) if cam_drawn else None
    parts = [
        _band(width, title),
        framed,
        _legend_and_scale_band(width, pixel_mm, img.shape[1], cam_label),
        _band(width, [(RESEARCH_NOTICE, NOTICE_RGB)], scale=0.55),
    ]
    return np.ascontiguousarray(np.vstack(parts))


def lesion_slice_indices(result: Any) -> list[int]:
    """0-based indices of slices with any lesion voxel."""
    les = np.asarray(result.lesion)
    return [int(k) for k in np.flatnonzero(les.reshape(les.shape[0], -1).any(axis=1))]


def _encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ExportError("PNG encoding failed \u2014 report this as a bug")
    return buf.tobytes()


def write_slice_png(result: Any, index: int, path: str | os.PathLike, force: bool = False, *,
                    sync_dir: bool = True, **render_kw: Any) -> Path:
    """Render slice ``index`` (see :func:`render_slice_png` for ``render_kw``) and write it atomically.

    ``sync_dir=False`` leaves the folder's fsync to a caller that writes many files (see :func:`atomic_write`).
    """
    return atomic_write(path, _encode_png(render_slice_png(result, index, **render_kw)), force=force,
                        sync_dir=sync_dir)


#: Most threads that render and encode PNGs at once (OpenCV and the file writes release the GIL).
MAX_PNG_THREADS = 8


def png_threads(n_images: int) -> int:
    """Threads for writing ``n_images`` PNGs: one per CPU core, at most :data:`MAX_PNG_THREADS`."""
    return max(1, min(MAX_PNG_THREADS, os.cpu_count() or 1, int(n_images)))


def write_lesion_pngs(result: Any, out_dir: str | os.PathLike, force: bool = False,
                      indices: Sequence[int] | None = None, **render_kw: Any) -> list[Path]:
    """Write ``slice_NNNN.png`` (1-based slice number) for every slice with lesions (or ``indices``).

    Refuses before writing anything when one of them exists and not ``force``. The slices
    are rendered, encoded and written (each atomically, see :func:`atomic_write`) by a pool
    of threads; the folder is synced once at the end. Returns the paths in slice order.
    """
    out = Path(out_dir)
    indices = lesion_slice_indices(result) if indices is None else [int(k) for k in indices]
    paths = [out / slice_png_name(k) for k in indices]
    if not force:
        clash = [p for p in paths if p.exists()]
        if clash:
            raise ExportError(f"{clash[0]} exists \u2014 use --force to overwrite")
    if not paths:
        return []

    def one(item: tuple[int, Path]) -> Path:
        k, p = item
        return write_slice_png(result, k, p, force=force, sync_dir=False, **render_kw)

    threads = png_threads(len(paths))
    if threads == 1:
        written = [one(item) for item in zip(indices, paths)]
    else:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ctscreen-png") as pool:
            futures = [pool.submit(one, item) for item in zip(indices, paths)]
            try:
                written = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    fsync_dir(out)
    return written


def _even_pick(indices: list[int], count: int) -> list[int]:
    if len(indices) <= count:
        return list(indices)
    pos = np.linspace(0, len(indices) - 1, count).round().astype(int)
    return [indices[i] for i in sorted(set(pos.tolist()))]


#: Colour of the screening verdict lines in the montage header.
SCREENING_RGB = (140, 210, 255)


def screening_lines(result: Any) -> list[str]:
    """The screening verdict as header lines (empty when ``result.screening`` is None).

    ``"RSNA category: Typical appearance (decided by: bilateral, peripheral, ggo)"`` and, when the
    classifier ran, ``"Classifier: COVID-19 0.91 / other 0.06 / none 0.03 (model NAME VERSION)"``.
    """
    s = getattr(result, "screening", None)
    if s is None:
        return []
    decided = [c.key.replace("_", " ") for c in getattr(s, "criteria", ()) if getattr(c, "decisive", False)]
    lines = [f"RSNA category: {s.category_label}" + (f" (decided by: {', '.join(decided)})" if decided else "")]
    probs = s.probabilities_text() if hasattr(s, "probabilities_text") else ""
    if probs:
        model = f"{s.model_name} {s.model_version}".strip()
        lines.append(f"Classifier: {probs}" + (f" (model {model})" if model else ""))
    else:
        lines.append("Classifier: not run")
    return lines


def _wrap(text: str, width_px: int, scale: float = 0.5) -> list[str]:
    """``text`` cut at spaces into lines no wider than ``width_px`` (a single long word stays whole)."""
    out: list[str] = []
    line = ""
    for word in str(text).split():
        trial = f"{line} {word}" if line else word
        if line and _text_size(trial, scale)[0] > width_px:
            out.append(line)
            line = word
        else:
            line = trial
    if line:
        out.append(line)
    return out


def render_montage(result: Any, max_tiles: int = 24, columns: int | None = None,
                   window: tuple[float, float] = DEFAULT_WINDOW, include_patient: bool = False,
                   fill: bool = True, opacity: float = 0.45, tile_width: int = 256,
                   indices: Sequence[int] | None = None) -> np.ndarray:
    """A grid of lesion slices (up to ``max_tiles``, evenly chosen) with one shared legend and notice.

    Each tile carries its slice number ``k/n``, z and the orientation letters.
    With no lesion slice, the montage shows the middle slice so the export is
    never empty (the title says "no lesions").
    """
    vol = result.volume
    n = vol.shape[0]
    chosen = list(indices) if indices is not None else _even_pick(lesion_slice_indices(result), max(1, int(max_tiles)))
    no_lesions = not chosen
    if no_lesions:
        chosen = [n // 2]
    cols = columns or int(np.ceil(np.sqrt(len(chosen))))
    rows = int(np.ceil(len(chosen) / cols))
    letters = orientation_letters(vol.direction)
    tiles = []
    pixel_mm = tile_img_w = None
    for k in chosen:
        img, pixel_mm_k, _ = _render_image(result, k, window, fill, float(np.clip(opacity, 0, 1)), False,
                                           min_width=tile_width)
        f = tile_width / img.shape[1]
        if abs(f - 1) > 1e-6:
            img = cv2.resize(img, (tile_width, max(1, int(round(img.shape[0] * f)))), interpolation=cv2.INTER_AREA)
            pixel_mm_k = pixel_mm_k / f
        pixel_mm, tile_img_w = pixel_mm_k, img.shape[1]
        framed = _frame_with_letters(img, letters)
        z = f"{vol.z_mm[k]:.1f} mm" if k < len(vol.z_mm) else ""
        _put_text(framed, f"{k + 1}/{n} {z}", (FRAME_PX + 4, FRAME_PX + 16), 0.45, (255, 255, 255))
        tiles.append(framed)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    grid = _canvas(rows * th, cols * tw)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * th:r * th + t.shape[0], c * tw:c * tw + t.shape[1]] = t
    width = grid.shape[1]
    title = [
        (f"ctscreen {__version__}  model {result.model_name} {result.model_version}", TEXT_RGB),
        (("No lesions found - middle slice shown" if no_lesions else
          f"{len(chosen)} of {len(lesion_slice_indices(result))} lesion slices") +
         f"   W {window[0]:g} L {window[1]:g}", TEXT_RGB),
    ]
    if include_patient:
        title.append((_patient_line(vol), TEXT_RGB))
    min_band = 440  # legend + scale bar need this much width
    if width < min_band:
        grid = np.hstack([grid, _canvas(grid.shape[0], min_band - width)])
        width = min_band
    verdict = screening_lines(result)
    if verdict:  # the verdict with the notice right beside it, wrapped to the montage's width
        title.append((f"Screening verdict - {RESEARCH_NOTICE}", NOTICE_RGB))
        for text in verdict:
            title.extend((part, SCREENING_RGB) for part in _wrap(text, width - 16, 0.5))
    legend = _legend_and_scale_band(width, pixel_mm, tile_img_w, None)
    parts = [_band(width, title), grid, legend, _band(width, [(RESEARCH_NOTICE, NOTICE_RGB)], scale=0.55)]
    return np.ascontiguousarray(np.vstack(parts))


def write_montage_png(result: Any, path: str | os.PathLike, force: bool = False, **montage_kw: Any) -> Path:
    """Render :func:`render_montage` and write it atomically."""
    return atomic_write(path, _encode_png(render_montage(result, **montage_kw)), force=force)
