"""GGO vs consolidation: the network's split against HU bands inside the lesion mask; 1 vs 2 TTA views.

Research use, not for diagnosis. Prints one JSON object.

On the COVID-SemiSeg slices with radiologists' 3-class masks (``train/Imgs`` +
``train-multiclass/GT``), with the protocol of ``ctscreen evaluate`` (lesion
probability >= 0.5 at mask resolution, mean over images; an image where a class is
absent from both mask and prediction scores 1):

* lesion (union) Dice with 1, 2 and 4 flipped TTA views (the CPU default was 2);
* per-class Dice of the network's split (type = the larger of the two lesion
  probabilities) against a split by HU band within the same lesion mask
  (consolidation where the intensity, back-projected to HU through the calibrated
  window [-1080, 255], is at least the band's lower edge), for a few edges from the
  literature (-300, -200, -100 HU).

**The shipped weights were trained on all 50 slices** (model card): figures on them
favour the network over any rule that was not trained; the 10-slice validation split
of the validation runs (``docs/training-runs/r2_unet_np_val_s1.json``) is reported
apart but is a subset of that training set too. The reference measured in the same
run is the network's own split with the default views.

Usage: python benchmarks/lesion_split.py [--model unet|FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SEMISEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "covid-semiseg"
VAL_RUN = Path(__file__).resolve().parents[1] / "docs" / "training-runs" / "r2_unet_np_val_s1.json"
BANDS_HU = (-300.0, -200.0, -100.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    a = ap.parse_args()
    from ctscreen.inference.data import read_gray, read_mask_kind
    from ctscreen.inference.metrics import binary_scores
    from ctscreen.inference.models import load_model
    from ctscreen.inference.preprocess import HU_HIGH, HU_LOW, image_to_model_input
    from ctscreen.inference.segment import labels_from_probs, predict_tensor

    t0 = time.perf_counter()
    model = load_model(a.model, "cpu")
    val = set(json.loads(VAL_RUN.read_text())["data"]["labelled_val"])
    names = sorted((p.stem for p in (SEMISEG / "train" / "Imgs").glob("*.jpg")), key=int)
    rows: dict[str, list[dict]] = {}
    for name in names:
        img = read_gray(SEMISEG / "train" / "Imgs" / f"{name}.jpg")
        truth, multi = read_mask_kind(SEMISEG / "train-multiclass" / "GT" / f"{name}.png")
        if not multi:
            continue
        h, w = truth.shape
        x = torch.from_numpy(image_to_model_input(img, model.input_size)[None])
        hu = img.astype(np.float32) / 255.0 * (HU_HIGH - HU_LOW) + HU_LOW
        for views in (1, 2, 4):
            p = predict_tensor(model, x, tta=views)[0].numpy()
            up = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
            cls = labels_from_probs(up)
            lesion = cls > 0
            r = {"name": name, "val": name in val, "dice_lesion": binary_scores(lesion, truth > 0)["dice"],
                 "dice_ggo": binary_scores(cls == 1, truth == 1)["dice"],
                 "dice_consolidation": binary_scores(cls == 2, truth == 2)["dice"]}
            for band in BANDS_HU:
                cons = lesion & (hu >= band)
                r[f"hu{int(band)}_dice_ggo"] = binary_scores(lesion & ~cons, truth == 1)["dice"]
                r[f"hu{int(band)}_dice_consolidation"] = binary_scores(cons, truth == 2)["dice"]
            # the same bands on the radiologists' own lesion mask: the split alone, without the network's outline
            for band in BANDS_HU:
                cons = (truth > 0) & (hu >= band)
                r[f"gtmask_hu{int(band)}_dice_ggo"] = binary_scores((truth > 0) & ~cons, truth == 1)["dice"]
                r[f"gtmask_hu{int(band)}_dice_consolidation"] = binary_scores(cons, truth == 2)["dice"]
            rows.setdefault(f"tta{views}", []).append(r)

    def mean(rs: list[dict]) -> dict:
        keys = [k for k in rs[0] if k not in ("name", "val")]
        return {k: round(float(np.mean([r[k] for r in rs])), 4) for k in keys} | {"images": len(rs)}

    out = {"benchmark": "lesion_split", "model": f"{model.name} {model.version}",
           "note": "the shipped weights were trained on these 50 slices (val10 included): training-set figures",
           "reference": "network split, tta2 (the previous CPU default)"}
    for key, rs in rows.items():
        out[key] = {"all": mean(rs), "val10": mean([r for r in rs if r["val"]])}
    ref = out["tta2"]["all"]
    out["ratio_tta1_to_tta2_lesion_dice"] = round(out["tta1"]["all"]["dice_lesion"] / ref["dice_lesion"], 4)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
