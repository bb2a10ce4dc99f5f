"""``ctscreen ensemble-classifier``: join trained classifiers into one averaged model file."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    """The ``ensemble-classifier`` subcommand's arguments."""
    e = sub.add_parser(
        "ensemble-classifier", help="average several trained screening classifiers in one model file",
        description="Join two or more files written by 'ctscreen train-classifier' (same classes, same --size) "
                    "into one model whose probabilities are the members' mean; scores it and each member on "
                    "the validation folders and writes a model card.")
    e.add_argument("members", nargs="+", help="classifier .pt files written by train-classifier")
    e.add_argument("--out", required=True, help="ensemble weights file to write (.pt); the card goes beside it")
    e.add_argument("--val", default=None,
                   help="validation folder with COVID/ and NonCOVID/ image sub-folders (e.g. covid-ct-ucsd/val)")
    e.add_argument("--force", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from ctscreen import RESEARCH_NOTICE
    from ctscreen.inference.ensemble_classifier import EnsembleError, build_ensemble, summary

    out = Path(args.out)
    if out.suffix != ".pt":
        raise EnsembleError(f"{out}: the weights file must end in .pt")
    vc = vn = None
    if args.val:
        val = Path(args.val)
        vc = next((val / n for n in ("COVID", "covid", "covid19") if (val / n).is_dir()), None)
        vn = next((val / n for n in ("NonCOVID", "non_covid", "noncovid") if (val / n).is_dir()), None)
        if vc is None or vn is None:
            raise EnsembleError(f"{val}: expected COVID/ and NonCOVID/ image folders inside it")
    command = "ctscreen " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    card = build_ensemble([Path(m) for m in args.members], out, vc, vn, force=args.force, command=command)
    print(summary(card))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    print(RESEARCH_NOTICE)
    return 0
