"""Write one analysis into an output folder, whole or not at all.

Research use, not for diagnosis.

Used by ``ctscreen analyze``, ``ctscreen batch`` and the viewer's exports:
the files are written into a hidden staging folder inside the output folder
and moved into place only when all of them are complete, so an interrupted
run (Ctrl-C) or a failed write leaves no partial set of files behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ctscreen.errors import ExportError
from ctscreen.imaging.result import AnalysisResult
from ctscreen.io import export

STAGING_PREFIX = ".ctscreen-partial-"


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(str(text).split())


def planned_names(png: str, seg: bool, nifti: bool = False, pdf: bool = False) -> list[str]:
    """File names/patterns the export will write into ``--out`` for these options."""
    names = export.planned_outputs(png="none", report=True, seg=seg, nifti=nifti, pdf=pdf)
    if png in ("lesions", "all", "cam"):
        names.append(export.SLICE_PNG_PATTERN)
    elif png == "montage":
        names.append(export.MONTAGE_NAME)
    return names


def check_output(out: Path, png: str, seg: bool, force: bool, nifti: bool = False, pdf: bool = False) -> None:
    """Refuse before any work when ``out`` is not a folder or would be overwritten without ``force``."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder \u2014 choose a folder for the results")
    if force:
        return
    clash = export.existing_outputs(out, planned_names(png, seg, nifti, pdf))
    if clash:
        shown = ", ".join(p.name for p in clash[:3]) + (f" and {len(clash) - 3} more" if len(clash) > 3 else "")
        raise ExportError(f"{out} already holds {shown} \u2014 use --force to overwrite or choose another --out")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK):
        raise ExportError(f"cannot write to {parent} \u2014 check the permissions or choose another --out")


def write_exports(result: AnalysisResult, folder: Path, png: str, seg: bool,
                   include_patient: bool = False, nifti: bool = False, pdf: bool = False) -> list[Path]:
    # A DICOM SEG needs at least one segment: with no lesion there is nothing to store.
    seg = seg and bool(np.any(result.lesion))
    written = export.export_all(result, folder, png="lesions" if png == "all" else png, report=True,
                                seg=seg, force=True, include_patient=include_patient, nifti=nifti, pdf=pdf)
    if png == "all":
        from ctscreen.io.export_png import write_slice_png

        have = {p.name for p in written}
        for k in range(result.lesion.shape[0]):
            name = export.slice_png_name(k)
            if name not in have:
                written.append(write_slice_png(result, k, folder / name, force=True,
                                               include_patient=include_patient))
    return written


def _write_seg_or_note(result: AnalysisResult, folder: Path, notes: list[str] | None) -> list[Path]:
    """Write the DICOM SEG; when the source headers cannot make one, say why in ``notes`` instead.

    A SEG is built from the source images' headers; a series that lacks what it needs
    (positions, spacing...) still has a complete report and PNGs, so the run goes on.
    """
    from ctscreen.io.export_seg import write_seg

    try:
        return [write_seg(result, folder / export.SEG_NAME, force=True)]
    except ExportError as exc:
        if notes is None:
            raise
        notes.append(f"no DICOM SEG written: {one_line(str(exc))} (the report and PNGs are complete; "
                     "--no-seg skips the SEG)")
        return []


class _Background:
    """Run ``fn(*args)`` in a thread; :meth:`result` waits for it and returns its value or raises its error.

    The SEG build is mostly Python while the PNG writers mostly release the GIL, so
    the two overlap well. :meth:`result` waits through Ctrl-C (a second one too,
    re-raised once the thread is done), so the staging folder is never removed
    while the thread still writes into it.
    """

    def __init__(self, fn: Any, *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), name="ctscreen-seg", daemon=True)
        self._thread.start()

    def _run(self, fn: Any, args: tuple) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._error = exc

    def wait(self) -> BaseException | None:
        """Wait for the thread, through Ctrl-C; returns the first interruption (None if none)."""
        interrupted: BaseException | None = None
        while self._thread.is_alive():
            try:
                self._thread.join()
            except KeyboardInterrupt as exc:
                interrupted = interrupted or exc
        return interrupted

    def result(self) -> Any:
        interrupted = self.wait()
        if interrupted is not None:
            raise interrupted
        if self._error is not None:
            raise self._error
        return self._value


def export_staged(result: AnalysisResult, out: Path, png: str, seg: bool, force: bool,
                  include_patient: bool = False, notes: list[str] | None = None, nifti: bool = False,
                  pdf: bool = False) -> list[Path]:
    """Write every export into a staging folder in ``out``, then move them into place.

    An interruption before the move leaves ``out`` as it was (the staging folder
    is removed); one during the move removes the files already moved. A SEG that
    the source headers cannot make is left out with a line in ``notes`` (when given).
    The SEG is built and written in a thread while the report and PNGs are written.
    """
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    except OSError as exc:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise ExportError(f"cannot write into {out}: {exc.strerror or exc} \u2014 check the path and permissions "
                          "or choose another --out") from exc
    moved: list[Path] = []
    ok = False
    try:
        try:
            seg_notes: list[str] = []
            job = (_Background(_write_seg_or_note, result, staging, None if notes is None else seg_notes)
                   if seg and np.any(result.lesion) else None)
            try:
                extra = {k: True for k, on in (("nifti", nifti), ("pdf", pdf)) if on}
                written = write_exports(result, staging, png, False, include_patient, **extra)
            except BaseException:
                if job is not None:  # it writes into staging: wait before staging goes
                    job.wait()
                raise
            if job is not None:
                written += job.result()
                if notes is not None:
                    notes.extend(seg_notes)
        except OSError as exc:
            raise ExportError(f"cannot write the results into {out}: {exc.strerror or exc}") from exc
        if not force:  # something appeared in out while we were analysing
            clash = [out / p.name for p in written if (out / p.name).exists()]
            if clash:
                raise ExportError(f"{clash[0]} appeared during the analysis \u2014 use --force to overwrite")
        # With --force, slice PNGs of an earlier run that this run does not write would claim lesions
        # on slices that have none now: they go, together with the overwrite.
        stale = [q for q in export.existing_outputs(out, planned_names(png, seg, nifti, pdf))
                 if q.name not in {p.name for p in written}] if force else []
        for p in written:
            target = out / p.name
            os.replace(p, target)
            moved.append(target)
        ok = True
        for q in stale:
            q.unlink(missing_ok=True)
        return moved
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not ok:
            for p in moved:
                p.unlink(missing_ok=True)
            if created:
                shutil.rmtree(out, ignore_errors=True)
