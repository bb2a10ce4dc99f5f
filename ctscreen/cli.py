"""Command line: ``ctscreen view|info|analyze|evaluate|train``.

Each subcommand parses its arguments here and calls one function of the core
(or the viewer), the same function the GUI calls. Errors of the core
(:class:`ctscreen.errors.CtscreenError`) end the program with a one-line reason
and a non-zero exit code.
"""

from __future__ import annotations

import os

# Before anything loads torch's OpenMP runtime: idle worker threads sleep instead of
# spinning, which on a 2-core machine leaves the CPU to the GUI thread and the decoder
# threads (P001 analysis: 39 s instead of 89 s under load). A user's own setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402

from ctscreen import RESEARCH_NOTICE, __version__  # noqa: E402
from ctscreen.errors import CtscreenError  # noqa: E402

WINDOW_CHOICES = ("lung", "mediastinum", "bone", "soft")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctscreen",
        description=f"Chest CT screening for COVID-19 pneumonia lesions. {RESEARCH_NOTICE}",
    )
    p.add_argument("--version", action="version", version=f"ctscreen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("view", help="open the viewer")
    v.add_argument("folder", nargs="?", help="DICOM folder or file to open")
    v.add_argument("--series", help="SeriesInstanceUID to open when the folder holds several")
    v.add_argument("--slice", type=int, help="slice index to show (0 = first)")
    v.add_argument("--window", choices=WINDOW_CHOICES, help="window/level preset")
    v.add_argument("--analyze", action="store_true", help="run the lesion analysis after loading")
    v.add_argument("--model", default=None, help="model name (unet|deeplab) or weights file")
    v.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    v.add_argument("--screenshot", metavar="OUT.png",
                   help="render the window offscreen with the study loaded, save the PNG and exit")

    i = sub.add_parser("info", help="list the DICOM series in a folder")
    i.add_argument("folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")

    a = sub.add_parser("analyze", help="segment lesions and write the report headless")
    a.add_argument("folder")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    a.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    a.add_argument("--series", help="SeriesInstanceUID (default: the analysable axial CT series with the most "
                                    "slices, named on stderr when there are several; `ctscreen info` lists them)")
    a.add_argument("--png", choices=("none", "lesions", "all", "montage"), default="lesions")
    a.add_argument("--no-seg", action="store_true", help="do not write the DICOM Segmentation object")
    a.add_argument("--cam", choices=("none", "lesions", "all"), default="lesions",
                   help="slices to compute Grad-CAM for")
    a.add_argument("--cam-layer", metavar="NAME", default=None,
                   help="network layer for Grad-CAM (unet: decoder4 (default), decoder3, decoder2, decoder1, "
                        "bottleneck; deeplab: aspp (default), decoder, layer3, layer2)")
    a.add_argument("--force", action="store_true", help="overwrite existing output files")
    a.add_argument("--include-patient", action="store_true",
                   help="burn patient name and ID into the PNGs and write them into report.json (left out by default)")

    e = sub.add_parser("evaluate", help="score a model on image/mask pairs")
    e.add_argument("--images", required=True, help="folder of .jpg/.png slices")
    e.add_argument("--masks", required=True, help="folder of .png masks with the same stems")
    e.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object")

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
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "view":
            from ctscreen.viewer.app import run_view
            return run_view(args)
        if args.command == "info":
            from ctscreen.imaging.info import run_info
            return run_info(args)
        if args.command == "analyze":
            from ctscreen.inference.analyze_cli import run_analyze
            return run_analyze(args)
        if args.command == "evaluate":
            from ctscreen.inference.evaluate import run_evaluate
            return run_evaluate(args)
        if args.command == "train":
            from ctscreen.inference.train import run_train
            return run_train(args)
    except CtscreenError as exc:
        print(f"ctscreen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctscreen {args.command}: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
