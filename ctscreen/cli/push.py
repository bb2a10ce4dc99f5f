"""``ctscreen push``: send results back to the PACS, beside the study they came from.

Examples::

    ctscreen push results/P001 --server hospital
    ctscreen push results/P001/lesions_seg.dcm results/P001/montage.png --dimse ORTHANC@pacs:4242

A result folder (``ctscreen analyze --out``) sends its DICOM SEG, as Secondary Capture
images its montage and up to ``--max-key-images`` lesion slices (largest lesion area
first), and its ``report.pdf`` (``--pdf``) as a DICOM Encapsulated PDF. The key images carry the study's identifiers in their DICOM header (taken
from the SEG, or from ``--source``) but no patient name or ID in their pixels unless the
PNGs were rendered with them. Research use only - not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ctscreen.cli.pull import add_server_args, server_from_args
from ctscreen.io.pacs.common import PacsError

__all__ = ["run_push"]


def add_parser(sub) -> None:
    """The ``push`` subcommand's arguments."""
    p = sub.add_parser("push", help="send a result (DICOM SEG, key images) to a PACS",
                       description="Send a result folder's DICOM SEG and annotated key images (as DICOM Secondary "
                                   "Capture) to a PACS by STOW-RS or C-STORE. Research use only - not for diagnosis.")
    p.add_argument("paths", nargs="+", metavar="RESULT_DIR|FILE",
                   help="result folders of 'ctscreen analyze', DICOM files, or PNG key images")
    add_server_args(p)
    p.add_argument("--source", metavar="SERIES", help="the analysed DICOM series (file or folder): the study the PNG "
                   "key images belong to, when no SEG is sent with them")
    p.add_argument("--no-key-images", action="store_true", help="do not send key images")
    p.add_argument("--no-report", action="store_true", help="do not send report.pdf (as DICOM Encapsulated PDF)")
    p.add_argument("--max-key-images", type=int, default=6, metavar="N",
                   help="lesion slices sent beside the montage per result folder (default 6)")


def run_push(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of ``ctscreen push``; exit 1 when the PACS refused some object."""
    from ctscreen.io.pacs import connect
    from ctscreen.io.pacs.send import collect_files

    out = out or sys.stdout
    err = err or sys.stderr
    datasets, notes = collect_files(args.paths, source=args.source, key_images=not args.no_key_images,
                                    max_key_images=max(0, args.max_key_images), report=not args.no_report)
    for n in notes:
        print(f"note: {n}", file=err)
    server = server_from_args(args)
    with connect(server) as pacs:
        result = pacs.store(datasets)
    kinds: dict[str, int] = {}
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    for uid in result.stored:
        modality = str(getattr(by_uid[uid], "Modality", "?"))
        label = {"SEG": "SEG", "OT": "key image", "DOC": "report"}.get(modality, modality)
        kinds[label] = kinds.get(label, 0) + 1
    summary = ", ".join(f"{n} {k}{'s' if n != 1 and k in ('key image', 'report') else ''}"
                        for k, n in sorted(kinds.items()))
    print(f"sent {len(result.stored)} of {len(datasets)} objects to {server.describe()}"
          f"{': ' + summary if summary else ''}", file=out)
    for w in result.warnings:
        print(f"warning: {w}", file=err)
    for uid, reason in result.failed:
        print(f"failed: {uid}: {reason}", file=err)
    if result.failed:
        raise PacsError(f"{len(result.failed)} of {len(datasets)} objects were refused by {server.describe()} "
                        "\u2014 see the reasons above")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_push(args)
