"""``ctscreen train-classifier``: train the screening classifier on image folders or DICOM studies."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``train-classifier`` subcommand's arguments."""
    t = sub.add_parser(
        "train-classifier",
        help="train the COVID-19 / other pneumonia / no pneumonia classifier",
        description="Train the screening classifier from DATA/<class>/ (images, or DICOM study folders), "
                    "or DATA/train/<class>/ + DATA/val/<class>/; writes the weights and a model card (.md, .json).",
    )
    t.add_argument("--data", required=True, help="folder with one sub-folder per class (or train/ and val/)")
    t.add_argument("--out", required=True, help="weights file to write (.pt); the model card goes beside it")
    t.add_argument("--head", choices=["cosine", "linear"], default="cosine",
                   help="feature-normalised softmax (cosine, default) or a plain linear head")
    t.add_argument("--init", default="seg-encoder",
                   help="seg-encoder (the shipped segmentation UNet's encoder, default), none (from scratch), "
                        "or a classifier .pt to fine-tune (e.g. the shipped one)")
    t.add_argument("--extra-covid", action="append", default=[], metavar="DIR",
                   help="extra COVID-19 images for training only (a COVID-SemiSeg folder: its lesion slices); repeatable")
    t.add_argument("--extra-study", action="append", default=[], metavar="CLASS=DIR",
                   help="slices of a DICOM study for training only, labelled CLASS (e.g. covid19=.../P001); "
                        "a <DIR>.labels.csv with an 'infection' column selects the infected slices; repeatable")
    t.add_argument("--extra-repeat", type=int, default=1, help="times each --extra-study slice is seen per epoch")
    t.add_argument("--augment", choices=["standard", "figure"], default="standard",
                   help="figure: also paper-figure artefacts (low resolution, JPEG, margins, labels, arrows) on "
                        "every class, against a source shortcut (default standard)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None, help="training time budget")
    g.add_argument("--epochs", type=int, default=None, help="number of epochs (default 30)")
    t.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.98; 0: off)")
    t.add_argument("--select", choices=["best", "last"], default="best",
                   help="keep the epoch with the best validation score (default) or the last one")
    t.add_argument("--quarter-turns", action="store_true",
                   help="also turn every training sample by a random multiple of 90 degrees (COVID-SemiSeg's "
                        "slices are stored turned; without this, orientation is a class cue)")
    t.add_argument("--lesion-crops", type=float, default=0.0, metavar="P",
                   help="share of training samples zoomed onto a lesion the shipped segmentation finds (a random "
                        "point of a lesion-free image), every class alike; the app scores such views too (default 0)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--size", type=int, default=192, help="input side in pixels (default 192)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="validation share when DATA has no val/ folder (split by study)")
    t.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    t.add_argument("--log", default=None, help="append one JSON line per epoch to this file")
    t.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    t.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctscreen import RESEARCH_NOTICE
    from ctscreen.inference.train_classifier import DataError, train_classifier

    out = Path(args.out)
    if out.suffix != ".pt":
        raise DataError(f"{out}: the weights file must end in .pt")
    if out.exists() and not args.force:
        raise DataError(f"{out} exists - choose another --out or pass --force to overwrite it")
    studies = []
    for item in args.extra_study:
        cls_name, sep, folder = item.partition("=")
        if not sep or not cls_name or not folder:
            raise DataError(f"--extra-study {item!r}: write CLASS=FOLDER, e.g. covid19=../studies/P001")
        studies.append((cls_name, Path(folder)))
    command = "ctscreen " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    log = open(args.log, "a") if args.log else None
    try:
        res = train_classifier(Path(args.data), out, head=args.head, init=args.init, minutes=args.minutes,
                               epochs=args.epochs, seed=args.seed, device=args.device, size=args.size,
                               batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
                               threads=args.threads, quiet=args.quiet, command=command, log=log,
                               extra_covid=[Path(d) for d in args.extra_covid],
                               extra_studies=studies, extra_repeat=args.extra_repeat,
                               figure_aug=args.augment == "figure", ema=args.ema, select=args.select,
                               quarter_turns=args.quarter_turns, lesion_crops=args.lesion_crops)
    finally:
        if log:
            log.close()
    v = res["card"]["validation"]
    if "auc" in v:
        ci = v.get("ci95", {})
        print(f"validation: accuracy {v['accuracy']:.3f} {ci.get('accuracy')}, F1 {v['f1']:.3f} {ci.get('f1')}, "
              f"AUC {v['auc']:.3f} {ci.get('auc')} on {v['n']} images")
    elif v:
        print(f"validation: accuracy {v['accuracy']:.3f} on {v['n']} images")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    print(RESEARCH_NOTICE)
    return 0
