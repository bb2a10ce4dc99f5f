"""Which series of a study folder to analyse.

``ctscreen analyze``, ``ctscreen batch``, ``ctscreen compare`` and the viewer's
comparison all pick the same series: the one the user names, else the
analysable axial CT series with the most slices (then the thinnest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ctscreen.errors import NotADicomSeries, NotAnalysable


def describe_series(s: Any) -> str:
    z = f", {s.z_spacing_mm:g} mm" if getattr(s, "z_spacing_mm", None) else ""
    return f"{s.key} ({s.series_description or 'no description'}, {s.slice_count} slices{z})"


def choose_series(candidates: list[Any]) -> Any:
    """The default series among analysable CT series: most slices, then thinnest slices, then UID.

    A chest CT study often holds a thin lung-kernel series and a thick soft-tissue one
    of the same range: the one with more slices is the thinner, richer one.
    """
    return min(candidates, key=lambda s: (-s.slice_count, s.z_spacing_mm or float("inf"), s.key))


#: Folder-scan notes shown before an analysis; the rest are counted.
MAX_SCAN_NOTES = 5


def pick_series(folder: Path, uid: str | None, notes: list[str] | None = None,
                scan_notes: list[str] | None = None) -> Any:
    """Scan ``folder`` and return the :class:`SeriesInfo` to analyse (``uid``, else :func:`choose_series`).

    When several series could be analysed, a line naming the chosen one and the others
    (with ``--series``) is appended to ``notes``. ``scan_notes`` receives what the folder
    scan passed over (skipped special files, unreadable or non-image DICOM files), at most
    :data:`MAX_SCAN_NOTES` lines and a count of the rest.
    """
    from ctscreen.io import dicom

    if not folder.exists():
        raise NotADicomSeries(f"{folder} does not exist \u2014 choose a folder with a CT series")
    if not os.access(folder, os.R_OK) or (folder.is_dir() and not os.access(folder, os.X_OK)):
        raise NotADicomSeries(f"{folder} cannot be read (permission denied) \u2014 check its permissions")
    try:
        scan = dicom.scan_folder(folder)
    except OSError as exc:
        raise NotADicomSeries(f"{folder} cannot be read ({exc.strerror or exc}) \u2014 check the path and permissions") from exc
    if scan_notes is not None and scan.warnings:
        scan_notes.extend(scan.warnings[:MAX_SCAN_NOTES])
        if len(scan.warnings) > MAX_SCAN_NOTES:
            scan_notes.append(f"... and {len(scan.warnings) - MAX_SCAN_NOTES} more (ctscreen info {folder} lists them)")
    if not scan.series:
        raise dicom.no_series_error(folder, scan)
    if uid:
        info = dicom.find_series(scan, uid)
        if info.analysable_reason:
            raise NotAnalysable(f"series {uid} in {folder} cannot be analysed: {info.analysable_reason}")
        return info
    ct = [s for s in scan.series if s.modality == "CT"]
    if not ct:
        found = ", ".join(f"{s.modality or 'unknown'} ({s.slice_count} slice{'' if s.slice_count == 1 else 's'})" for s in scan.series[:4])
        raise NotAnalysable(f"{folder} holds no CT series (found {found}) \u2014 ctscreen analyses chest CT only")
    ok = [s for s in ct if not s.analysable_reason]
    if not ok:
        if len(ct) == 1:
            raise NotAnalysable(f"the CT series {ct[0].key} in {folder} cannot be analysed: {ct[0].analysable_reason}")
        raise NotAnalysable(f"none of the {len(ct)} CT series in {folder} can be analysed; the largest, "
                            f"{describe_series(ct[0])}: {ct[0].analysable_reason}")
    info = choose_series(ok)
    if len(ok) > 1 and notes is not None:
        others = [s for s in ok if s is not info]
        shown = "; ".join(describe_series(s) for s in others[:3]) + (f"; and {len(others) - 3} more" if len(others) > 3 else "")
        notes.append(f"{len(ok)} CT series can be analysed here; analysing {describe_series(info)}, the one with "
                     f"the most slices. Others: {shown} \u2014 pick one with --series UID "
                     f"(ctscreen info {folder} lists them)")
    return info
