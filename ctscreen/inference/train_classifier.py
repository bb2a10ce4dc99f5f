"""Train and evaluate the screening classifier (``ctscreen train-classifier`` / ``evaluate-classifier``).

Data layouts (one sub-folder per class; names like ``COVID``/``NonCOVID`` or
``covid19``/``influenza_a``/``normal`` map to class keys by
:func:`ctscreen.inference.classifier.canonical_class`):

* ``DATA/train/<class>/*.png|jpg`` and ``DATA/val/<class>/...`` - the given split is used
  (the UCSD-AI4H COVID-CT layout, split by patient);
* ``DATA/<class>/*.png|jpg`` - a seeded, stratified validation split of ``--val-fraction``
  (images are assumed to be from different patients; split by patient yourself if not);
* ``DATA/<class>/<study>/`` DICOM series - a hospital's own studies: a seeded split *by study*;
  each study contributes up to :data:`SLICES_PER_STUDY` lung-containing slices (thorax crop,
  calibrated HU window), all labelled with the study's class.

Augmentation (seeded ``numpy`` generator, per sample): random resized crop (area 60-100 %,
aspect 3:4-4:3), rotation +-15 deg, left-right flip, contrast x0.75-1.33, brightness +-0.08,
gamma 0.7-1.4, Gaussian blur (p 0.3, sigma 0.3-1.5), Gaussian noise (p 0.3, sd <= 0.04);
``--augment figure`` adds paper-figure artefacts to every class (:func:`figure_like`);
``--lesion-crops P`` replaces the crop, with probability P, by a zoomed view centred on a
lesion that the shipped segmentation finds in the image (a random point of a lesion-free
image), every class alike (:func:`lesion_masks`, :func:`focus_box`).

Training-only additions: ``--extra-covid`` image folders (COVID-19) and ``--extra-study
CLASS=DICOM_FOLDER`` studies rendered through the app's own HU path
(:func:`extra_study_slices`); neither ever enters validation.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import CtscreenError
from ctscreen.inference import classifier as C
from ctscreen.inference.device import describe_device, resolve_device
from ctscreen.inference.train import git_commit
from ctscreen.progress import ProgressBar

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
#: Lung-containing slices taken per DICOM study for training.
SLICES_PER_STUDY = 24
#: Images are kept in memory at most this side (px) before augmentation.
STORE_SIDE = 320


class DataError(CtscreenError):
    """The training or evaluation folder cannot be used."""


@dataclass
class ImageSet:
    images: list[np.ndarray]       # 2-D float32 [0, 1]
    labels: np.ndarray             # int64 class index
    names: list[str]               # file (or study/slice) names, for per-image reports
    groups: list[str]              # patient/study key (images: the file itself)


def _shrink(img: np.ndarray, side: int = STORE_SIDE) -> np.ndarray:
    import cv2

    h, w = img.shape
    s = side / max(h, w)
    if s >= 1:
        return img
    return cv2.resize(img, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(dirs) < 2:
        raise DataError(f"{root}: expected one sub-folder per class (e.g. COVID/ and NonCOVID/, or covid19/, "
                        f"influenza_a/, normal/), found {len(dirs)}")
    return dirs


def _study_slices(study: Path, n: int = SLICES_PER_STUDY) -> list[np.ndarray]:
    """Up to ``n`` lung-containing slices of a DICOM study, as [0, 1] thorax crops."""
    from ctscreen.imaging.lungmask import lung_mask
    from ctscreen.inference.preprocess import hu_to_unit, thorax_box
    from ctscreen.io.dicom import load_series

    vol = load_series(study)
    lung = lung_mask(vol)
    plane = lung.shape[1] * lung.shape[2]
    idx = np.flatnonzero((lung > 0).reshape(len(lung), -1).sum(axis=1) >= 0.03 * plane)
    if len(idx) == 0:
        raise DataError(f"{study}: no lung found in this series - is it a chest CT?")
    idx = sorted({int(idx[int(round(j))]) for j in np.linspace(0, len(idx) - 1, min(n, len(idx)))})
    y0, y1, x0, x1 = thorax_box(vol.hu)
    return [_shrink(hu_to_unit(vol.hu[k, y0:y1, x0:x1])) for k in idx]


def load_folder(root: Path, classes: tuple[str, ...] | None = None, progress: ProgressBar | None = None) -> tuple[ImageSet, tuple[str, ...]]:
    """Load ``root/<class>/`` (images or DICOM study folders) into memory."""
    dirs = _class_dirs(root)
    found = {C.canonical_class(d.name): d for d in dirs}
    if classes is None:
        classes = C.order_classes(list(found))
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"{root}: no sub-folder for class(es) {', '.join(missing)} (have: {', '.join(d.name for d in dirs)})")
    images: list[np.ndarray] = []
    labels: list[int] = []
    names: list[str] = []
    groups: list[str] = []
    todo = [(ci, found[c]) for ci, c in enumerate(classes)]
    total = sum(len(list(d.iterdir())) for _, d in todo) or 1
    done = 0
    for ci, d in todo:
        files = _images_in(d)
        studies = sorted(p for p in d.iterdir() if p.is_dir())
        for f in files:
            try:
                img = C.read_gray_image(f)
            except ValueError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
                continue
            images.append(_shrink(img))
            labels.append(ci)
            names.append(f"{d.name}/{f.name}")
            groups.append(f"{d.name}/{f.name}")
            done += 1
            if progress:
                progress.update("loading", done / total)
        for s in studies:
            try:
                sl = _study_slices(s)
            except CtscreenError as exc:
                print(f"skipped study {s.name}: {exc}", file=sys.stderr)
                continue
            for k, img in enumerate(sl):
                images.append(img)
                labels.append(ci)
                names.append(f"{d.name}/{s.name}#{k}")
                groups.append(f"{d.name}/{s.name}")
            done += 1
            if progress:
                progress.update("loading", done / total)
    if not images:
        raise DataError(f"{root}: no readable images or DICOM studies in the class folders")
    return ImageSet(images, np.asarray(labels, np.int64), names, groups), tuple(classes)


def split_by_group(s: ImageSet, val_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Seeded split, stratified by class, keeping each group (study/patient) on one side."""
    rng = np.random.default_rng(seed)
    val_groups: set[str] = set()
    for c in np.unique(s.labels):
        gs = sorted({g for g, l in zip(s.groups, s.labels) if l == c})
        rng.shuffle(gs)
        k = max(1, int(round(val_fraction * len(gs)))) if len(gs) > 1 else 0
        val_groups.update(gs[:k])

    def pick(keep: bool) -> ImageSet:
        ix = [i for i, g in enumerate(s.groups) if (g in val_groups) == keep]
        return ImageSet([s.images[i] for i in ix], s.labels[ix], [s.names[i] for i in ix], [s.groups[i] for i in ix])

    return pick(False), pick(True)


def extra_covid_images(root: Path, per_volume: int = 10, min_lesion_fraction: float = 0.005
                       ) -> tuple[list[np.ndarray], list[str], str]:
    """Extra COVID-19 training images from ``root``.

    A COVID-SemiSeg folder (``train/Imgs`` + ``pseudo/Imgs`` with ``pseudo/GT``) gives all of
    ``train/Imgs`` (radiologist-labelled lesion slices) and, per pseudo-labelled volume, up to
    ``per_volume`` evenly spaced slices whose mask covers at least ``min_lesion_fraction`` of
    the image (slices with visible lesions; a COVID patient's lesion-free slice is no COVID
    example). Any other folder: every image in it (recursively).
    """
    import cv2
    import re

    files: list[Path] = []
    if (root / "train" / "Imgs").is_dir() and (root / "pseudo" / "Imgs").is_dir():
        files += _images_in(root / "train" / "Imgs")
        n_train = len(files)
        by_vol: dict[str, list[tuple[int, Path]]] = {}
        for f in _images_in(root / "pseudo" / "Imgs"):
            m = re.match(r"(.+)_(\d+)$", f.stem)
            if m:
                by_vol.setdefault(m.group(1), []).append((int(m.group(2)), f))
        for vol, items in sorted(by_vol.items()):
            lesion = []
            for k, f in sorted(items):
                gt = cv2.imread(str(root / "pseudo" / "GT" / f"{f.stem}.png"), cv2.IMREAD_GRAYSCALE)
                if gt is not None and (gt > 127).mean() >= min_lesion_fraction:
                    lesion.append(f)
            if lesion:
                pick = sorted({int(round(j)) for j in np.linspace(0, len(lesion) - 1, min(per_volume, len(lesion)))})
                files += [lesion[j] for j in pick]
        note = (f"{root.name}: {n_train} labelled slices + {len(files) - n_train} pseudo-labelled lesion slices "
                f"from {len(by_vol)} volumes (<= {per_volume} per volume, mask >= {min_lesion_fraction:.1%} of the image)")
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        note = f"{root.name}: {len(files)} images"
    if not files:
        raise DataError(f"{root}: no images for --extra-covid")
    imgs, names = [], []
    for f in files:
        try:
            imgs.append(_shrink(C.read_gray_image(f)))
            names.append(f"extra/{f.name}")
        except ValueError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
    return imgs, names, note


def extra_study_slices(study: Path, n: int = 40) -> tuple[list[np.ndarray], list[str], str]:
    """Training slices of one DICOM study, rendered exactly as the app renders its input.

    Slices go through the app's own path (:func:`ctscreen.io.dicom.load_series`, the thorax
    box of the whole volume, :func:`ctscreen.inference.preprocess.hu_to_unit`). When a slice
    label table ``<study>.labels.csv`` (beside the folder) or ``<study>/labels.csv`` with an
    ``infection`` column exists (the COVID-CT-MD layout), only slices labelled infected are
    taken - a pneumonia study's clear slices are no example of its class; otherwise the
    lung-containing slices. At most ``n``, evenly spaced.
    """
    import csv

    from ctscreen.imaging.lungmask import lung_mask
    from ctscreen.inference.preprocess import hu_to_unit, thorax_box
    from ctscreen.io.dicom import load_series

    study = Path(study)
    if not study.is_dir():
        raise DataError(f"{study}: not a DICOM study folder (--extra-study CLASS=FOLDER)")
    vol = load_series(study)
    table = next((t for t in (study.parent / f"{study.name}.labels.csv", study / "labels.csv") if t.is_file()), None)
    if table is not None:
        with open(table, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "infection" not in rows[0]:
            raise DataError(f"{table}: slice label table without an 'infection' column")
        by_uid = {r.get("sop_instance_uid", ""): r for r in rows}
        by_num = {str(r.get("instance_number", "")): r for r in rows}
        idx = []
        for k in range(vol.hu.shape[0]):
            uid = vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else ""
            num = vol.instance_numbers[k] if k < len(vol.instance_numbers) else None
            r = by_uid.get(uid) or by_num.get(str(num))
            if r is not None and str(r["infection"]).strip() not in ("", "0"):
                idx.append(k)
        how = f"slices labelled infected in {table.name}"
    else:
        lung = lung_mask(vol)
        plane = lung.shape[1] * lung.shape[2]
        idx = [int(k) for k in np.flatnonzero((lung > 0).reshape(len(lung), -1).sum(axis=1) >= 0.03 * plane)]
        how = "lung-containing slices (no slice labels)"
    if not idx:
        raise DataError(f"{study}: no usable slices ({how})")
    pick = sorted({idx[int(round(j))] for j in np.linspace(0, len(idx) - 1, min(n, len(idx)))})
    y0, y1, x0, x1 = thorax_box(vol.hu)
    imgs = [_shrink(hu_to_unit(vol.hu[k, y0:y1, x0:x1])) for k in pick]
    return imgs, [f"study/{study.name}#{k}" for k in pick], f"{study.name}: {len(pick)} of {len(idx)} {how}"


# ---------------------------------------------------------------- augmentation

#: What ``--augment figure`` adds to the standard augmentation (model cards quote it).
FIGURE_AUGMENTATION = ("'figure' augmentation, each with p 0.25, to every class alike: down- and re-upscaling "
                       "(35-80 %), JPEG re-encoding (quality 15-60), a plain margin on 1-2 sides (3-12 %), "
                       "1-4 text-like bars / arrow strokes (black or white)")


def figure_like(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Make a clean [0, 1] CT rendering look more like a figure cut from a paper (and vice versa).

    The UCSD COVID class is mostly paper figures (low resolution, JPEG, margins, labels and
    arrows) and its non-COVID class mostly clean renderings, so "clean rendering" alone
    predicts non-COVID there. Applying these artefacts at random to every image of every
    class takes that shortcut away. Square ``img`` in, same shape out.
    """
    import cv2

    out = img.astype(np.float32, copy=True)
    n = out.shape[0]
    if rng.random() < 0.25:  # resolution loss
        f = rng.uniform(0.35, 0.8)
        small = cv2.resize(out, (max(8, round(n * f)), max(8, round(n * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (n, n), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.25:  # JPEG artefacts
        ok, enc = cv2.imencode(".jpg", np.clip(out * 255, 0, 255).astype(np.uint8),
                               [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 61))])
        if ok:
            out = cv2.imdecode(enc, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    if rng.random() < 0.25:  # a plain page margin
        v = float(rng.choice([0.0, 1.0]))
        for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            m = int(round(n * rng.uniform(0.03, 0.12)))
            if side == 0:
                out[:m] = v
            elif side == 1:
                out[-m:] = v
            elif side == 2:
                out[:, :m] = v
            else:
                out[:, -m:] = v
    if rng.random() < 0.25:  # labels and arrows
        for _ in range(int(rng.integers(1, 5))):
            v = float(rng.choice([0.0, 1.0]))
            x0, y0 = int(rng.integers(0, n)), int(rng.integers(0, n))
            if rng.random() < 0.5:  # a text-like bar
                w, h = int(rng.integers(n // 20, n // 5)), int(rng.integers(n // 40 + 1, n // 16 + 2))
                out[y0:y0 + h, x0:x0 + w] = v
            else:  # an arrow stroke
                a = rng.uniform(0, 2 * math.pi)
                ln = rng.uniform(0.05, 0.15) * n
                x1, y1 = int(x0 + ln * math.cos(a)), int(y0 + ln * math.sin(a))
                cv2.arrowedLine(out, (x0, y0), (x1, y1), v, max(1, n // 100), tipLength=0.4)
    return out


#: Side of the stored lesion masks used to centre lesion crops (pixels, stretched to the image).
LESION_MASK_SIDE = 64
#: A lesion crop's side as a share of the image's shorter side (uniform in this range).
LESION_CROP_SIDE = (0.3, 0.6)
#: What ``--lesion-crops P`` adds (model cards quote it).
LESION_CROP_AUGMENTATION = ("lesion-centred zoom, p {p}: a square crop of {lo:.0%}-{hi:.0%} of the shorter side "
                            "(aspect 3:4-4:3) centred on a random lesion pixel of the shipped segmentation's mask "
                            "(+-10 % jitter), or on a random point of the central half of a lesion-free image - "
                            "every class alike, so zoom is no class cue; the app scores the same kind of view "
                            "(ctscreen.inference.classifier.lesion_focus_inputs)")


def lesion_masks(images: list[np.ndarray], device: str | torch.device = "cpu",
                 progress: ProgressBar | None = None, full_size: bool = False) -> list[np.ndarray]:
    """The shipped segmentation's lesion mask of each [0, 1] training image, as a
    ``LESION_MASK_SIDE``-square bool array stretched over the image (what :func:`augment`
    centres its lesion crops on), or at the image's own size (``full_size``). Images go
    through the same 8-bit path as ``ctscreen evaluate``; one view (no flip TTA)."""
    import cv2

    from ctscreen.inference.models import load_model
    from ctscreen.inference.preprocess import image_to_model_input
    from ctscreen.inference.segment import labels_from_probs, predict_tensor

    model = load_model(None, device=device)
    out: list[np.ndarray] = []
    for i in range(0, len(images), 16):
        chunk = images[i:i + 16]
        x = torch.from_numpy(np.stack([image_to_model_input(np.clip(im * 255.0, 0, 255)) for im in chunk]))
        probs = predict_tensor(model, x.to(model.device), tta=1).cpu().numpy()
        for pr in probs:
            lab = (labels_from_probs(pr) > 0).astype(np.uint8)
            if full_size:
                h, w = chunk[len(out) - i].shape
                out.append(cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST) > 0)
            else:
                out.append(cv2.resize(lab, (LESION_MASK_SIDE, LESION_MASK_SIDE), interpolation=cv2.INTER_AREA) > 0)
        if progress:
            progress.update("lesion masks", min(1.0, (i + 16) / max(1, len(images))))
    return out


def focus_box(h: int, w: int, lesion: np.ndarray | None, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A lesion-centred crop ``(y0, x0, ch, cw)`` of an ``h`` x ``w`` image (see
    :data:`LESION_CROP_AUGMENTATION`)."""
    side = rng.uniform(*LESION_CROP_SIDE) * min(h, w)
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = max(8, min(h, int(round(side / math.sqrt(aspect)))))
    cw = max(8, min(w, int(round(side * math.sqrt(aspect)))))
    pts = np.argwhere(lesion) if lesion is not None else np.zeros((0, 2))
    if len(pts):
        py, px = pts[int(rng.integers(0, len(pts)))]
        cy = (py + 0.5) / lesion.shape[0] * h + rng.uniform(-0.1, 0.1) * ch
        cx = (px + 0.5) / lesion.shape[1] * w + rng.uniform(-0.1, 0.1) * cw
    else:
        cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    y0 = int(np.clip(round(cy - ch / 2), 0, h - ch))
    x0 = int(np.clip(round(cx - cw / 2), 0, w - cw))
    return y0, x0, ch, cw


def augment(img: np.ndarray, size: int, rng: np.random.Generator, figure: bool = False,
            quarter_turns: bool = False, lesion: np.ndarray | None = None,
            lesion_crop: float = 0.0) -> np.ndarray:
    """One augmented ``(size, size)`` sample of a [0, 1] image (see the module docstring).

    ``figure`` adds :func:`figure_like` artefacts (before the intensity changes);
    ``quarter_turns`` turns the sample by a random multiple of 90 degrees (every class alike);
    with probability ``lesion_crop`` the crop is :func:`focus_box` on the image's ``lesion`` mask.
    """
    import cv2

    h, w = img.shape
    if lesion_crop and rng.random() < lesion_crop:
        y0, x0, ch, cw = focus_box(h, w, lesion, rng)
    else:
        area = rng.uniform(0.6, 1.0) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = min(h, int(round(math.sqrt(area / aspect))))
        cw = min(w, int(round(math.sqrt(area * aspect))))
        y0 = int(rng.integers(0, h - ch + 1))
        x0 = int(rng.integers(0, w - cw + 1))
    angle = rng.uniform(-15, 15)
    # crop box -> output square, rotated about the centre
    cx, cy = x0 + cw / 2.0, y0 + ch / 2.0
    sx, sy = size / cw, size / ch
    rot = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, 1.0)
    aff = np.array([[sx, 0, size / 2.0 - sx * cx], [0, sy, size / 2.0 - sy * cy], [0, 0, 1]])
    m = (np.vstack([rot, [0, 0, 1]]) @ aff)[:2]
    interp = cv2.INTER_AREA if min(cw, ch) > size * 1.5 else cv2.INTER_LINEAR
    src = img
    if interp == cv2.INTER_AREA:  # pre-shrink so the affine warp does not alias
        f = size / min(cw, ch)
        src = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        m = m @ np.array([[1 / f, 0, 0], [0, 1 / f, 0], [0, 0, 1]])
    out = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if quarter_turns:
        out = np.rot90(out, int(rng.integers(0, 4)))
    if figure:
        out = figure_like(np.ascontiguousarray(out), rng)
    mean = float(out.mean())
    out = (out - mean) * math.exp(rng.uniform(math.log(0.75), math.log(1.33))) + mean + rng.uniform(-0.08, 0.08)
    out = np.clip(out, 0.0, 1.0) ** math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.3:
        out = out + rng.normal(0.0, rng.uniform(0.005, 0.04), out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def plain_inputs(images: list[np.ndarray], size: int) -> np.ndarray:
    """Evaluation inputs: the whole image resized (no crop), ``(n, 1, size, size)``."""
    return np.stack([C.unit_to_input(im, size)[None] for im in images]).astype(np.float32)


# ---------------------------------------------------------------- metrics

def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN with one class."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, np.float64)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = 0.5 * (i + j) + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, F1 / precision / recall of the positive class, ROC AUC."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(p) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"accuracy": float((pred == y).mean()) if len(y) else float("nan"), "f1": f1,
            "precision": prec, "recall": rec, "auc": roc_auc(y, p), "n": int(len(y))}


def bootstrap_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """Percentile 95 % bootstrap intervals (images resampled, stratified by class) of accuracy, F1 and AUC."""
    rng = np.random.default_rng(seed)
    y = np.asarray(y).astype(bool)
    p = np.asarray(p)
    ipos, ineg = np.flatnonzero(y), np.flatnonzero(~y)
    acc, f1, auc = [], [], []
    for _ in range(n_boot):
        ix = np.concatenate([rng.choice(ipos, len(ipos)), rng.choice(ineg, len(ineg))])
        m = binary_metrics(y[ix], p[ix])
        acc.append(m["accuracy"])
        f1.append(m["f1"])
        auc.append(m["auc"])
    q = lambda v: [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]  # noqa: E731
    return {"accuracy": q(acc), "f1": q(f1), "auc": q(auc)}


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    pred = probs.argmax(axis=1)
    out: dict[str, Any] = {"accuracy": float((pred == y).mean()), "n": int(len(y))}
    if "covid19" in classes:
        ci = classes.index("covid19")
        b = binary_metrics(y == ci, probs[:, ci])
        out.update({"f1_covid": b["f1"], "auc_covid": b["auc"]})
    out["confusion"] = [[int(((y == a) & (pred == b)).sum()) for b in range(len(classes))] for a in range(len(classes))]
    return out


# ---------------------------------------------------------------- training

def _predict(net: C.SliceClassifier, x: np.ndarray, device: torch.device, bs: int = 32, tta: bool = True) -> np.ndarray:
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), bs):
            t = torch.from_numpy(x[i:i + bs]).to(device)
            p = F.softmax(net(t).float(), dim=1)
            if tta:
                p = 0.5 * (p + F.softmax(net(torch.flip(t, dims=[3])).float(), dim=1))
            out.append(p.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, net.config["num_classes"]), np.float32)


def _score(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...]) -> tuple[float, dict[str, Any]]:
    """(selection key, metrics): AUC of COVID for a binary model, accuracy otherwise."""
    if len(classes) == 2:
        pos = classes.index("covid19") if "covid19" in classes else 0
        m = binary_metrics(y == pos, probs[:, pos])
        return m["auc"] + 1e-3 * m["accuracy"], m
    m = multiclass_metrics(y, probs, classes)
    return m["accuracy"], m


def train_classifier(data: Path, out: Path, head: str = "cosine", init: str = "seg-encoder",
                     minutes: float | None = None, epochs: int | None = None, seed: int = 0,
                     device: str = "auto", size: int = C.INPUT_SIZE, batch_size: int = 32, lr: float = 1e-3,
                     val_fraction: float = 0.2, threads: int | None = None, quiet: bool = False,
                     command: str = "", log: Any = None, extra_covid: list[Path] | None = None,
                     extra_studies: list[tuple[str, Path]] | None = None, extra_repeat: int = 1,
                     figure_aug: bool = False, ema: float = 0.0, select: str = "best",
                     quarter_turns: bool = False, lesion_crops: float = 0.0) -> dict[str, Any]:
    """Train a classifier on ``data`` and write ``out`` (.pt) with its model card (.md, .json).

    ``init`` is ``seg-encoder``, ``none`` or a classifier ``.pt`` to fine-tune (tensors whose
    shapes match are copied: a binary model can start a three-way one). ``extra_covid`` folders
    add COVID-19 images to the *training* part only (see :func:`extra_covid_images`);
    ``extra_studies`` (``(class, DICOM folder)`` pairs) add slices of whole studies, rendered
    as the app renders them, to the training part only (see :func:`extra_study_slices`), each
    slice ``extra_repeat`` times per epoch. A binary ``covid19``/``non_covid`` model takes
    ``other_pneumonia`` and ``no_pneumonia`` studies as ``non_covid``. ``figure_aug`` adds
    :func:`figure_like` artefacts to the augmentation. ``ema`` (e.g. 0.98) validates and keeps an
    exponential moving average of the weights (BatchNorm statistics copied) instead of the raw
    ones - smoother on small data than any single step; ``select`` is ``best`` (the epoch with
    the best validation AUC/accuracy) or ``last`` (the final epoch: the validation figures are
    then unbiased by selection). ``quarter_turns`` adds random 90-degree turns to every
    training sample: COVID-SemiSeg's slices are stored turned by 90 degrees (spine left or
    right), UCSD's and the app's upright, so without it orientation is a class cue that
    means nothing on the app's own slices. ``lesion_crops`` (0-1) is the share of samples
    zoomed onto a lesion (see :func:`focus_box`); their masks come from the shipped segmentation.
    """
    if not 0.0 <= float(lesion_crops) <= 1.0:
        raise DataError(f"--lesion-crops must be in [0, 1], not {lesion_crops}")
    if select not in ("best", "last"):
        raise DataError(f"select must be 'best' or 'last', not {select!r}")
    if not 0.0 <= float(ema) < 1.0:
        raise DataError(f"--ema must be in [0, 1) (0: off), not {ema}")
    t_start = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    bar = ProgressBar(enabled=not quiet)
    data = Path(data)
    if not data.is_dir():
        raise DataError(f"{data}: not a folder - give the folder holding one sub-folder per class (or train/ and val/)")
    if (data / "train").is_dir() and (data / "val").is_dir():
        tr, classes = load_folder(data / "train", progress=bar)
        va, _ = load_folder(data / "val", classes, progress=bar)
        split = f"given split: {data.name}/train ({len(tr.images)} images) / {data.name}/val ({len(va.images)} images)"
    else:
        full, classes = load_folder(data, progress=bar)
        tr, va = split_by_group(full, val_fraction, seed)
        split = (f"seeded ({seed}) split by study/image, stratified: {len(set(tr.groups))} train / "
                 f"{len(set(va.groups))} val groups ({len(tr.images)} / {len(va.images)} images)")
    extra_note = []
    for ex in extra_covid or []:
        if "covid19" not in classes:
            raise DataError(f"--extra-covid needs a covid class folder in {data}")
        imgs, names, note = extra_covid_images(Path(ex))
        ci = classes.index("covid19")
        tr = ImageSet(tr.images + imgs, np.concatenate([tr.labels, np.full(len(imgs), ci, np.int64)]),
                      tr.names + names, tr.groups + names)
        extra_note.append(note)
    study_note = []
    for cls_name, folder in extra_studies or []:
        key = C.canonical_class(cls_name)
        if key not in classes and key in ("other_pneumonia", "no_pneumonia") and "non_covid" in classes:
            key = "non_covid"
        if key not in classes:
            raise DataError(f"--extra-study {cls_name}={folder}: class {key!r} is not one of {', '.join(classes)}")
        imgs, names, note = extra_study_slices(Path(folder))
        reps = max(1, int(extra_repeat))
        ci = classes.index(key)
        tr = ImageSet(tr.images + imgs * reps, np.concatenate([tr.labels, np.full(len(imgs) * reps, ci, np.int64)]),
                      tr.names + names * reps, tr.groups + names * reps)
        study_note.append(f"{note} -> {key}" + (f" (x{reps} per epoch)" if reps > 1 else ""))
    if len(np.unique(tr.labels)) < 2:
        raise DataError(f"{data}: the training part needs images of at least two classes")
    masks = lesion_masks(tr.images, dev, bar) if lesion_crops else [None] * len(tr.images)
    net = C.SliceClassifier(num_classes=len(classes), head=head).to(dev)
    init_note = "random (He) initialisation"
    if init == "seg-encoder":
        from ctscreen.inference.models import model_path
        unet = torch.load(model_path("unet"), map_location="cpu", weights_only=True)
        n = net.load_segmentation_encoder(unet["state_dict"])
        init_note = (f"encoder from the shipped segmentation UNet ({n} tensors, "
                     f"{unet.get('card', {}).get('version', 'unet')}; trained on COVID-SemiSeg slices)")
        net.to(dev)
    elif init != "none":
        src = Path(init)
        if not src.is_file():
            raise DataError(f"--init must be seg-encoder, none or a classifier .pt file; {init!r} is none of these")
        blob = torch.load(src, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != C.FORMAT:
            raise DataError(f"{src}: not a ctscreen classifier file to fine-tune")
        if "ensemble" in (blob.get("config") or {}):
            raise DataError(f"{src}: an ensemble of classifiers cannot be fine-tuned as one network - "
                            "give one of its member files (ensemble-classifier's inputs) to --init")
        own = net.state_dict()
        take = {k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()
                if k in own and own[k].shape == v.shape}
        own.update(take)
        net.load_state_dict(own)
        net.to(dev)
        init_note = (f"fine-tuned from classifier {src.name} ({(blob.get('card') or {}).get('version', '?')}; "
                     f"{len(take)} of {len(own)} tensors copied)")
    enc_params = [p for n_, p in net.named_parameters() if n_.startswith("enc.")]
    head_params = [p for n_, p in net.named_parameters() if not n_.startswith("enc.")]
    enc_lr = lr * (1.0 if init == "none" else 0.3)
    opt = torch.optim.AdamW([{"params": enc_params, "lr": enc_lr, "base": enc_lr},
                             {"params": head_params, "lr": lr, "base": lr}], weight_decay=5e-4)
    # class-balanced sampling weights via the loss
    counts = np.bincount(tr.labels, minlength=len(classes)).astype(np.float64)
    cw = torch.tensor(counts.sum() / (len(classes) * np.maximum(counts, 1)), dtype=torch.float32, device=dev)
    xv = plain_inputs(va.images, size) if len(va.images) else np.zeros((0, 1, size, size), np.float32)
    if epochs is None and minutes is None:
        epochs = 30
    n_tr = len(tr.images)
    steps_per_epoch = max(1, math.ceil(n_tr / batch_size))
    best_key, best_state, best_epoch = -1e9, None, -1
    history = []
    epoch = 0
    t_train = time.time()

    def frac_done() -> float:
        fe = epoch / epochs if epochs else 0.0
        ft = (time.time() - t_train) / (60.0 * minutes) if minutes else 0.0
        return min(1.0, max(fe, ft))

    warm = 1  # epochs of linear warm-up
    avg = copy.deepcopy(net) if ema else None  # the EMA weights, validated and kept instead of net's
    step = 0
    while True:
        if epochs and epoch >= epochs:
            break
        if minutes and time.time() - t_train >= 60.0 * minutes and epoch > 0:
            break
        net.train()
        order = rng.permutation(n_tr)
        tot, nb = 0.0, 0
        for b in range(steps_per_epoch):
            ix = order[b * batch_size:(b + 1) * batch_size]
            if len(ix) < 2:
                continue
            f = frac_done()
            factor = min(1.0, (epoch + b / steps_per_epoch + 1e-3) / warm) * 0.5 * (1 + math.cos(math.pi * f))
            for g in opt.param_groups:
                g["lr"] = g["base"] * max(factor, 0.02)
            x = torch.from_numpy(np.stack([augment(tr.images[i], size, rng, figure=figure_aug, quarter_turns=quarter_turns,
                                                   lesion=masks[i], lesion_crop=lesion_crops)[None] for i in ix])).to(dev)
            y = torch.from_numpy(tr.labels[ix]).to(dev)
            loss = F.cross_entropy(net(x), y, weight=cw, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if avg is not None:
                d = min(float(ema), (1.0 + step) / (10.0 + step))
                with torch.no_grad():
                    for pa, pn in zip(avg.parameters(), net.parameters()):
                        pa.mul_(d).add_(pn.detach(), alpha=1.0 - d)
                    for ba, bn in zip(avg.buffers(), net.buffers()):
                        ba.copy_(bn)
            tot += float(loss.detach())
            nb += 1
            bar.update(f"epoch {epoch + 1}", frac_done(), message=f"loss {tot / max(nb, 1):.3f}")
        epoch += 1
        row: dict[str, Any] = {"epoch": epoch, "loss": round(tot / max(nb, 1), 4),
                               "seconds": round(time.time() - t_train, 1)}
        judged = avg if avg is not None else net
        if hasattr(judged.head, "scale"):
            row["scale"] = round(judged.head.scale, 3)
        if len(va.images):
            probs = _predict(judged, xv, dev)
            key, m = _score(va.labels, probs, classes)
            row.update({k: round(v, 4) for k, v in m.items() if isinstance(v, float)})
            if key > best_key or select == "last":
                best_key, best_epoch = key, epoch
                best_state = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
                # keep the best so far on disk, so an interrupted run still leaves usable weights
                C.save_classifier(judged, classes, out, {"interim": True, "input_size": size, "epoch": epoch,
                                                         "validation": m, "command": command})
        history.append(row)
        if log is not None:
            print(json.dumps(row), file=log, flush=True)
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    elif avg is not None:  # no validation part: keep the averaged weights
        net.load_state_dict(avg.state_dict())
    final = {}
    per_image = []
    if len(va.images):
        probs = _predict(net, xv, dev)
        if len(classes) == 2:
            pos = classes.index("covid19") if "covid19" in classes else 0
            yb = va.labels == pos
            final = binary_metrics(yb, probs[:, pos])
            final["ci95"] = bootstrap_ci(yb, probs[:, pos], seed=seed)
        else:
            final = multiclass_metrics(va.labels, probs, classes)
        per_image = [{"file": n_, "label": classes[int(l_)], "p": [round(float(v), 4) for v in pr]}
                     for n_, l_, pr in zip(va.names, va.labels, probs)]
    card = {
        "name": Path(out).stem, "version": f"classifier-{time.strftime('%Y%m%d')}-{git_commit()[:8]}",
        "ctscreen_version": __version__, "classes": list(classes), "input_size": size,
        "architecture": "UNet encoder (16-32-64-128-256) + avg/max pool + 128-d embedding + "
                        + ("cosine (NormFace) head, learned scale" if head == "cosine" else "linear head"),
        "head": head, "init": init, "init_note": init_note,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "intensity": "8-bit lung-window image / 255; DICOM: HU window [-1080, 255] -> [0, 1] after the thorax crop "
                     "(ctscreen.inference.preprocess)",
        "data": {"root": str(data), "split": split, "classes": list(classes), "extra_covid_training": extra_note,
                 "extra_study_training": study_note,
                 "train_counts": {c: int((tr.labels == i).sum()) for i, c in enumerate(classes)},
                 "val_counts": {c: int((va.labels == i).sum()) for i, c in enumerate(classes)}},
        "augmentation": ("random resized crop (60-100 % area, aspect 3:4-4:3), rotation +-15 deg, left-right flip, "
                         "contrast x0.75-1.33, brightness +-0.08, gamma 0.7-1.4, Gaussian blur p0.3, noise p0.3; "
                         "seeded numpy generator") + (f"; {FIGURE_AUGMENTATION}" if figure_aug else "")
                        + ("; random quarter turns (0/90/180/270 deg) of every sample" if quarter_turns else "")
                        + ("; " + LESION_CROP_AUGMENTATION.format(p=lesion_crops, lo=LESION_CROP_SIDE[0],
                                                                   hi=LESION_CROP_SIDE[1]) if lesion_crops else ""),
        "lesion_crops": float(lesion_crops),
        "recipe": {"optimizer": "AdamW, weight decay 5e-4", "lr_head": lr, "lr_encoder": enc_lr,
                   "schedule": "1 warm-up epoch, cosine decay", "loss": "class-weighted cross-entropy, label smoothing 0.1",
                   "batch_size": batch_size, "epochs_run": epoch, "epochs": epochs, "minutes": minutes, "seed": seed,
                   "selection": ("best validation AUC (binary) / accuracy (multi-class) over epochs"
                                 if select == "best" else "last epoch (no selection on validation)"),
                   "ema": (f"exponential moving average of the weights, decay {ema} (warm-up (1+t)/(10+t)), "
                           "BatchNorm statistics copied; the averaged weights are validated and kept")
                   if ema else "none",
                   "best_epoch": best_epoch},
        "command": command, "git_commit": git_commit(),
        "hardware": f"{describe_device(dev)}; {platform.processor() or platform.machine()}, "
                    f"torch threads {torch.get_num_threads()}",
        "training_seconds": round(time.time() - t_train, 1), "total_seconds": round(time.time() - t_start, 1),
        "validation": {k: v for k, v in final.items()},
        "validation_protocol": "whole image resized to input size, left-right flip TTA, threshold 0.5; "
                               "95 % CIs: 2000 stratified bootstrap resamples of the validation images. "
                               + ("The checkpoint was selected on this same validation set, so these figures are "
                                  "optimistic; the held-out test split is the unbiased measure." if select == "best"
                                  else "The last epoch is kept (no selection on this set)."),
        "history": history,
        "notice": RESEARCH_NOTICE,
    }
    C.save_classifier(net, classes, out, card)
    write_card(Path(out), card)
    return {"card": card, "per_image": per_image}


def _fmt_ci(card_val: dict[str, Any], key: str) -> str:
    v = card_val.get(key)
    ci = card_val.get("ci95", {}).get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def write_card(out: Path, card: dict[str, Any], force: bool = True) -> None:
    """``<out>.md`` (human) and ``<out>.json`` (machine) beside the weights, written atomically.

    ``force`` (default) replaces an existing card: it belongs to the weights file, whose
    overwriting the caller has already allowed (``train-classifier --force``).
    """
    from ctscreen.io.files import atomic_write

    v = card.get("validation", {})
    lines = [
        f"# Model card: {card['name']} (screening classifier)", "",
        f"**{RESEARCH_NOTICE}**", "",
        f"- Version: `{card['version']}` (ctscreen {card['ctscreen_version']}, commit `{card['git_commit']}`)",
        f"- Classes: {', '.join(card['classes'])}",
        f"- Architecture: {card['architecture']}; {card['parameters']:,} parameters; input {card['input_size']} px, 1 channel",
        f"- Initialisation: {card['init_note']}",
        f"- Intensity: {card['intensity']}",
        "", "## Data", "",
        f"- Folder: `{card['data']['root']}`",
        f"- Split: {card['data']['split']}",
        *[f"- Extra COVID-19 training images (never validated on): {n}" for n in card['data'].get('extra_covid_training', [])],
        *[f"- Extra DICOM study slices (training only; these studies' own verdicts are therefore training-set "
          f"figures): {n}" for n in card['data'].get('extra_study_training', [])],
        f"- Training images per class: {card['data']['train_counts']}",
        f"- Validation images per class: {card['data']['val_counts']}",
        f"- Augmentation: {card['augmentation']}",
        "", "## Training", "",
        f"- Command: `{card['command']}`",
        f"- Recipe: {json.dumps(card['recipe'])}",
        f"- Hardware: {card['hardware']}; {card['training_seconds']} s training",
        "", "## Validation", "",
        f"- Protocol: {card['validation_protocol']}",
    ]
    if "auc" in v:
        lines += [f"- Accuracy: {_fmt_ci(v, 'accuracy')}", f"- F1 (COVID-19): {_fmt_ci(v, 'f1')}",
                  f"- ROC AUC: {_fmt_ci(v, 'auc')}", f"- Images: {v.get('n')}"]
    elif v:
        lines += [f"- {k}: {val}" for k, val in v.items()]
    v1 = card.get("validation_no_tta") or {}
    if "auc" in v1:
        lines += [f"- Without the flip (as study verdicts score an ensemble): accuracy {_fmt_ci(v1, 'accuracy')}, "
                  f"F1 {_fmt_ci(v1, 'f1')}, ROC AUC {_fmt_ci(v1, 'auc')}"]
    v2 = card.get("validation_both_views") or {}
    if "auc" in v2:
        lines += [f"- Whole image + lesion view ({v2.get('protocol', '')}): accuracy {_fmt_ci(v2, 'accuracy')}, "
                  f"F1 {_fmt_ci(v2, 'f1')}, ROC AUC {_fmt_ci(v2, 'auc')}"]
    if card.get("study_protocol"):
        lines += [f"- Study protocol: {card['study_protocol']}"]
    lines += [f"- {n}" for n in card.get("notes") or []]
    bases = card.get("base_model") or []
    for b in [bases] if isinstance(bases, dict) else bases:  # earlier stages, added to the card by hand
        if "auc" in b.get("validation", {}):
            bv = b["validation"]
            lines += [f"- For comparison, {b.get('note') or 'the stage-1 model it was fine-tuned from (UCSD only)'} "
                      f"({b.get('version')}): accuracy {_fmt_ci(bv, 'accuracy')}, F1 {_fmt_ci(bv, 'f1')}, "
                      f"ROC AUC {_fmt_ci(bv, 'auc')}"]
    lines += ["", "## Limitations", "",
              "- Slice-level model on 2-D images; study verdicts pool slice scores (see ctscreen.inference.classifier).",
              "- Public influenza-A CT is not available: a COVID-19 vs non-COVID model cannot tell influenza from "
              "other pneumonia. Train a three-way model on your own studies with `ctscreen train-classifier`.", ""]
    atomic_write(out.with_suffix(".md"), "\n".join(lines).encode(), force=force)
    atomic_write(out.with_suffix(".json"), (json.dumps(card, indent=2) + "\n").encode(), force=force)


# ---------------------------------------------------------------- evaluation

#: How :func:`evaluate_folders` scores an image: the whole image, the lesion-focus view, or both averaged.
VIEWS = ("whole", "focus", "both")


def evaluate_folders(clf: C.LoadedClassifier, covid: Path, non_covid: Path, tta: bool = True,
                     view: str = "auto") -> dict[str, Any]:
    """Score every image of two folders with a loaded classifier.

    ``view``: ``whole`` (the image resized), ``focus`` (the view zoomed on the largest lesion
    piece the shipped segmentation finds in it, :func:`ctscreen.inference.classifier.focus_box`;
    the whole image when it finds none), ``both`` (their mean) or ``auto``:
    :data:`ctscreen.inference.classifier.IMAGE_VIEW` (``both``).
    """
    if view == "auto":
        view = C.IMAGE_VIEW
    if view not in VIEWS:
        raise DataError(f"view must be one of {', '.join(VIEWS)} or auto, not {view!r}")
    files, labels = [], []
    for folder, lab in ((Path(covid), 1), (Path(non_covid), 0)):
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        fs = _images_in(folder)
        if not fs:
            raise DataError(f"{folder}: no .png/.jpg images in this folder")
        files += fs
        labels += [lab] * len(fs)
    raw, ok_files, ok_labels, skipped = [], [], [], []
    for f, lab in zip(files, labels):
        try:
            raw.append(C.read_gray_image(f))
            ok_files.append(f)
            ok_labels.append(lab)
        except ValueError as exc:
            skipped.append(str(exc))
    size = clf.input_size
    probs = None
    if view in ("whole", "both"):
        x = np.stack([C.unit_to_input(im, size)[None] for im in raw]).astype(np.float32)
        probs = C.predict_batches(clf, x, batch_size=32, tta=tta)
    if view in ("focus", "both"):
        focus = []
        for im, m in zip(raw, lesion_masks(raw, clf.device, full_size=True)):
            fb = C.focus_box(m, (0, im.shape[0], 0, im.shape[1]))
            focus.append(C.unit_to_input(im if fb is None else im[fb[0]:fb[1], fb[2]:fb[3]], size)[None])
        pf = C.predict_batches(clf, np.stack(focus).astype(np.float32), batch_size=32, tta=tta)
        probs = pf if probs is None else 0.5 * (probs + pf)
    pos = clf.positive_index
    p = probs[:, pos]
    y = np.asarray(ok_labels, bool)
    m = binary_metrics(y, p)
    m["ci95"] = bootstrap_ci(y, p)
    return {"model": clf.name, "model_version": clf.version, "images": int(len(y)), "covid_images": int(y.sum()),
            "non_covid_images": int((~y).sum()), **m, "threshold": 0.5, "view": view, "skipped": skipped,
            "per_image": [{"file": f.name, "folder": "covid" if lab else "non_covid", "p_covid": round(float(q), 4)}
                          for f, lab, q in zip(ok_files, ok_labels, p)], "notice": RESEARCH_NOTICE}
