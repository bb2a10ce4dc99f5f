"""File primitives of the exports: atomic writes and the output file names.

Research use, not for diagnosis.

Every file is written with :func:`atomic_write` (temporary file in the target
folder, ``fsync``, ``os.replace``), so a crash or a full disk never leaves a
half-written export behind, and nothing is overwritten without ``force``. The
writers (:mod:`ctscreen.io.export_png`, :mod:`~ctscreen.io.export_report`,
:mod:`~ctscreen.io.export_seg`) import these from here, and
:mod:`ctscreen.io.export` gathers the writers, so there is no import cycle.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Union

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
        fsync_dir(folder)
    return target


def fsync_dir(folder: Path) -> None:
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


_fsync_dir = fsync_dir  # old private name
