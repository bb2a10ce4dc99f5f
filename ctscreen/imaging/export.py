"""Exports of an analysis: annotated PNGs, ``report.json``/``report.csv`` and a DICOM SEG.

Research use, not for diagnosis.

Every file is written with :func:`atomic_write` (temporary file in the target
folder, ``fsync``, ``os.replace``), so a crash or a full disk never leaves a
half-written export behind, and nothing is overwritten without ``force``.

This module holds the file primitives and re-exports the public API of the
three writers, so callers only import ``ctscreen.imaging.export``:

* :mod:`ctscreen.imaging.export_png` - :func:`render_slice_png`,
  :func:`write_slice_png`, :func:`write_lesion_pngs`, :func:`render_montage`,
  :func:`write_montage_png`
* :mod:`ctscreen.imaging.export_report` - :func:`build_report`,
  :func:`write_report_json`, :func:`write_report_csv`
* :mod:`ctscreen.imaging.export_seg` - :func:`build_seg`, :func:`write_seg`

The writers are imported lazily (PEP 562) so that importing this module stays
cheap and the writers can import :func:`atomic_write` from here without a cycle.
"""

from __future__ import annotations

import glob
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Union

from ctscreen.errors import ExportError

#: File names the exports use inside an output folder.
REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
SEG_NAME = "lesions_seg.dcm"
MONTAGE_NAME = "montage.png"
#: Glob pattern of the per-slice PNGs (see :func:`slice_png_name`).
SLICE_PNG_PATTERN = "slice_*.png"

Writer = Callable[[BinaryIO], Any]

# mkstemp creates 0600 files; exports get the usual permissions (0666 less the umask).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def slice_png_name(index: int) -> str:
    """File name of the PNG of slice ``index`` (0-based): ``slice_0042.png`` is slice number 42 (1-based)."""
    return f"slice_{int(index) + 1:04d}.png"


def atomic_write(path: str | os.PathLike, data_or_writer: Union[bytes, bytearray, str, Writer],
                 force: bool = False, *, sync_dir: bool = True) -> Path:
    """Write a file so that it is either complete or absent.

    The content goes to a temporary file in the target's folder, is flushed
    and ``fsync``-ed, then moved over the target with :func:`os.replace`
    (atomic on POSIX and Windows for paths on the same volume).

    Parameters
    ----------
    path : path-like
        The target file. Its folder must exist.
    data_or_writer : bytes, str or callable
        The content (``str`` is encoded as UTF-8), or a callable that receives
        the open binary file object and writes to it.
    force : bool
        Overwrite an existing target. Without it an existing target is an error.
    sync_dir : bool
        Also ``fsync`` the folder so the rename itself is durable. A caller that
        writes many files into one folder passes False and syncs the folder once
        at the end (:func:`_fsync_dir`).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ExportError
        The target exists and ``force`` is false, the folder is missing, or
        writing failed (the temporary file is removed in every case).
    """
    target = Path(path)
    if target.is_dir():
        raise ExportError(f"{target} is a folder \u2014 choose a file name")
    if target.exists() and not force:
        raise ExportError(f"{target} exists \u2014 use --force to overwrite")
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"{folder} does not exist \u2014 create the output folder first")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ExportError(f"cannot write to {folder}: {exc.strerror or exc} \u2014 check permissions") from exc
    tmp = Path(tmp_name)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(data_or_writer, str):
                fh.write(data_or_writer.encode("utf-8"))
            elif isinstance(data_or_writer, (bytes, bytearray, memoryview)):
                fh.write(data_or_writer)
            elif callable(data_or_writer):
                data_or_writer(fh)
            else:
                raise TypeError(f"atomic_write needs bytes, str or a callable, not {type(data_or_writer).__name__}")
            fh.flush()
            os.fsync(fh.fileno())
        if target.exists() and not force:  # appeared while we were writing
            raise ExportError(f"{target} exists \u2014 use --force to overwrite")
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise ExportError(f"could not write {target}: {exc.strerror or exc} \u2014 check free space and permissions") from exc
        raise
    if sync_dir:
        _fsync_dir(folder)
    return target


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (POSIX); silently skipped where folders cannot be opened."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


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


def planned_outputs(png: str = "lesions", report: bool = True, seg: bool = True) -> list[str]:
    """Names/patterns :func:`export_all` may write with these options (for :func:`existing_outputs`)."""
    names: list[str] = []
    if report:
        names += [REPORT_JSON, REPORT_CSV]
    if seg:
        names.append(SEG_NAME)
    if png == "lesions":
        names.append(SLICE_PNG_PATTERN)
    elif png == "montage":
        names.append(MONTAGE_NAME)
    elif png not in ("none", "", None):
        raise ValueError(f"png must be 'lesions', 'montage' or 'none', not {png!r}")
    return names


def export_all(result: Any, out_dir: str | os.PathLike, *, png: str = "lesions", report: bool = True,
               seg: bool = True, force: bool = False, include_patient: bool = False,
               cam: bool = False, window: tuple[float, float] = (1500, -600)) -> list[Path]:
    """Write the chosen exports of ``result`` into ``out_dir`` (created if missing).

    Refuses up front (before writing anything) when any planned output exists and not ``force``.
    The DICOM SEG is skipped when the result has no lesion voxel (a SEG needs
    at least one segment frame); it is then absent from the returned list.

    Returns
    -------
    list of pathlib.Path
        Everything written, in writing order.
    """
    out = Path(out_dir)
    names = planned_outputs(png=png, report=report, seg=seg)
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
        from ctscreen.imaging.export_report import write_report_csv, write_report_json
        written.append(write_report_json(result, out / REPORT_JSON, force=force, include_patient=include_patient))
        written.append(write_report_csv(result, out / REPORT_CSV, force=force))
    if png in ("lesions", "montage"):
        from ctscreen.imaging import export_png
        if png == "lesions":
            written += export_png.write_lesion_pngs(result, out, force=force, include_patient=include_patient,
                                                    cam=cam, window=window)
        else:
            written.append(export_png.write_montage_png(result, out / MONTAGE_NAME, force=force,
                                                        include_patient=include_patient, window=window))
    if seg and bool(getattr(result.lesion, "any", lambda: False)()):
        from ctscreen.imaging.export_seg import write_seg
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
}

__all__ = [
    "atomic_write", "existing_outputs", "planned_outputs", "export_all", "slice_png_name",
    "REPORT_JSON", "REPORT_CSV", "SEG_NAME", "MONTAGE_NAME", "SLICE_PNG_PATTERN", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ctscreen.imaging.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
