"""``ctscreen evaluate-classifier``: score the screening classifier on two folders of images."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``evaluate-classifier`` subcommand's arguments."""
    e = sub.add_parser("evaluate-classifier", help="score the screening classifier on COVID / non-COVID images",
                       description="Accuracy (threshold 0.5), F1 of the COVID class and ROC AUC on two image folders.")
    e.add_argument("--covid", required=True, help="folder of COVID-19 images (.png/.jpg)")
    e.add_argument("--non-covid", required=True, help="folder of non-COVID images (.png/.jpg)")
    e.add_argument("--model", default=None, help="shipped classifier name or a .pt file (default: the shipped one)")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-tta", action="store_true", help="no left-right flip averaging")
    e.add_argument("--view", choices=("auto", "whole", "focus", "both"), default="auto",
                   help="whole image, the view framed on its largest segmented lesion, or their mean "
                        "(auto = both, the default)")
    e.add_argument("--json", action="store_true", help="print one JSON object (with per_image)")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from ctscreen import RESEARCH_NOTICE
    from ctscreen.inference.classifier import load_classifier
    from ctscreen.inference.train_classifier import evaluate_folders

    clf = load_classifier(args.model, device=args.device)
    res = evaluate_folders(clf, Path(args.covid), Path(args.non_covid), tta=not args.no_tta, view=args.view)
    for s in res["skipped"]:
        print(f"skipped: {s}", file=sys.stderr)
    if args.json:
        print(json.dumps(res))
        return 0
    ci = res["ci95"]
    print(f"model: {res['model']} ({res['model_version']})")
    print(f"images: {res['images']} ({res['covid_images']} COVID, {res['non_covid_images']} non-COVID), "
          f"view: {res['view']}")
    print(f"accuracy: {res['accuracy']:.4f}  (95% CI {ci['accuracy'][0]:.3f}-{ci['accuracy'][1]:.3f}, threshold 0.5)")
    print(f"F1 (COVID): {res['f1']:.4f}  (95% CI {ci['f1'][0]:.3f}-{ci['f1'][1]:.3f})")
    print(f"ROC AUC: {res['auc']:.4f}  (95% CI {ci['auc'][0]:.3f}-{ci['auc'][1]:.3f})")
    print(RESEARCH_NOTICE)
    return 0
