"""``ctscreen evaluate``: score a segmentation model on image/mask pairs."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``evaluate`` subcommand's arguments."""
    e = sub.add_parser("evaluate", help="score a model on image/mask pairs")
    e.add_argument("--images", required=True, help="folder of .jpg/.png slices")
    e.add_argument("--masks", required=True, help="folder of .png masks with the same stems")
    e.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from ctscreen.inference.evaluate import run_evaluate
    return run_evaluate(args)
