"""Exports of an analysis: annotated PNGs, ``report.json``/``report.csv`` and a DICOM SEG.

Research use, not for diagnosis.

Every file is written with :func:`atomic_write` (temporary file in the target
folder, ``fsync``, ``os.replace``), so a crash or a full disk never leaves a
half-written export behind, and nothing is overwritten without ``force``.

The file primitives live in :mod:`ctscreen.io.files`; this module re-exports
them and the public API of the three writers, so callers only import
``ctscreen.io.export``:

* :mod:`ctscreen.io.export_png` - :func:`render_slice_png`,
  :func:`write_slice_png`, :func:`write_lesion_pngs`, :func:`render_montage`,
  :func:`write_montage_png`
* :mod:`ctscreen.io.export_report` - :func:`build_report`,
  :func:`write_report_json`, :func:`write_report_csv`
* :mod:`ctscreen.io.export_seg` - :func:`build_seg`, :func:`write_seg`

The writers are imported lazily (PEP 562) so that importing this module stays
cheap; they import their primitives from :mod:`ctscreen.io.files`, not from here.
"""

from __future__ import annotations

import glob
import importlib
import os
from pathlib import Path
from typing import Any, Iterable

from ctscreen.errors import ExportError

from ctscreen.io.files import (MONTAGE_NAME, REPORT_CSV, REPORT_JSON, SEG_NAME, SLICE_PNG_PATTERN,  # noqa: F401
                                _UMASK, atomic_write, fsync_dir, slice_png_name)

#: NIfTI label maps and CT (:mod:`ctscreen.io.nifti`) and the PDF report (:mod:`ctscreen.io.report_pdf`);
#: repeated here so listing the outputs does not import nibabel or matplotlib.
NIFTI_NAMES = ("lesions.nii.gz", "lung.nii.gz", "ct.nii.gz")
REPORT_PDF = "report.pdf"


def existing_outputs(out_dir: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """The outputs in ``out_dir`` that already exist, so callers can ask or refuse before any work.

    Parameters
    ----------
    out_dir : path-like
        The output folder (need not exist: then nothing exists).
    names : iterable of str
        File names or glob patterns (e.g. :data:`SLICE_PNG_PATTERN`, since
        which slices get a PNG is only known after the analysis).

    Returns
    -------
    list of pathlib.Path
        Existing matches, sorted, without duplicates.
    """
    folder = Path(out_dir)
    found: set[Path] = set()
    if not folder.is_dir():
        return []
    for name in names:
        if glob.has_magic(name):
            found.update(Path(p) for p in glob.glob(os.path.join(glob.escape(str(folder)), name)))
        elif (folder / name).exists():
            found.add(folder / name)
    return sorted(found)


def planned_outputs(png: str = "lesions", report: bool = True, seg: bool = True, nifti: bool = False,
                    pdf: bool = False) -> list[str]:
    """Names/patterns :func:`export_all` may write with these options (for :func:`existing_outputs`)."""
    names: list[str] = []
    if report:
        names += [REPORT_JSON, REPORT_CSV]
    if seg:
        names.append(SEG_NAME)
    if nifti:
        names += list(NIFTI_NAMES)
    if pdf:
        names.append(REPORT_PDF)
    if png in ("lesions", "cam"):
        names.append(SLICE_PNG_PATTERN)
    elif png == "montage":
        names.append(MONTAGE_NAME)
    elif png not in ("none", "", None):
        raise ValueError(f"png must be 'lesions', 'cam', 'montage' or 'none', not {png!r}")
    return names


def export_all(result: Any, out_dir: str | os.PathLike, *, png: str = "lesions", report: bool = True,
               seg: bool = True, force: bool = False, include_patient: bool = False,
               cam: bool = False, window: tuple[float, float] = (1500, -600), nifti: bool = False,
               pdf: bool = False) -> list[Path]:
    """Write the chosen exports of ``result`` into ``out_dir`` (created if missing).

    Refuses up front (before writing anything) when any planned output exists and not ``force``.
    The DICOM SEG is skipped when the result has no lesion voxel (a SEG needs
    at least one segment frame); it is then absent from the returned list.
    ``nifti`` adds ``lesions.nii.gz``, ``lung.nii.gz`` and ``ct.nii.gz``
    (:mod:`ctscreen.io.nifti`, written even when no SEG can be made); ``pdf`` the
    one-page ``report.pdf`` (:mod:`ctscreen.io.report_pdf`).

    Returns
    -------
    list of pathlib.Path
        Everything written, in writing order.
    """
    out = Path(out_dir)
    names = planned_outputs(png=png, report=report, seg=seg, nifti=nifti, pdf=pdf)
    if not force:
        clash = existing_outputs(out, names)
        if clash:
            shown = ", ".join(str(p) for p in clash[:3]) + (" ..." if len(clash) > 3 else "")
            raise ExportError(f"{shown} exists \u2014 use --force to overwrite")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc} \u2014 check the path and permissions") from exc
    written: list[Path] = []
    if report:
        from ctscreen.io.export_report import write_report_csv, write_report_json
        written.append(write_report_json(result, out / REPORT_JSON, force=force, include_patient=include_patient))
        written.append(write_report_csv(result, out / REPORT_CSV, force=force))
    if png in ("lesions", "montage", "cam"):
        from ctscreen.io import export_png
        if png == "cam":  # every slice with an activation map, heat map + colour bar + layer and method
            written += export_png.write_lesion_pngs(result, out, force=force, include_patient=include_patient,
                                                    cam=True, window=window,
                                                    indices=sorted(int(k) for k in (result.cam or {})))
        elif png == "lesions":
            written += export_png.write_lesion_pngs(result, out, force=force, include_patient=include_patient,
                                                    cam=cam, window=window)
        else:
            written.append(export_png.write_montage_png(result, out / MONTAGE_NAME, force=force,
                                                        include_patient=include_patient, window=window))
    if nifti:
        from ctscreen.io.nifti import write_nifti
        written += write_nifti(result, out, force=force)
    if pdf:
        from ctscreen.io.report_pdf import write_report_pdf
        written.append(write_report_pdf(result, out / REPORT_PDF, force=force, include_patient=include_patient))
    if seg and bool(getattr(result.lesion, "any", lambda: False)()):
        from ctscreen.io.export_seg import write_seg
        written.append(write_seg(result, out / SEG_NAME, force=force))
    return written


_LAZY = {
    "render_slice_png": "export_png",
    "write_slice_png": "export_png",
    "write_lesion_pngs": "export_png",
    "render_montage": "export_png",
    "write_montage_png": "export_png",
    "lesion_slice_indices": "export_png",
    "orientation_letters": "export_png",
    "build_report": "export_report",
    "write_report_json": "export_report",
    "write_report_csv": "export_report",
    "report_rows": "export_report",
    "CSV_COLUMNS": "export_report",
    "REPORT_SCHEMA_VERSION": "export_report",
    "build_seg": "export_seg",
    "write_seg": "export_seg",
    "display_to_stored": "export_seg",
    "write_nifti": "nifti",
    "write_nifti_file": "nifti",
    "write_report_pdf": "report_pdf",
}

__all__ = [
    "atomic_write", "existing_outputs", "planned_outputs", "export_all", "slice_png_name",
    "REPORT_JSON", "REPORT_CSV", "SEG_NAME", "MONTAGE_NAME", "SLICE_PNG_PATTERN", "NIFTI_NAMES", "REPORT_PDF",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ctscreen.io.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
