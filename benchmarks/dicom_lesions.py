"""Lesion detection on real DICOM against the radiologists' slice labels.

For each series: run the app's analysis (``ctscreen.inference.pipeline``,
no Grad-CAM) and score the per-slice predicted lesion area against the
slice-level infection labels (``*.labels.csv``, keyed by SOPInstanceUID) with
the area under the ROC curve; for series without labels (a normal scan) report
predicted lesion volume as a percentage of lung volume. Prints one JSON object.
The reference, measured in the same run, is the AUC of a trivial score (the
slice's lung area), so the ratio shows what the lesion model adds over
"bigger lung slices are more often infected".

With ``--cleanup-variants`` each series' labels are also scored after the 3-D
clean-up rules of :mod:`ctscreen.imaging.postprocess` (each rule alone and all
together) and after other probability thresholds, on the same network output (no
extra network run).

Usage: python benchmarks/dicom_lesions.py [--model unet|deeplab|FILE] [--series P001,cap001,normal001]
                                          [--tta 1|2|4] [--cleanup-variants]
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
    """Area under the ROC curve (Mann-Whitney U, ties counted half): the classifier's metric."""
    from ctscreen.inference.train_classifier import roc_auc as auc

    return auc(labels, scores)


def _variants(res, vol, labels_csv: Path) -> dict:
    """Clean-up rules and thresholds on ``res``'s labels: lesion % of lung and (with labels) slice AUC."""
    from ctscreen.imaging import postprocess as pp

    labels = None
    if labels_csv.exists():
        with open(labels_csv, newline="") as fh:
            lab = {r["sop_instance_uid"]: int(r["infection"]) for r in csv.DictReader(fh)}
        idx = [k for k, u in enumerate(vol.sop_instance_uids) if u in lab]
        labels = (idx, np.array([lab[vol.sop_instance_uids[k]] for k in idx]))
    sp = tuple(float(v) for v in vol.spacing_mm)
    px, vox_ml = sp[1] * sp[2], sp[0] * sp[1] * sp[2] / 1000
    lung = res.lung > 0
    lung_ml = lung.sum() * vox_ml
    off = dict(min_component_ml=0, single_slice_max_ml=0, rim_mm=0)
    rules = {"none": off, "tiny": off | {"min_component_ml": pp.MIN_COMPONENT_ML},
             "single_slice": off | {"single_slice_max_ml": pp.SINGLE_SLICE_MAX_ML},
             "rim": off | {"rim_mm": pp.RIM_MM}, "all": {}}
    masks = {name: pp.clean_lesions(res.lesion, res.lung, sp, **kw)[0] > 0 for name, kw in rules.items()}
    prob = res.lesion_prob.astype(np.float32)
    for thr in (0.4, 0.6, 0.7):
        masks[f"threshold {thr}"] = (prob >= thr) & lung
    out = {}
    for name, m in masks.items():
        e = {"lesion_percent_of_lung": round(100 * m.sum() * vox_ml / max(lung_ml, 1e-9), 3)}
        if labels is not None:
            area = m.reshape(len(m), -1).sum(1) * px
            e["auc_lesion_area"] = round(roc_auc(area[labels[0]], labels[1]), 4)
        out[name] = e
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--series", default="P001,cap001,normal001")
    ap.add_argument("--root", default=str(SHARED))
    ap.add_argument("--tta", type=int, default=0, help="flipped views (0: the app's default for the device)")
    ap.add_argument("--cleanup-variants", action="store_true",
                    help="also score the 3-D clean-up rules and other thresholds on the same output")
    args = ap.parse_args()

    from ctscreen.io.dicom import load_series
    from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis

    out = {"benchmark": "dicom_lesions", "model": args.model or "default", "tta": args.tta or "default",
           "series": {}}
    for name in args.series.split(","):
        folder = Path(args.root) / name
        t = time.perf_counter()
        vol = load_series(folder)
        res = run_analysis(vol, AnalyzeOptions(model=args.model, device=args.device, cam="none",
                                               tta=args.tta or True))
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
        if args.cleanup_variants:
            entry["variants"] = _variants(res, vol, labels_csv)
        out["series"][name] = entry
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
