"""``ctscreen evaluate``: score a model on image/mask pairs.

Protocol: each image (an 8-bit lung-window slice cropped to the thorax, as in
COVID-SemiSeg) is fed through :func:`ctscreen.inference.preprocess.image_to_model_input`;
the lesion probability (GGO + consolidation, averaged over 4 flipped views)
is resized to the mask's resolution and thresholded at 0.5. Dice, IoU,
sensitivity and specificity are computed per image and averaged. Masks are
0/255 binary or 0/1/2 multi-class (then Dice per class is reported too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ctscreen.errors import CtscreenError
from ctscreen.inference.data import paired_files, read_gray, read_mask_kind
from ctscreen.inference.metrics import binary_scores, mean_scores
from ctscreen.inference.models import LoadedModel, load_model
from ctscreen.inference.preprocess import image_to_model_input
from ctscreen.inference.segment import labels_from_probs, predict_tensor


class EvaluationInputError(CtscreenError):
    """Images and masks do not pair up."""


def evaluate(images: Path, masks: Path, model: LoadedModel, batch_size: int = 8,
             tta: int = 4) -> dict[str, Any]:
    """Score ``model`` on every image in ``images`` against the same-stem mask in ``masks``."""
    images, masks = Path(images), Path(masks)
    for d in (images, masks):
        if not d.is_dir():
            raise EvaluationInputError(f"{d}: not a folder")
    pairs, no_mask, no_image = paired_files(images, masks)
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"images without a mask in {masks}: {', '.join(no_mask[:20])}" + (" ..." if len(no_mask) > 20 else ""))
        if no_image:
            parts.append(f"masks without an image in {images}: {', '.join(no_image[:20])}" + (" ..." if len(no_image) > 20 else ""))
        raise EvaluationInputError("image and mask names do not match (same file stem expected); " + "; ".join(parts))
    if not pairs:
        raise EvaluationInputError(f"{images}: no .jpg/.png images found")
    rows: list[dict[str, float]] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        grays = [read_gray(p) for p, _ in chunk]
        x = torch.from_numpy(np.stack([image_to_model_input(g, model.input_size) for g in grays])).to(model.device)
        prob = predict_tensor(model, x, tta=tta).cpu().numpy()
        for (ip, mp), p in zip(chunk, prob):
            truth, is_mc = read_mask_kind(mp)
            h, w = truth.shape
            up = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
            cls = labels_from_probs(up)
            r = binary_scores(cls > 0, truth > 0)
            if is_mc:
                r["dice_ggo"] = binary_scores(cls == 1, truth == 1)["dice"]
                r["dice_consolidation"] = binary_scores(cls == 2, truth == 2)["dice"]
            rows.append(r)
    m = mean_scores(rows)
    return {
        "model": model.name, "model_version": model.version, "device": str(model.device),
        "images": len(rows), "threshold": 0.5, "tta_views": tta,
        **{k: round(v, 4) for k, v in m.items()},
    }


def run_evaluate(args) -> int:
    model = load_model(args.model, args.device)
    res = evaluate(Path(args.images), Path(args.masks), model)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"model {res['model']} ({res['model_version']}) on {res['device']}, {res['images']} images, threshold 0.5")
        for k in ("dice", "iou", "sensitivity", "specificity", "dice_ggo", "dice_consolidation"):
            if k in res:
                print(f"  {k:<20} {res[k]:.4f}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(0)
