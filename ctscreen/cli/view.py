"""``ctscreen view [FOLDER]``: open the viewer (the only subcommand that loads Qt)."""

from __future__ import annotations

import argparse
from typing import Any

WINDOW_CHOICES = ("lung", "mediastinum", "bone", "soft")
#: ctscreen.viewer.layouts.LAYOUTS and its aliases (named here so the CLI does not import Qt).
LAYOUT_CHOICES = ("axial", "1x3", "2x2", "mpr")


def add_parser(sub: Any) -> None:
    """The ``view`` subcommand's arguments."""
    v = sub.add_parser("view", help="open the viewer")
    v.add_argument("folder", nargs="?", help="DICOM folder or file to open")
    v.add_argument("--series", help="SeriesInstanceUID to open when the folder holds several")
    v.add_argument("--slice", type=int, help="slice index to show (0 = first)")
    v.add_argument("--window", choices=WINDOW_CHOICES, help="window/level preset")
    v.add_argument("--analyze", action="store_true", help="run the lesion analysis after loading")
    v.add_argument("--model", default=None, help="model name (unet|deeplab) or weights file")
    v.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    v.add_argument("--layout", choices=LAYOUT_CHOICES, default=None,
                   help="axial (one pane), 1x3 (axial, coronal, sagittal), 2x2 or mpr (the three planes and "
                        "the lesion z-profile)")
    v.add_argument("--screenshot", metavar="OUT.png",
                   help="render the window offscreen with the study loaded, save the PNG and exit")


def run(args: argparse.Namespace) -> int:
    from ctscreen.viewer.app import run_view
    return run_view(args)
