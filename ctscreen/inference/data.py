"""Reading the COVID-SemiSeg training slices (``../shared/data/covid-semiseg``).

Layout: ``train/Imgs/*.jpg`` + ``train/GT/*.png`` (0/255 lesion masks),
``train-multiclass/GT/*.png`` (palette PNG: 0 background, 1 ground-glass
opacity, 2 consolidation) and ``pseudo/Imgs`` + ``pseudo/GT`` (machine-made
lesion masks, used for pre-training only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ctscreen.inference.preprocess import MODEL_SIZE, gray_to_unit, resize_to_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_gray(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError(f"{path}: cannot read image (corrupt or not an image file)")
    return img


def read_mask_kind(path: Path) -> tuple[np.ndarray, bool]:
    """Read a mask as labels and say whether it is multi-class.

    0/255 binary masks become 0/1 (``multiclass`` False); masks stored with the
    values 0/1/2 themselves (palette indices or grey values) are multi-class.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im) if im.mode == "P" else np.asarray(im.convert("L"))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot read mask ({exc})") from exc
    arr = arr.astype(np.uint8)
    if arr.max() > 2:
        return (arr >= 128).astype(np.uint8), False
    return arr, True


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as labels: 0/255 binary -> 0/1; 0/1/2 multi-class kept."""
    return read_mask_kind(path)[0]


def paired_files(images: Path, masks: Path) -> tuple[list[tuple[Path, Path]], list[str], list[str]]:
    """Pair images and masks by file stem.

    Returns ``(pairs, images_without_mask, masks_without_image)``.
    """
    imgs = {p.stem: p for p in sorted(Path(images).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    msks = {p.stem: p for p in sorted(Path(masks).iterdir()) if p.suffix.lower() == ".png"}
    pairs = [(imgs[s], msks[s]) for s in sorted(imgs, key=_natural) if s in msks]
    return pairs, sorted(set(imgs) - set(msks), key=_natural), sorted(set(msks) - set(imgs), key=_natural)


def _natural(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def harmonise_pseudo(img: np.ndarray) -> np.ndarray:
    """Bring a pseudo-set image rendered in a wider window to the labelled set's grey levels.

    The pseudo-labelled slices come from another collection, most rendered with
    soft tissue near grey 128 instead of 214. Histogram modes of aerated lung and
    soft tissue are mapped linearly to the labelled images' medians (44, 214);
    images already in that range are left alone.
    """
    h = np.convolve(np.bincount(img.ravel(), minlength=256).astype(float), np.ones(9) / 9, "same")
    lo = int(np.argmax(h[5:128])) + 5
    hi = int(np.argmax(h[128:250])) + 128 if h[128:250].max() > 0.2 * h[5:128].max() else None
    if hi is None:
        # soft tissue not in the upper half: look for it above the lung peak
        hi = lo + 20 + int(np.argmax(h[lo + 20:250]))
    if hi >= 170 or hi - lo < 30:
        return img
    scale = (214.0 - 44.0) / (hi - lo)
    out = (img.astype(np.float32) - lo) * scale + 44.0
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class SliceSet:
    """Training slices resized to the model size.

    Attributes
    ----------
    images : (n, S, S) float32 in [0, 1]
    lesion : (n, S, S) uint8, 1 where lesion
    classes : (n, S, S) uint8, 0/1/2; only meaningful where ``has_classes``
    has_classes : (n,) bool
    names : list of str
    originals : list of (image uint8, lesion uint8) at original size, for scoring
    """

    images: np.ndarray
    lesion: np.ndarray
    classes: np.ndarray
    has_classes: np.ndarray
    names: list[str]
    originals: list[tuple[np.ndarray, np.ndarray]]

    def subset(self, idx) -> "SliceSet":
        idx = list(idx)
        return SliceSet(self.images[idx], self.lesion[idx], self.classes[idx], self.has_classes[idx],
                        [self.names[i] for i in idx], [self.originals[i] for i in idx])

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls, size: int = MODEL_SIZE) -> "SliceSet":
        return cls(np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                   np.zeros((0, size, size), np.uint8), np.zeros(0, bool), [], [])


def _resize_label(m: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)


def load_labelled(root: Path, size: int = MODEL_SIZE) -> SliceSet:
    """The 50 radiologist-labelled slices with their GGO/consolidation labels."""
    root = Path(root)
    pairs, _, _ = paired_files(root / "train" / "Imgs", root / "train" / "GT")
    if not pairs:
        raise FileNotFoundError(f"{root}/train: no image/mask pairs found - pass the covid-semiseg folder")
    mc_dir = root / "train-multiclass" / "GT"
    ims, les, cls, has, names, orig = [], [], [], [], [], []
    for ip, mp in pairs:
        g = read_gray(ip)
        lesion = (read_mask(mp) > 0).astype(np.uint8)
        mc_path = mc_dir / (ip.stem + ".png")
        if mc_path.exists():
            c = read_mask(mc_path)
            if c.shape != lesion.shape:
                c = cv2.resize(c, lesion.shape[::-1], interpolation=cv2.INTER_NEAREST)
            has.append(True)
        else:
            c = lesion.copy()
            has.append(False)
        ims.append(resize_to_model(gray_to_unit(g), size))
        les.append(_resize_label(lesion, size))
        cls.append(_resize_label(c, size))
        names.append(ip.stem)
        orig.append((g, lesion))
    return SliceSet(np.stack(ims), np.stack(les), np.stack(cls), np.array(has), names, orig)


def load_pseudo(root: Path, size: int = MODEL_SIZE, limit: int | None = None) -> SliceSet:
    """The pseudo-labelled slices (lesion masks only), intensity-harmonised."""
    root = Path(root)
    d = root / "pseudo"
    if not d.exists():
        return SliceSet.empty(size)
    pairs, _, _ = paired_files(d / "Imgs", d / "GT")
    if limit:
        pairs = pairs[:limit]
    ims, les = [], []
    for ip, mp in pairs:
        g = harmonise_pseudo(read_gray(ip))
        m = (read_mask(mp) > 0).astype(np.uint8)
        ims.append(resize_to_model(gray_to_unit(g), size))
        les.append(_resize_label(m, size))
    les_a = np.stack(les)
    return SliceSet(np.stack(ims), les_a, les_a.copy(), np.zeros(len(pairs), bool),
                    [p[0].stem for p in pairs], [])
