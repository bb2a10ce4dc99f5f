"""``ctscreen train``: train a segmentation model on COVID-SemiSeg."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``train`` subcommand's arguments."""
    t = sub.add_parser("train", help="train a segmentation model")
    t.add_argument("--data", required=True, help="covid-semiseg folder (train/, train-multiclass/, pseudo/)")
    t.add_argument("--arch", choices=("unet", "deeplab"), required=True)
    t.add_argument("--out", required=True, help="weights file to write (.pt); the model card goes beside it")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, help="training time budget")
    g.add_argument("--epochs", type=int, help="number of fine-tuning epochs")
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of the labelled slices held out for validation (0: train on all)")
    t.add_argument("--no-pseudo", action="store_true", help="skip pre-training on the pseudo-labelled slices")
    t.add_argument("--aug", choices=("full", "geometric", "none"), default="full", help="augmentation (ablation)")


def run(args: argparse.Namespace) -> int:
    from ctscreen.inference.train import run_train
    return run_train(args)
