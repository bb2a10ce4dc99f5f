"""Whole slice vs lesion-focus view: how classifiers score images and studies (issue 8).

The screening classifier can score a slice by the whole thorax crop or by its
*lesion-focus view* (:func:`ctscreen.imaging.lesions.focus_box`: a square of
``FOCUS_SIDE`` (0.6) x the thorax box's shorter side round the slice's largest lesion piece). This benchmark measures
both, for each classifier file given, in one run:

* ``ucsd_val``: ROC AUC and accuracy (threshold 0.5) on ``covid-ct-ucsd/val`` (60 COVID /
  58 non-COVID), no flip, for the views ``whole``, ``focus`` and ``both`` (their mean) -
  :func:`ctscreen.inference.train_classifier.evaluate_folders`;
* ``studies``: the pooled study P(COVID) (lesion-area attention over the lesion slices,
  :func:`ctscreen.inference.classifier.study_probabilities`) with ``focus=False`` (the
  reference) and ``focus=True`` (the app's protocol), their difference, and each study's
  role for that model: a *training study* when its slices trained the model (model card),
  else *unseen*. Studies: the shared COVID-CT-MD P001 (COVID-19), cap001 (CAP),
  normal001, and Lung-PET-CT-Dx A0002 (lung cancer, not pneumonia), each analysed once with
  the shipped segmentation (``--cache DIR`` keeps the masks).

* ``side_sensitivity`` (with ``--sides``): the focus-view study P(COVID) at other view sizes
  (share of the thorax box's shorter side; the app uses 0.6, chosen over the a-priori 0.45 with
  this check), to show whether a conclusion hangs on that one number.

Usage::

    python benchmarks/study_views.py MODEL.pt [MODEL.pt ...] [--cache DIR] [--no-val] [--threads N]
                                     [--sides 0.3,0.45]

``MODEL`` may be ``shipped`` (the shipped classifier). Prints one JSON object.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctscreen.inference import classifier as C  # noqa: E402
from ctscreen.inference.train_classifier import evaluate_folders  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
UCSD = SHARED / "covid-ct-ucsd" / "val"
STUDIES = {  # name -> (folder, truth)
    "P001": (SHARED / "dicom" / "covid-ct-md" / "P001", "covid19"),
    "cap001": (SHARED / "dicom" / "covid-ct-md" / "cap001", "other_pneumonia"),
    "normal001": (SHARED / "dicom" / "covid-ct-md" / "normal001", "no_pneumonia"),
    "A0002": (SHARED / "dicom" / "lung-pet-ct-dx-A0002", "other (lung cancer)"),
}


def training_studies(card: dict) -> set[str]:
    """Study names whose slices trained the model (an ensemble: any member)."""
    data = card.get("data") or {}
    notes = list(data.get("extra_study_training") or [])
    for m in data.get("members_data") or []:
        notes += m.get("extra_study_training") or []
    return {n.split(":", 1)[0].strip() for n in notes}


def masks(name: str, folder: Path, cache: Path | None):
    """(volume, lung, lesion, box) of one study: the app's analysis, cached when asked."""
    from ctscreen.io.dicom import load_series

    f = cache / f"{name}.npz" if cache else None
    if f is not None and f.exists():
        z = np.load(f)
        return load_series(str(folder)), z["lung"], z["lesion"], tuple(int(v) for v in z["box"])
    from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis

    r = run_analysis(str(folder), AnalyzeOptions(cam="none", device="cpu", classifier="none"))
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(f, lung=r.lung, lesion=r.lesion, box=np.array(r.thorax_box), segmentation_s=0.0)
    return r.volume, r.lung, r.lesion, tuple(int(v) for v in r.thorax_box)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", help="classifier .pt files, or 'shipped'")
    ap.add_argument("--cache", default=None, help="keep/reuse the studies' analysed masks here")
    ap.add_argument("--no-val", action="store_true", help="skip the UCSD val figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sides", default="", help="comma-separated other focus-view sizes to report, e.g. 0.3,0.45")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else None
    studies = {n: masks(n, f, cache) for n, (f, _t) in STUDIES.items() if f.is_dir()}
    out = {"reference": "whole-slice scoring (focus=False) in the same run", "models": []}
    for m in args.models:
        clf = C.load_classifier(None if m == "shipped" else m, device="cpu")
        row: dict = {"model": m, "version": clf.version, "learned_lesion_crops": C.learned_lesion_crops(clf)}
        if not args.no_val and UCSD.is_dir():
            row["ucsd_val"] = {}
            for view in ("whole", "focus", "both"):
                r = evaluate_folders(clf, UCSD / "COVID", UCSD / "NonCOVID", tta=False, view=view)
                row["ucsd_val"][view] = {"auc": round(r["auc"], 4), "accuracy": round(r["accuracy"], 4)}
        trained = training_studies(clf.card)
        row["studies"] = {}
        for name, (vol, lung, lesion, box) in studies.items():
            p = {}
            for focus in (False, True):
                s = C.study_probabilities(clf, vol, lung, lesion, None, box=box, focus=focus)
                p[focus] = s
            row["studies"][name] = {
                "truth": STUDIES[name][1], "role": "training study" if name in trained else "unseen",
                "p_covid_pooled_whole": round(p[False].p_covid_pooled, 4),
                "p_covid_pooled_focus": round(p[True].p_covid_pooled, 4),
                "focus_minus_whole": round(p[True].p_covid_pooled - p[False].p_covid_pooled, 4),
                "probabilities_focus": {k: round(v, 4) for k, v in p[True].probabilities.items()},
                "verdict_whole": p[False].verdict, "verdict_focus": p[True].verdict}
            sides = [float(x) for x in args.sides.split(",") if x.strip()]
            if sides:
                row["studies"][name]["side_sensitivity"] = {
                    f"{x:g}": round(C.study_probabilities(clf, vol, lung, lesion, None, box=box,
                                                          focus_side=x).p_covid_pooled, 4) for x in sides}
        out["models"].append(row)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
