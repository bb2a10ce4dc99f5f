"""``ctscreen info FOLDER [--json]``: list the DICOM series in a folder.

Exit code 0 when at least one image series is found; without one,
:class:`~ctscreen.errors.NotADicomSeries` is raised and the CLI exits with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from ctscreen.io.dicom import ScanResult, SeriesInfo, no_series_error, scan_folder

__all__ = ["format_table", "run_info", "scan_to_dict"]


def scan_to_dict(folder: str, scan: ScanResult) -> dict:
    """The JSON object printed by ``ctscreen info --json``."""
    return {
        "folder": str(folder),
        "series_count": len(scan.series),
        "ignored_count": scan.ignored_count,
        "warnings": list(scan.warnings),
        "series": [s.to_dict() for s in scan.series],
    }


def _spacing(s: SeriesInfo) -> str:
    xy = f"{s.pixel_spacing[0]:.3g}x{s.pixel_spacing[1]:.3g}" if s.pixel_spacing else "?"
    z = f"{s.z_spacing_mm:.3g}" if s.z_spacing_mm is not None else "?"
    return f"{xy}x{z} mm"


def format_table(folder: str, scan: ScanResult) -> str:
    """Human-readable listing: one block per series, analysable ones first."""
    lines = [f"{folder}: {len(scan.series)} image series, {scan.ignored_count} non-DICOM files ignored"]
    for i, s in enumerate(scan.series, 1):
        verdict = "analysable" if s.analysable else f"view only: {s.analysable_reason}"
        lines.append(
            f"[{i}] {s.modality or '?':<3} {s.slice_count:>4} {'slice ' if s.slice_count == 1 else 'slices'}  {s.rows}x{s.columns}  "
            f"{_spacing(s)}  {s.plane}  {s.series_description or '(no description)'}")
        lines.append(f"    UID {s.key}")
        lines.append(f"    {verdict}")
        lines.extend(f"    warning: {w}" for w in s.warnings)
    lines.extend(f"note: {w}" for w in scan.warnings)
    return "\n".join(lines)


def add_parser(sub) -> None:
    """The ``info`` subcommand's arguments."""
    i = sub.add_parser("info", help="list the DICOM series in a folder")
    i.add_argument("folder")
    i.add_argument("--json", action="store_true", help="print one JSON object")


def run_info(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Entry point of ``ctscreen info`` (``args.folder``, ``args.json``)."""
    out = out or sys.stdout
    scan = scan_folder(args.folder)
    if not scan.series:
        raise no_series_error(args.folder, scan)
    if getattr(args, "json", False):
        json.dump(scan_to_dict(args.folder, scan), out)
        out.write("\n")
    else:
        out.write(format_table(args.folder, scan) + "\n")
    return 0


run = run_info
