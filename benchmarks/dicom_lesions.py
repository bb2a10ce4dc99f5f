"""Lesion detection on real DICOM against the radiologists' slice labels.

For each series: run the app's analysis (``ctscreen.inference.pipeline``,
no Grad-CAM) and score the per-slice predicted lesion area against the
slice-level infection labels (``*.labels.csv``, keyed by SOPInstanceUID) with
the area under the ROC curve; for series without labels (a normal scan) report
predicted lesion volume as a percentage of lung volume. Prints one JSON object.
The reference, measured in the same run, is the AUC of a trivial score (the
slice's lung area), so the ratio shows what the lesion model adds over
"bigger lung slices are more often infected".

Usage: python benchmarks/dicom_lesions.py [--model unet|deeplab|FILE] [--series P001,cap001,normal001]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom" / "covid-ct-md"


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    scores = np.asarray(scores, float)
    labels = np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(allv))
    r[order] = ranks
    u = r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--series", default="P001,cap001,normal001")
    ap.add_argument("--root", default=str(SHARED))
    args = ap.parse_args()

    from ctscreen.io.dicom import load_series
    from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis

    out = {"benchmark": "dicom_lesions", "model": args.model or "default", "series": {}}
    for name in args.series.split(","):
        folder = Path(args.root) / name
        t = time.perf_counter()
        vol = load_series(folder)
        res = run_analysis(vol, AnalyzeOptions(model=args.model, device=args.device, cam="none"))
        px_mm2 = vol.spacing_mm[1] * vol.spacing_mm[2]
        area = (res.lesion > 0).reshape(len(vol.hu), -1).sum(1) * px_mm2
        lung_area = (res.lung > 0).reshape(len(vol.hu), -1).sum(1) * px_mm2
        m = res.measurements
        entry = {"slices": len(vol.hu), "seconds": round(time.perf_counter() - t, 1),
                 "lesion_volume_ml": round(float(m.lesion_volume_ml), 1),
                 "lung_volume_ml": round(float(m.lung_volume_ml), 1),
                 "lesion_percent_of_lung": round(100 * float(m.lesion_volume_ml) / max(float(m.lung_volume_ml), 1e-9), 3),
                 "model_version": res.model_version}
        labels_csv = Path(args.root) / f"{name}.labels.csv"
        if labels_csv.exists():
            with open(labels_csv, newline="") as fh:
                lab = {r["sop_instance_uid"]: int(r["infection"]) for r in csv.DictReader(fh)}
            idx = [k for k, u in enumerate(vol.sop_instance_uids) if u in lab]
            y = np.array([lab[vol.sop_instance_uids[k]] for k in idx])
            auc = roc_auc(area[idx], y)
            ref = roc_auc(lung_area[idx], y)
            entry.update({"labelled_slices": len(idx), "infected_slices": int(y.sum()),
                          "auc_lesion_area": round(auc, 4), "reference_auc_lung_area": round(ref, 4),
                          "ratio_auc_to_reference": round(auc / ref, 3) if ref == ref and ref > 0 else None})
        out["series"][name] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
