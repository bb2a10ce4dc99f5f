"""The local cache that retrieved series are written into.

Research use, not for diagnosis.

Layout: ``CACHE/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Every file
is written atomically (:func:`ctscreen.io.files.atomic_write`), so a file with its final
name is complete; a retrieval that stops half-way leaves only complete files, and the next
one skips them (resumable). A file already there is never overwritten: when the PACS sends
a *different* object with the same SOP Instance UID (a corrected image, or a damaged
local copy), both are kept - the new one as ``<SOPInstanceUID>.2.dcm`` - and a warning
says so.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
import pydicom
from pydicom.dataset import Dataset

from ctscreen.io.files import atomic_write, fsync_dir
from ctscreen.io.pacs.common import PacsError

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_uid(uid: str, what: str = "UID") -> str:
    """``uid`` if it is a well-formed DICOM UID (so it is a safe file name), else :class:`PacsError`."""
    uid = str(uid or "").strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not _UID_RE.match(uid):
        raise PacsError(f"the PACS sent an invalid {what} {uid[:80]!r} \u2014 it cannot be used as a file name")
    return uid


def series_folder(cache_dir: str | Path, study_uid: str, series_uid: str) -> Path:
    """Where a series is cached (not created)."""
    return Path(cache_dir) / safe_uid(study_uid, "Study Instance UID") / safe_uid(series_uid, "Series Instance UID")


def encode_dataset(ds: Dataset) -> bytes:
    """A DICOM file (preamble, file meta) holding ``ds``, in its own transfer syntax."""
    buf = io.BytesIO()
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise PacsError(f"instance {getattr(ds, 'SOPInstanceUID', '?')} came without a transfer syntax")
    if "MediaStorageSOPInstanceUID" not in meta and "SOPInstanceUID" in ds:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "MediaStorageSOPClassUID" not in meta and "SOPClassUID" in ds:
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _read(data_or_path: bytes | Path, header_only: bool = False) -> Dataset | None:
    """The dataset, or None when it is not readable DICOM."""
    try:
        src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else str(data_or_path)
        return pydicom.dcmread(src, stop_before_pixels=header_only)
    except Exception:  # noqa: BLE001 - any unreadable file is "not complete"
        return None


def _native_pixel_bytes(ds: Dataset) -> int | None:
    """Expected length of uncompressed Pixel Data, None when compressed or unknown."""
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            return None
        n = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(getattr(ds, "NumberOfFrames", 1) or 1)
        return (n * int(ds.BitsAllocated) + 7) // 8
    except Exception:  # noqa: BLE001
        return None


def read_complete(path: Path) -> Dataset | None:
    """The dataset of a *complete* DICOM file, else None (unreadable, or cut short)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = _read(path)
    if ds is None or any("end of file" in str(w.message).lower() or "truncat" in str(w.message).lower()
                         for w in caught):
        return None
    if "PixelData" in ds:
        expected = _native_pixel_bytes(ds)
        if expected is not None and len(ds.PixelData) < expected:
            return None
    return ds


def _same_object(a: Dataset, b: Dataset) -> bool:
    """Same data elements (file meta and group lengths aside)."""
    def keys(ds: Dataset) -> set:
        return {t for t in ds.keys() if t.element != 0}
    if keys(a) != keys(b):
        return False
    for tag in keys(a):
        if a[tag].value != b[tag].value:
            return False
    return True


class SeriesCache:
    """Writes the instances of one series into its cache folder.

    Parameters
    ----------
    folder : Path
        From :func:`series_folder`; created on first use.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp"):  # left by a process killed mid-write
            try:
                stale.unlink()
            except OSError:
                pass
        self.written: list[Path] = []
        self.skipped: list[Path] = []
        self.warnings: list[str] = []

    def path_of(self, sop_uid: str) -> Path:
        return self.folder / f"{safe_uid(sop_uid, 'SOP Instance UID')}.dcm"

    def complete_uids(self) -> set[str]:
        """SOP Instance UIDs already cached: ``<uid>.dcm`` files that read completely as DICOM with that UID."""
        done = set()
        for p in self.folder.glob("*.dcm"):
            uid = p.name[:-4]
            if _UID_RE.match(uid) and self.has(uid):
                done.add(uid)
        return done

    def has(self, sop_uid: str) -> bool:
        p = self.path_of(sop_uid)
        if not p.exists():
            return False
        ds = read_complete(p)
        return ds is not None and str(getattr(ds, "SOPInstanceUID", "")) == sop_uid

    def put(self, data: bytes | Dataset) -> str:
        """Cache one instance (a DICOM file's bytes, or a dataset with file meta).

        Returns
        -------
        str
            ``"written"``, ``"same"`` (an identical object is already cached) or ``"kept-both"``
            (a different file of the same SOP Instance UID is there; the new one was written
            beside it and a warning added).
        """
        if isinstance(data, Dataset):
            ds = data
            data = encode_dataset(ds)
        else:
            ds = _read(data, header_only=True)
            if ds is None:
                raise PacsError("the PACS sent an object that is not readable DICOM")
        sop_uid = safe_uid(getattr(ds, "SOPInstanceUID", ""), "SOP Instance UID")
        target = self.path_of(sop_uid)
        if target.exists():
            old = read_complete(target)
            new = _read(data) if old is not None else None
            if old is not None and new is not None and _same_object(old, new):
                self.skipped.append(target)
                return "same"
            n = 2
            while (self.folder / f"{sop_uid}.{n}.dcm").exists():
                n += 1
            alt = self.folder / f"{sop_uid}.{n}.dcm"
            atomic_write(alt, data, sync_dir=False)
            self.written.append(alt)
            self.warnings.append(f"{target} differs from the PACS copy of the same SOP Instance UID; "
                                 f"kept it and saved the PACS copy as {alt.name} \u2014 check which one to use")
            return "kept-both"
        atomic_write(target, data, sync_dir=False)
        self.written.append(target)
        return "written"

    def finish(self) -> None:
        """Persist the renames (one folder fsync for all files)."""
        fsync_dir(self.folder)

    def files(self) -> list[str]:
        return sorted(str(p) for p in self.folder.glob("*.dcm"))
