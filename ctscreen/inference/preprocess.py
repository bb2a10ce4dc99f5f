"""The intensity and geometry contract between CT data and the segmentation models.

The training slices (COVID-SemiSeg) are 8-bit images already rendered in a lung
window and cropped to the thorax; the app reads Hounsfield units from DICOM.
Everything that turns either into network input goes through this module, in
training, evaluation and the app alike.

The same contract runs on a torch device for the app's segmentation
(:func:`ctscreen.inference.segment.prepare_input`): :func:`hu_to_unit` accepts a
tensor too, and :func:`resize_taps` gives the weights of exactly the resize
:func:`resize_to_model` does with OpenCV, so both paths feed the network the
same numbers (float rounding aside).

Calibration (measured 2026-11-26, see ``benchmarks/calibrate_window.py``):
in the 50 labelled training images the histogram mode of aerated lung
parenchyma lies at grey level 44 (10th-90th percentile 29-77) and that of soft
tissue at 214 (198-232). In the shared DICOM series, aerated parenchyma peaks
at about -850 HU (normal001: -830 to -870) and soft tissue at +40 HU. A linear
window mapping -850 HU to 44/255 and +40 HU to 214/255 is
``[-1080, 255] HU`` (width 1335, level -412), which is the window below.
"""

from __future__ import annotations

import functools
import math

import numpy as np

#: HU window that reproduces the training images' intensities (see module docstring).
HU_LOW = -1080.0
HU_HIGH = 255.0
#: Side of the square network input, in pixels.
MODEL_SIZE = 256
#: HU above which a voxel counts as body (for the thorax crop).
BODY_HU = -500.0
#: ``1 / (HU_HIGH - HU_LOW)``, applied in float32.
_UNIT_SCALE = 1.0 / (HU_HIGH - HU_LOW)


def hu_to_unit(hu):
    """Map Hounsfield units to the [0, 1] intensity scale of the training images.

    Parameters
    ----------
    hu : ndarray or torch.Tensor
        Any shape, Hounsfield units (modality LUT already applied). A tensor stays
        on its device (the app's GPU path); the arithmetic is the same float32 in both.

    Returns
    -------
    ndarray of float32 (or a float32 tensor)
        ``(hu - HU_LOW) / (HU_HIGH - HU_LOW)`` clipped to [0, 1]; equal to a
        training image's grey level divided by 255.
    """
    if _is_tensor(hu):
        return ((hu.float() - HU_LOW) * np.float32(_UNIT_SCALE).item()).clamp_(0.0, 1.0)
    x = (np.asarray(hu, dtype=np.float32) - np.float32(HU_LOW)) * np.float32(_UNIT_SCALE)
    return np.clip(x, np.float32(0.0), np.float32(1.0)).astype(np.float32, copy=False)


def _is_tensor(x) -> bool:
    """A torch tensor, told apart without importing torch (training tools import this module too)."""
    return type(x).__module__.startswith("torch") and hasattr(x, "clamp_")


def gray_to_unit(img: np.ndarray) -> np.ndarray:
    """Map an 8-bit lung-window rendering (a training or test image) to [0, 1]."""
    if img.ndim == 3:
        img = img[..., 0]
    return img.astype(np.float32) * (1.0 / 255.0)


def thorax_box(hu_volume: np.ndarray, margin_px: int = 4) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, y1, x0, x1)`` of the body, shared by all slices.

    The training images are cropped to the thorax, so the app crops each slice
    the same way before resizing to :data:`MODEL_SIZE`. The box is the union
    over slices of the largest body component (HU > -500), which excludes the
    table and the air around the patient. A 2-D array is treated as one slice.
    """
    import cv2

    vol = hu_volume[None] if hu_volume.ndim == 2 else hu_volume
    ny, nx = vol.shape[1:]
    # A robust union: project the body mask of a subset of slices.
    step = max(1, vol.shape[0] // 24)
    acc = np.zeros((ny, nx), dtype=bool)
    for k in range(0, vol.shape[0], step):
        body = (vol[k] > BODY_HU).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(body, connectivity=4)
        if n <= 1:
            continue
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[biggest, cv2.CC_STAT_AREA] < 0.02 * ny * nx:
            continue
        acc |= lab == biggest
    if not acc.any():
        return (0, ny, 0, nx)
    ys = np.flatnonzero(acc.any(axis=1))
    xs = np.flatnonzero(acc.any(axis=0))
    y0 = max(0, int(ys[0]) - margin_px)
    y1 = min(ny, int(ys[-1]) + 1 + margin_px)
    x0 = max(0, int(xs[0]) - margin_px)
    x1 = min(nx, int(xs[-1]) + 1 + margin_px)
    if (y1 - y0) < 16 or (x1 - x0) < 16:
        return (0, ny, 0, nx)
    return (y0, y1, x0, x1)


def uses_area(shape_yx: tuple[int, ...], size: int = MODEL_SIZE) -> bool:
    """Whether :func:`resize_to_model` area-averages (both sides shrink), else it is bilinear."""
    return min(int(shape_yx[0]), int(shape_yx[1])) > size


def resize_to_model(img: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """Resize a 2-D float image to ``size`` x ``size`` (area-averaged when shrinking)."""
    import cv2

    interp = cv2.INTER_AREA if uses_area(img.shape, size) else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


@functools.lru_cache(maxsize=32)
def resize_taps(n_in: int, n_out: int, area: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of OpenCV's float resize along one axis, ``n_in`` -> ``n_out`` pixels.

    ``out[i] = sum_k weights[i, k] * in[index[i, k]]``, separably in y and x, is what
    ``cv2.resize`` computes for a float32 image with ``INTER_AREA`` when shrinking
    (``area=True``; OpenCV's ``computeResizeAreaTab``, overlaps under 1e-3 pixel dropped)
    or with ``INTER_LINEAR`` (half-pixel centres, edges replicated). Unused taps have
    weight 0. The arrays are read-only (cached).

    Returns
    -------
    index : ndarray of int64, (n_out, k)
    weights : ndarray of float32, (n_out, k)
    """
    n_in, n_out = int(n_in), int(n_out)
    scale = 1.0 / (n_out / n_in)  # as OpenCV: the inverse of its inverse scale
    taps: list[list[tuple[int, float]]] = []
    for d in range(n_out):
        row: list[tuple[int, float]] = []
        if area:
            f1 = d * scale
            f2 = f1 + scale
            cell = min(scale, n_in - f1)
            s1, s2 = math.ceil(f1), math.floor(f2)
            s2 = min(s2, n_in - 1)
            s1 = min(s1, s2)
            if s1 - f1 > 1e-3:
                row.append((s1 - 1, float(np.float32((s1 - f1) / cell))))
            for sx in range(s1, s2):
                row.append((sx, float(np.float32(1.0 / cell))))
            if f2 - s2 > 1e-3:
                row.append((s2, float(np.float32(min(min(f2 - s2, 1.0), cell) / cell))))
        else:
            fx = float(np.float32((d + 0.5) * scale - 0.5))
            sx = math.floor(fx)
            fx = float(np.float32(fx - sx))
            if sx < 0:
                fx, sx = 0.0, 0
            if sx >= n_in - 1:
                fx, sx = 0.0, n_in - 1
            row = [(sx, float(np.float32(1.0 - fx))), (min(sx + 1, n_in - 1), fx)]
        taps.append(row)
    k = max(len(r) for r in taps)
    index = np.zeros((n_out, k), np.int64)
    weights = np.zeros((n_out, k), np.float32)
    for d, row in enumerate(taps):
        for j, (sx, w) in enumerate(row):
            index[d, j] = sx
            weights[d, j] = w
    index.setflags(write=False)
    weights.setflags(write=False)
    return index, weights


def slices_to_model_input(hu_slices: np.ndarray, box: tuple[int, int, int, int],
                          size: int = MODEL_SIZE) -> np.ndarray:
    """HU slices ``(n, y, x)`` -> network input ``(n, 1, size, size)`` float32 in [0, 1]."""
    y0, y1, x0, x1 = box
    out = np.empty((len(hu_slices), 1, size, size), dtype=np.float32)
    for i, s in enumerate(hu_slices):
        out[i, 0] = resize_to_model(hu_to_unit(s[y0:y1, x0:x1]), size)
    return out


def image_to_model_input(img: np.ndarray, size: int = MODEL_SIZE) -> np.ndarray:
    """An 8-bit lung-window image (already cropped to the thorax) -> ``(1, size, size)``."""
    return resize_to_model(gray_to_unit(img), size)[None]
