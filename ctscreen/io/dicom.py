"""DICOM series engine: find the series in a folder and load one as a :class:`Volume`.

Two steps, both usable without Qt:

* :func:`scan_folder` reads headers only and groups images into series
  (:class:`SeriesInfo`), one per SeriesInstanceUID, split further when one UID
  mixes image sizes or orientations.
* :func:`iter_load_series` decodes one series in a thread pool, yielding
  :class:`LoadProgress` (the first one carrying a displayable slice) and
  returning the :class:`~ctscreen.imaging.volume.Volume`; :func:`load_series`
  drives it.

Geometry follows the standard, as 3D Slicer's ``DICOMUtils`` does: slices are
ordered by projecting ImagePositionPatient (C.7.6.2.1.1) onto the slice normal
(the cross product of the two ImageOrientationPatient vectors); the z spacing is
the median distance between neighbouring positions, never SliceThickness.

Slice order convention
----------------------
Index 0 is the slice farthest along the positive direction of the patient axis
the normal is closest to. For an axial CT that is **+z (head): ``hu[0]`` is the
most superior slice and the index grows towards the feet** -- the order in which
scanners number a chest CT, and the slice the viewer shows first. ``z_mm[k]`` is
the position of slice ``k`` along that positive normal (the LPS z coordinate
for an untilted axial series), so ``z_mm`` decreases with ``k``.
When positions are missing the slices follow InstanceNumber (ascending) instead,
and a warning says so.

Modality LUT (rescale slope/intercept, PS3.3 C.11.1) is applied; arrays are
flipped (and if need be transposed) in-plane into radiological display order,
see :mod:`ctscreen.imaging.volume`.

Damaged and hostile input
-------------------------
Nothing a folder holds may hang, crash or exhaust the loader, or reach the
measurements with a broken geometry unsaid (``tests/test_fuzz.py``,
``benchmarks/fuzz_loader.py``):

* only regular files are opened (pipes, sockets and devices are skipped with a
  note; a FIFO never blocks), headers are parsed within :data:`HEADER_BUDGET_BYTES`
  and stop at zero-filled bytes, a deflated dataset is inflated within the same
  budget, and decoding reads a file only up to the end of its pixel data;
* NumberOfFrames is checked against what the pixel data holds before anything is
  allocated, compressed frames against Rows/Columns before a decoder sees them,
  and a volume that cannot fit in memory is refused with the sizes;
* ImageOrientationPatient must be two perpendicular unit vectors
  (:data:`ORIENTATION_TOL`), positions finite and within :data:`MAX_POSITION_MM`,
  pixel and slice spacing plausible for CT; an invalid value is not used, the
  slices are named in a warning, and where no valid value is left the series is
  not analysable with the reason; a modality LUT that puts the median density
  far outside the CT range makes it not analysable too;
* every skipped, duplicate or estimated slice is named in a warning, and
  ``z_mm`` always has one entry per slice of the volume.

Decoding speed (measured on COVID-CT-MD P001, 148 JPEG Lossless slices, 2 cores)
-------------------------------------------------------------------------------
pylibjpeg-libjpeg holds the GIL, so threads do not help it (about 1.5 s serial or
threaded). When ``imagecodecs`` is installed, single-frame JPEG (processes 1, 2/4
and 14) is decoded by its libjpeg-turbo binding, which releases the GIL and is
about 5x faster per frame (about 0.15 s for the series on 2 threads); the result is
checked against pydicom in the tests. Everything else goes through pydicom's
plugins (pylibjpeg-openjpeg, -rle, numpy) in the same thread pool.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zlib
import warnings as _warnings
from collections.abc import Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ctscreen.errors import (
    Cancelled,
    CtscreenError,
    NotADicomSeries,
    SeriesGeometryError,
    UnsupportedTransferSyntax,
)
from ctscreen.imaging.volume import Volume

# De-identification tools often leave a UID blank-padded ("  ") or replace it by text; pydicom then
# prints "Invalid value for VR UI" on the terminal each time such a header value is converted.
# The loader reads those values raw and reports them once, in the series warnings
# (:func:`_uid_note`), so pydicom's own line is kept off the user's terminal.
_warnings.filterwarnings("ignore", message=r"Invalid value for VR UI", category=UserWarning)
# Damaged values (an IS of 13 digits, a DS that is no number) are checked and reported by the
# loader itself (issue 12), so pydicom's own lines about them stay off the terminal too.
_warnings.filterwarnings("ignore", message=r"The value length \(\d+\) exceeds the maximum length",
                         category=UserWarning)
_warnings.filterwarnings("ignore", message=r"Invalid value for VR (IS|DS|US|SS|UL|SL|CS)", category=UserWarning)

#: A valid DICOM UID (PS3.5 9.1): digits and dots, no empty or zero-led component, 64 characters at most.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

__all__ = [
    "LoadProgress",
    "ScanResult",
    "SeriesInfo",
    "find_series",
    "iter_load_series",
    "load_series",
    "scan_folder",
]

#: Objects that carry no viewable image (or whose pixels are not an image).
NON_IMAGE_MODALITIES = frozenset(
    {"RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "KO", "PR", "SEG", "REG", "FID", "DOC", "AU", "ECG"}
)
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

#: A normal within this angle of the patient z axis counts as axial.
AXIAL_MAX_TILT_DEG = 30.0
#: Neighbouring slices closer than this along the normal are duplicates.
DUPLICATE_TOL_MM = 0.01
#: Spacing that differs from the median by more than this is "uneven".
UNEVEN_TOL_MM = 0.05
MIN_SLICES_FOR_ANALYSIS = 3

# Bounds on what a file's header may make the loader do (hostile or damaged input must
# neither hang, nor exhaust memory, nor reach the measurements with broken geometry).
#: Bytes read (or inflated) at most to find a file's header; the rest is pixel data.
HEADER_BUDGET_BYTES = 4 << 20
#: Frames of one file counted at most (encapsulated pixel data is walked item by item).
MAX_FRAMES_PER_FILE = 100_000
#: ImageOrientationPatient: unit length and perpendicularity within this tolerance.
ORIENTATION_TOL = 0.01
#: |ImagePositionPatient| coordinates beyond this (100 m) are damage, not geometry.
MAX_POSITION_MM = 1e5
#: Plausible CT pixel size and slice distance; outside, the value is not used as it is.
PIXEL_SPACING_RANGE_MM = (0.05, 20.0)
SLICE_SPACING_RANGE_MM = (0.05, 50.0)
#: Median HU of a CT outside this range means a wrong modality LUT (slope/intercept).
CT_MEDIAN_HU_RANGE = (-1500.0, 3100.0)
#: Share of the available memory a volume may take.
MEMORY_SHARE = 0.8
_DEFLATED_TS = "1.2.840.10008.1.2.1.99"

# Which installable plugin decodes which transfer syntax (for error messages).
_PLUGIN_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (or python-gdcm)",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",
}

#: Transfer syntaxes that are always lossy (JPEG baseline/extended).
_LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})

# JPEG process 1/2/4/14 streams that imagecodecs' libjpeg-turbo decodes with the
# GIL released (about 10x faster than pylibjpeg-libjpeg, which holds the GIL).
_FAST_JPEG_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
     "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}
)
try:  # optional accelerator; pydicom + pylibjpeg remain the reference path
    from imagecodecs import jpeg8_decode as _jpeg8_decode
except Exception:  # pragma: no cover - depends on the environment
    _jpeg8_decode = None


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Frame:
    """One 2-D image: a single-frame file, or one frame of a multi-frame file."""

    path: str
    frame: int | None  # None: single-frame file
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    instance_number: int | None
    sop_instance_uid: str
    slope: float
    intercept: float
    header: Any = field(repr=False, compare=False)
    #: Frames of the file, checked against its pixel data (the count decoders are told).
    n_frames: int = field(default=1, compare=False)
    #: Where the file's pixel data lies (:class:`_PixelInfo`), when the header read found it.
    pixel: Any = field(default=None, repr=False, compare=False)
    #: Header values found invalid and not used: (kind, detail) pairs, reported per series.
    problems: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        """Short name for warnings: folder/file, with ``#frame`` for a frame of a multi-frame file."""
        base = _short_path(self.path)
        return base if self.frame is None else f"{base}#{self.frame + 1}"


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found by :func:`scan_folder` (headers only).

    ``key`` is unique within a scan even when one SeriesInstanceUID was split
    (by image size or orientation): it is the UID, or ``UID#n`` after a split.
    ``analysable_reason`` is ``""`` for an axial CT series that can be analysed,
    else the reason it cannot (it can still be viewed).
    """

    key: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_description: str
    files: tuple[str, ...]
    slice_count: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    z_spacing_mm: float | None
    orientation: tuple[float, ...] | None
    plane: str
    transfer_syntaxes: tuple[str, ...]
    samples_per_pixel: int
    warnings: tuple[str, ...]
    analysable_reason: str
    frames: tuple[_Frame, ...] = field(default=(), repr=False, compare=False)

    @property
    def analysable(self) -> bool:
        return not self.analysable_reason

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (used by ``ctscreen info --json``)."""
        return {
            "key": self.key,
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "modality": self.modality,
            "series_description": self.series_description,
            "slice_count": self.slice_count,
            "file_count": len(self.files),
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing) if self.pixel_spacing else None,
            "z_spacing_mm": self.z_spacing_mm,
            "orientation": list(self.orientation) if self.orientation else None,
            "plane": self.plane,
            "transfer_syntaxes": list(self.transfer_syntaxes),
            "warnings": list(self.warnings),
            "analysable": self.analysable,
            "analysable_reason": self.analysable_reason,
        }


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan_folder` found: image series (analysable, largest CT first),
    the number of non-DICOM files ignored, and notes (skipped objects, bad files)."""

    series: list[SeriesInfo]
    ignored_count: int = 0
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadProgress:
    """Progress of :func:`iter_load_series`.

    ``first_slice`` is set once, as soon as slice 0 (the first slice in the
    documented z order, in HU and display orientation) is decoded, so a viewer
    can show it before the rest of the series arrives.
    """

    done: int
    total: int
    first_slice: np.ndarray | None = None
    message: str = ""


# --------------------------------------------------------------------------- scanning


def _file_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


class _NotRegularFile(OSError):
    """A path that is a pipe, socket or device: never read (a FIFO would block)."""


def _open_regular(path: str) -> io.BufferedReader:
    """Open ``path`` for reading only if it is a regular file.

    The file is opened non-blocking, so a named pipe without a writer cannot
    block, and checked with ``fstat`` on the open descriptor (no race with a
    swapped path); a pipe, socket or device raises :class:`_NotRegularFile`.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegularFile(f"{_file_kind(mode)}, not a file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _sniff(path: str) -> str:
    """Cheap test of a file's first bytes: "part10" (preamble + DICM), "headless"
    (starts with a group 0002/0008 element in either byte order) or ""."""
    with _open_regular(path) as fh:  # OSError is the caller's to report
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    if len(head) >= 8 and head[:2] in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
        return "headless"
    return ""


_HEADER_CHUNK = 65536
_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) LE / BE
_IDENTIFYING = ("SOPClassUID", "Modality", "Rows", "SeriesInstanceUID")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class _PixelInfo:
    """Where a file's Pixel Data lies, from the header read (no pixel byte read).

    ``offset`` is the first byte of the value in ``data_size`` bytes of dataset
    (the file, or its inflated dataset for the deflated transfer syntax);
    ``length`` is None for encapsulated (compressed) pixel data.
    """

    offset: int
    length: int | None
    data_size: int
    little: bool
    deflated: bool = False
    complete: bool = True  # False: data_size is a lower bound (deflated stream not inflated to its end)


def _pixel_info(data: bytes, pos: int, ds: Dataset, data_size: int, deflated: bool = False,
                complete: bool = True) -> _PixelInfo | None:
    """Parse the Pixel Data element header at ``pos`` of ``data`` (where the header parse stopped)."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    end = "<" if little in (True, None) else ">"
    head = data[pos:pos + 12]
    if len(head) < 8 or head[:4] not in _PIXEL_DATA_TAGS:
        return None
    if implicit:
        length, offset = struct.unpack(end + "I", head[4:8])[0], pos + 8
    elif head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return None
        length, offset = struct.unpack(end + "I", head[8:12])[0], pos + 12
    else:
        length, offset = struct.unpack(end + "H", head[6:8])[0], pos + 8
    return _PixelInfo(offset, None if length == 0xFFFFFFFF else int(length), data_size,
                      end == "<", deflated, complete)


_ZERO_FILLED = "the header runs into zero-filled bytes before any Pixel Data (a damaged or sparse file)"


def _stop_at_pixels_or_zeros(tag: Any, vr: str | None, length: int) -> bool:
    """Where the header parse stops: the pixel data, or a tag (0000,0000), which no dataset
    holds: zero-filled bytes (a sparse or padded file), where parsing on would read one
    empty element per 8 bytes."""
    return tag in (0x7FE00010, 0x7FE00009, 0x7FE00008) or tag == 0


def _parse_header(data: bytes) -> tuple[Dataset | None, int, Exception | None]:
    bio = io.BytesIO(data)
    try:
        ds = pydicom.filereader.read_partial(bio, _stop_at_pixels_or_zeros, force=True)
    except Exception as exc:  # noqa: BLE001 - the caller decides
        return None, bio.tell(), exc
    pos = bio.tell()
    if data[pos:pos + 4] == b"\x00\x00\x00\x00" and pos + 8 <= len(data) and any(k in ds for k in _IDENTIFYING):
        return None, pos, ValueError(_ZERO_FILLED)
    return ds, pos, None


def _inflate(fh: Any, max_bytes: int) -> tuple[bytes, bool]:
    """Inflate a raw deflate stream from ``fh``, at most ``max_bytes``; (data, reached the end)."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    while not d.eof:
        chunk = d.unconsumed_tail or fh.read(_HEADER_CHUNK)
        if not chunk:
            break
        out += d.decompress(chunk, max_bytes + 1 - len(out))
        if len(out) > max_bytes:
            return bytes(out[:max_bytes]), False
    return bytes(out), True


def _deflated_meta(data: bytes) -> tuple[Any, int] | None:
    """(file meta, offset of the deflated dataset) of a part-10 file in the deflated syntax, else None."""
    if _DEFLATED_TS.encode() not in data[:4096]:
        return None
    from pydicom.filereader import _read_file_meta_info, read_preamble

    bio = io.BytesIO(data)
    read_preamble(bio, True)
    meta = _read_file_meta_info(bio)
    if str(getattr(meta, "TransferSyntaxUID", "")) != _DEFLATED_TS:
        return None
    return meta, bio.tell()


def _read_deflated(path: str, fh: Any, data: bytes, max_bytes: int) -> tuple[Dataset, bytes, _PixelInfo | None] | None:
    found = _deflated_meta(data)
    if found is None:
        return None
    meta, start = found
    fh.seek(start)
    inflated, complete = _inflate(fh, max_bytes)
    ds, pos, exc = _parse_header(inflated)
    if ds is None:
        raise ValueError(f"deflated dataset cannot be parsed ({type(exc).__name__}: {exc})")
    ds.file_meta = meta
    pix = _pixel_info(inflated, pos, ds, len(inflated), deflated=True, complete=complete)
    if pix is None and not complete:
        raise ValueError(f"deflated header inflates to more than {max_bytes >> 20} MiB — not read")
    return ds, inflated, pix


def _read_header_info(path: str) -> tuple[Dataset, _PixelInfo | None]:
    """Header without pixel data, and where the pixel data lies, within a byte budget.

    The first 64 KiB are parsed in memory (a third faster than from the file;
    the scan is on the path to the first slice on screen). That result is
    trusted when parsing stopped exactly at the Pixel Data tag, or when the chunk
    is the whole file. Otherwise, if the chunk held an identifiable DICOM
    header, at most :data:`HEADER_BUDGET_BYTES` are parsed; a header that does
    not end within them is refused. A deflated dataset is inflated with the same
    budget (a deflate bomb stops there). Pipes, sockets and devices are never read.
    """
    with _open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = fh.read(_HEADER_CHUNK)
        deflated = _read_deflated(path, fh, data, HEADER_BUDGET_BYTES)
        if deflated is not None:
            ds, _, pix = deflated
            return ds, pix
        ds, pos, exc = _parse_header(data)
        if ds is not None and data[pos:pos + 4] in _PIXEL_DATA_TAGS:
            return ds, _pixel_info(data, pos, ds, size)
        if len(data) >= size:  # the whole file: what was parsed is all there is
            if ds is None:
                raise exc  # type: ignore[misc]
            return ds, _PixelInfo(size, 0, size, True) if "Rows" in ds else None
        if ds is not None and not any(k in ds for k in _IDENTIFYING):
            return ds, None  # nothing DICOM-like in 64 KiB: do not read on (a sparse or garbage file)
        if isinstance(exc, ValueError) and str(exc) == _ZERO_FILLED:  # reading on would stop there too
            raise exc
        fh.seek(0)
        data = fh.read(HEADER_BUDGET_BYTES)
    ds, pos, exc = _parse_header(data)
    if ds is not None and data[pos:pos + 4] in _PIXEL_DATA_TAGS:
        return ds, _pixel_info(data, pos, ds, size)
    if len(data) >= size:
        if ds is None:
            raise exc  # type: ignore[misc]
        return ds, _PixelInfo(size, 0, size, True) if "Rows" in ds else None
    if isinstance(exc, ValueError) and str(exc) == _ZERO_FILLED:
        raise exc
    raise ValueError(f"no Pixel Data within the first {HEADER_BUDGET_BYTES >> 20} MiB "
                     f"of a {size / 2**20:.0f} MiB file — damaged or not an image")


def _read_header(path: str) -> Dataset:
    """Header without pixel data (see :func:`_read_header_info`)."""
    return _read_header_info(path)[0]


def _iter_files(root: Path, errors: list[str]) -> Iterable[str]:
    if root.is_file():
        yield str(root)
        return
    def onerror(exc: OSError) -> None:
        errors.append(f"{exc.filename}: cannot be read ({exc.strerror or exc}) — skipped")
    # Symbolic links to folders are followed (exports often link series folders together),
    # each real folder once: a link back up the tree (a loop) is not walked again.
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in seen)
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    """``ds.get`` that never raises: a damaged element reads as missing."""
    try:
        return ds.get(keyword, default)
    except Exception:
        return default


def _text(ds: Dataset, keyword: str) -> Any:
    """Value of a text element (DS, IS, CS...) without pydicom's value conversion.

    Converting DS strings to ``DSfloat`` objects cost half of the scan time;
    the raw bytes are split here instead ("\\" separates values, PS3.5 6.4).
    Returns ``None`` when absent or empty, a str, or a list of str.
    """
    try:
        elem = ds.get_item(keyword)
    except Exception:
        return None
    if elem is None:
        return None
    if isinstance(elem, RawDataElement):
        if not elem.value:
            return None
        parts = elem.value.decode("latin-1").strip(" \x00").split("\\")
        return parts if len(parts) > 1 else (parts[0] or None)
    return elem.value


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or(value: Any, default: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


class _Dropped(Exception):
    """A file whose header contradicts its pixel data: skipped, named in the series' warnings."""


def _raw_text(value: Any) -> str:
    many = hasattr(value, "__iter__") and not isinstance(value, (str, bytes))
    text = "\\".join(str(v) for v in value) if many else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_orientation(raw: Any) -> tuple[tuple[float, ...] | None, str]:
    """(orientation, '') when ``raw`` is two perpendicular unit vectors (within
    :data:`ORIENTATION_TOL`), else (None, what is wrong); (None, '') when absent."""
    if raw is None:
        return None, ""
    ori = _floats(raw, 6)
    if ori is None:
        return None, f"{_raw_text(raw)!r} is not six finite numbers"
    if max(abs(v) for v in ori) > 1 + ORIENTATION_TOL:
        return None, f"{_raw_text(raw)} has components beyond 1"
    r, c = np.asarray(ori[:3]), np.asarray(ori[3:])
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if abs(nr - 1) > ORIENTATION_TOL or abs(nc - 1) > ORIENTATION_TOL or abs(float(r @ c)) > ORIENTATION_TOL:
        return None, f"{_raw_text(raw)} is not two perpendicular unit vectors"
    return ori, ""


def _check_position(raw: Any) -> tuple[tuple[float, float, float] | None, str]:
    if raw is None:
        return None, ""
    pos = _floats(raw, 3)
    if pos is None:
        return None, f"{_raw_text(raw)!r} is not three finite numbers"
    if max(abs(v) for v in pos) > MAX_POSITION_MM:
        return None, f"{_raw_text(raw)} lies beyond {MAX_POSITION_MM:g} mm"
    return pos, ""  # type: ignore[return-value]


def _check_pixel_spacing(raw: Any, modality: str) -> tuple[tuple[float, float] | None, str]:
    if raw is None:
        return None, ""
    ps = _floats(raw, 2)
    if ps is None:
        return None, f"{_raw_text(raw)!r} is not two finite numbers"
    lo, hi = PIXEL_SPACING_RANGE_MM if modality == "CT" else (1e-6, 1000.0)
    if not all(lo <= v <= hi for v in ps):
        return None, f"{_raw_text(raw)} mm is outside {lo:g}-{hi:g} mm"
    return ps, ""  # type: ignore[return-value]


def _check_rescale(raw_slope: Any, raw_intercept: Any, modality: str,
                   slope: float = 1.0, intercept: float = 0.0) -> tuple[float, float, list[tuple[str, str]]]:
    """Modality LUT of a frame (defaults ``slope``/``intercept``) and the problems found."""
    problems: list[tuple[str, str]] = []
    if raw_slope is not None:
        v = _float_or(raw_slope, float("nan"))
        if not np.isfinite(v) or v == 0:
            problems.append(("rescale", f"RescaleSlope {_raw_text(raw_slope)!r} is not a non-zero number; "
                                        f"{slope:g} used"))
        else:
            slope = v
    if raw_intercept is not None:
        v = _float_or(raw_intercept, float("nan"))
        if not np.isfinite(v):
            problems.append(("rescale", f"RescaleIntercept {_raw_text(raw_intercept)!r} is not a number; "
                                        f"{intercept:g} used"))
        else:
            intercept = v
    if modality == "CT" and slope < 0:
        problems.append(("inverted", f"RescaleSlope {slope:g} is negative"))
    return slope, intercept, problems


def _frame_bytes(ds: Dataset) -> int:
    rows, cols = _int_or_none(_get(ds, "Rows")) or 0, _int_or_none(_get(ds, "Columns")) or 0
    spp = _int_or_none(_get(ds, "SamplesPerPixel")) or 1
    bits = _int_or_none(_get(ds, "BitsAllocated")) or 16
    if bits == 1:
        return (rows * cols * spp + 7) // 8
    return rows * cols * spp * ((max(bits, 8) + 7) // 8)


def _count_fragments(path: str, pix: _PixelInfo, want: int) -> tuple[int, bool]:
    """Complete non-empty fragments of encapsulated pixel data (after the offset table), up to
    ``want``; and whether the data ended early or was malformed. Reads 8 bytes per item."""
    end = "<" if pix.little else ">"
    n, pos, first = 0, pix.offset, True
    with _open_regular(path) as fh:
        while n < want:
            fh.seek(pos)
            item = fh.read(8)
            if len(item) < 8:
                return n, True
            group, elem, length = struct.unpack(end + "HHI", item)
            if (group, elem) == (0xFFFE, 0xE0DD):
                return n, False
            if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF or pos + 8 + length > pix.data_size:
                return n, True
            if not first and length > 0:
                n += 1
            first = False
            pos += 8 + length
    return n, False


def _frame_count(path: str, ds: Dataset, pix: _PixelInfo | None) -> tuple[int, list[str]]:
    """NumberOfFrames checked against what the pixel data holds (nothing is allocated here).

    Raises :class:`_Dropped` when the file holds no complete frame.
    """
    raw = _text(ds, "NumberOfFrames")
    claimed = 1 if raw is None else _int_or_none(raw)
    notes: list[str] = []
    if claimed is not None and claimed < 1:
        claimed = None
    if pix is None:  # pixel data not located by the header read: only the claim to go by
        if claimed is None:
            notes.append(f"NumberOfFrames {_raw_text(raw)!r} is not a positive number: 1 frame assumed")
            return 1, notes
        if claimed > MAX_FRAMES_PER_FILE:
            raise _Dropped(f"NumberOfFrames {claimed} is more than {MAX_FRAMES_PER_FILE} and the pixel data "
                           "could not be checked")
        return claimed, notes
    want = min(claimed or MAX_FRAMES_PER_FILE, MAX_FRAMES_PER_FILE)
    if pix.length is None:  # encapsulated: at least one fragment per frame
        held, truncated = _count_fragments(path, pix, want)
        what = "compressed pixel data"
    else:
        size = _frame_bytes(ds)
        if size <= 0:
            raise _Dropped("Rows, Columns or BitsAllocated is zero")
        avail = pix.length if (pix.deflated and not pix.complete) else min(pix.length, pix.data_size - pix.offset)
        held = avail // size
        truncated = pix.length > pix.data_size - pix.offset and pix.complete
        what = "pixel data"
    if held == 0:
        # Not one complete frame (cut short, or a size the data does not match): one frame is tried,
        # and the decoder's error names the file and skips the slice (the damage shows when decoding).
        if claimed is None or claimed > 1:
            notes.append(f"NumberOfFrames {_raw_text(raw)!r} but its {what} holds no complete frame: "
                         "1 frame tried")
        return 1, notes
    if claimed is None:
        n = min(held, MAX_FRAMES_PER_FILE)
        notes.append(f"NumberOfFrames {_raw_text(raw)!r} is not a positive number: the {n} frame(s) "
                     f"its {what} holds were read")
    elif claimed > held:
        n = held
        notes.append(f"NumberOfFrames is {claimed} but its {what} holds {held} frame(s)"
                     + (" (truncated)" if truncated else "") + f": {held} read")
    else:
        n = claimed
    return n, notes


def _functional_group(ds: Dataset, index: int, keyword: str, per_frame: Any = None, shared: Any = None
                      ) -> Dataset | None:
    """Item of a functional group macro for one frame (per-frame wins over shared)."""
    if per_frame is None and shared is None:
        per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
        shared = _get(ds, "SharedFunctionalGroupsSequence")
    for groups, i in ((per_frame, index), (shared, 0)):
        try:
            if groups is None or len(groups) <= i:
                continue
            seq = groups[i].get(keyword)
            if seq:
                return seq[0]
        except Exception:  # a damaged item reads as missing
            continue
    return None


def _frames_of(path: str, ds: Dataset, pix: _PixelInfo | None = None, notes: list[str] | None = None
               ) -> list[_Frame]:
    """The frames of one file, with their geometry checked (invalid values are left out and
    recorded in ``_Frame.problems``); file-level notes go to ``notes``.

    Raises :class:`_Dropped` when the file holds no usable image.
    """
    notes = notes if notes is not None else []
    modality = str(_get(ds, "Modality", "") or "")
    rows, cols = _int_or_none(_get(ds, "Rows")), _int_or_none(_get(ds, "Columns"))
    if not rows or not cols or rows < 1 or cols < 1 or rows > 65535 or cols > 65535:
        raise _Dropped(f"image size {_raw_text(_text(ds, 'Rows'))}x{_raw_text(_text(ds, 'Columns'))} is not valid")
    n_frames, frame_notes = _frame_count(path, ds, pix)
    notes.extend(frame_notes)
    # An empty SOPInstanceUID stays empty (never a file path: a path can carry a patient's name);
    # such slices are identified by InstanceNumber and position.
    sop = str(_text(ds, "SOPInstanceUID") or "")
    inst = _int_or_none(_text(ds, "InstanceNumber"))
    slope, intercept, base_problems = _check_rescale(_text(ds, "RescaleSlope"), _text(ds, "RescaleIntercept"),
                                                     modality)
    per_frame = _get(ds, "PerFrameFunctionalGroupsSequence")
    shared = _get(ds, "SharedFunctionalGroupsSequence")
    enhanced = per_frame is not None or shared is not None
    if not enhanced:
        pos, pos_p = _check_position(_text(ds, "ImagePositionPatient"))
        ori, ori_p = _check_orientation(_text(ds, "ImageOrientationPatient"))
        ps, ps_p = _check_pixel_spacing(_text(ds, "PixelSpacing"), modality)
        problems = tuple(base_problems) + tuple(
            (k, d) for k, d in (("position", pos_p), ("orientation", ori_p), ("spacing", ps_p)) if d)
        if n_frames == 1:
            return [_Frame(path, None, pos, ori, ps, inst, sop, slope, intercept, ds, 1, pix, problems)]
        # Legacy multi-frame (MR, NM...): no per-frame geometry; frames in file order.
        return [_Frame(path, i, None, ori, ps, i + 1, f"{sop}#{i + 1}" if sop else "", slope, intercept, ds,
                       n_frames, pix,
                       problems) for i in range(n_frames)]
    try:
        n_items = len(per_frame) if per_frame is not None else 0
    except Exception:
        n_items = 0
    if per_frame is not None and 0 < n_items < n_frames:
        notes.append(f"PerFrameFunctionalGroupsSequence has {n_items} item(s) for {n_frames} frames: "
                     f"only the first {n_items} frame(s) read")
        n_frames = n_items
    frames = []
    for i in range(n_frames):
        pp = _functional_group(ds, i, "PlanePositionSequence", per_frame, shared)
        po = _functional_group(ds, i, "PlaneOrientationSequence", per_frame, shared)
        pm = _functional_group(ds, i, "PixelMeasuresSequence", per_frame, shared)
        pv = _functional_group(ds, i, "PixelValueTransformationSequence", per_frame, shared)
        fc = _functional_group(ds, i, "FrameContentSequence", per_frame, shared)
        pos, pos_p = _check_position(_get(pp, "ImagePositionPatient") if pp is not None else None)
        ori, ori_p = _check_orientation(_get(po, "ImageOrientationPatient") if po is not None else None)
        ps, ps_p = _check_pixel_spacing(_get(pm, "PixelSpacing") if pm is not None else None, modality)
        if pv is not None:
            f_slope, f_intercept, f_problems = _check_rescale(_get(pv, "RescaleSlope"), _get(pv, "RescaleIntercept"),
                                                              modality, slope, intercept)
        else:
            f_slope, f_intercept, f_problems = slope, intercept, list(base_problems)
        problems = tuple(f_problems) + tuple(
            (k, d) for k, d in (("position", pos_p), ("orientation", ori_p), ("spacing", ps_p)) if d)
        frames.append(_Frame(
            path, i, pos, ori, ps,
            (_int_or_none(_get(fc, "InStackPositionNumber")) if fc is not None else None) or i + 1,
            f"{sop}#{i + 1}" if sop else "", f_slope, f_intercept, ds, n_frames, pix, problems,
        ))
    return frames


_PROBLEM_TEXT = {
    "orientation": ("ImageOrientationPatient", "not used"),
    "position": ("ImagePositionPatient", "treated as missing"),
    "spacing": ("PixelSpacing", "not used"),
    "rescale": ("Modality LUT", "defaults used"),
    "inverted": ("RescaleSlope", "densities would be inverted"),
}


def _problem_notes(frames: Iterable[_Frame]) -> tuple[list[str], list[str]]:
    """Warnings for header values found invalid in these frames, and reasons not to analyse."""
    frames = list(frames)
    by_kind: dict[str, list[tuple[_Frame, str]]] = {}
    for f in frames:
        for kind, detail in f.problems:
            by_kind.setdefault(kind, []).append((f, detail))
    warnings, reasons = [], []
    for kind, items in by_kind.items():
        what, action = _PROBLEM_TEXT.get(kind, (kind, "not used"))
        names = ", ".join(f.name for f, _ in items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
        warnings.append(f"{what} of {len(items)} of {len(frames)} slice(s) is invalid ({items[0][1]}; {names}): "
                        f"{action}")
    if "orientation" in by_kind and not any(f.orientation is not None for f in frames):
        reasons.append(f"slice orientation invalid (ImageOrientationPatient {by_kind['orientation'][0][1]})")
    if "inverted" in by_kind:
        reasons.append(f"{by_kind['inverted'][0][1]}: CT densities would be inverted")
    return warnings, reasons


def _transfer_syntax(ds: Dataset) -> str:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts:
        return str(ts)
    # Headless file: pydicom guessed the encoding while reading.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    if little is False:
        return "1.2.840.10008.1.2.2"
    return "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"


def _decoder_problem(ts: str) -> str:
    """'' when pydicom can decode ``ts`` here, else what to install."""
    uid = UID(ts)
    try:
        if not uid.is_compressed:
            return ""
    except ValueError:  # not a transfer syntax pydicom knows (private or misspelt)
        return (f"pixel data in unknown transfer syntax {ts} cannot be decoded; "
                "convert the series to a standard transfer syntax and try again")
    try:
        decoder = pydicom.pixels.get_decoder(uid)
    except NotImplementedError:
        return (f"pixel data in transfer syntax {uid.name} ({ts}) cannot be decoded by any "
                "pydicom plugin; convert the series (e.g. with dcmdjpeg/gdcmconv) and try again")
    if decoder.is_available:
        return ""
    hint = _PLUGIN_HINTS.get(ts, "python-gdcm")
    return (f"pixel data in transfer syntax {uid.name} ({ts}) needs a decoder that is not "
            f"installed: install {hint}")


def _unit(v: Iterable[float]) -> np.ndarray:
    a = np.asarray(tuple(v), dtype=float)
    n = np.linalg.norm(a)
    return a / n if n > 0 else a


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    return _unit(np.cross(orientation[:3], orientation[3:]))


def _plane(orientation: tuple[float, ...] | None) -> str:
    if orientation is None:
        return "unknown"
    n = np.abs(_normal(orientation))
    axis = int(np.argmax(n))
    if n[axis] < np.cos(np.deg2rad(AXIAL_MAX_TILT_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _pixel_spacing(frames: list[_Frame]) -> tuple[tuple[float, float], str]:
    """PixelSpacing of a series and a warning ('' when it was in the headers).

    Without PixelSpacing, a CT's ReconstructionDiameter over the matrix size is the
    pixel size the scanner reconstructed (PS3.3 C.8.2.1); then ImagerPixelSpacing
    (detector plane, a slight overestimate); only then 1 mm is assumed.
    """
    ps = next((f.pixel_spacing for f in frames if f.pixel_spacing is not None), None)
    if ps is not None:
        return ps, ""
    hdr = frames[0].header
    rows, cols = _int_or_none(_get(hdr, "Rows")) or 0, _int_or_none(_get(hdr, "Columns")) or 0
    diameter = _float_or(_text(hdr, "ReconstructionDiameter"), 0.0)
    if diameter > 0 and rows == cols and rows > 0:
        d = diameter / cols
        return (d, d), (f"PixelSpacing missing: {d:.4g} mm pixels taken from ReconstructionDiameter "
                        f"({diameter:g} mm over {cols} columns); check lengths and areas against a ruler")
    imager = _floats(_text(hdr, "ImagerPixelSpacing"), 2)
    if imager is not None and min(imager) > 0:
        return imager, (f"PixelSpacing missing: ImagerPixelSpacing {imager[0]:g} x {imager[1]:g} mm used; "
                        "lengths and areas may be slightly too large")
    return (1.0, 1.0), ("PixelSpacing missing: 1 mm pixels assumed; lengths, areas and volumes "
                        "are not reliable (percentages are)")


def _analysable_reason(modality: str, spp: int, orientation: tuple[float, ...] | None,
                       n_slices: int, bits_stored: int | None = None, extra: Iterable[str] = ()) -> str:
    """Why a series cannot be analysed ('' when it can); ``extra``: reasons found in its headers."""
    extra = [r for r in extra if r]
    reasons = []
    if modality != "CT":
        reasons.append(f"modality is {modality or 'unknown'}, not CT")
    if spp != 1:
        reasons.append("colour (RGB) images, not CT densities")
    elif modality == "CT" and bits_stored is not None and bits_stored <= 8:
        # 256 grey levels cannot hold the HU range: an export for display (screenshots, 8-bit JPEG).
        reasons.append(f"{bits_stored}-bit pixels cannot hold CT densities (Hounsfield units); "
                       "use the original CT images, not an 8-bit export")
    plane = _plane(orientation)
    if plane == "unknown" and any(r.startswith("slice orientation invalid") for r in extra):
        pass  # said by the extra reason
    elif plane == "unknown":
        reasons.append("slice orientation unknown (no ImageOrientationPatient)")
    elif plane != "axial":
        reasons.append(f"not an axial series ({plane} slices)")
    if n_slices < MIN_SLICES_FOR_ANALYSIS:
        reasons.append(f"too few slices for a 3-D analysis ({n_slices} slice{'s' if n_slices != 1 else ''}; "
                       f"at least {MIN_SLICES_FOR_ANALYSIS} needed)")
    reasons.extend(r for r in dict.fromkeys(extra) if r not in reasons)
    return "; ".join(reasons)


@dataclass(frozen=True)
class _Arrangement:
    frames: tuple[_Frame, ...]  # deduplicated, in volume z order
    z_mm: tuple[float, ...]
    z_spacing_mm: float
    axis0: np.ndarray | None  # LPS unit vector of increasing slice index
    warnings: tuple[str, ...]
    #: Why the z geometry is not fit for measurements ('' when it is): an implausible slice spacing.
    problem: str = ""


def _arrange(frames: list[_Frame]) -> _Arrangement:
    """Order frames along the normal, find duplicates, gaps and the z spacing."""
    warnings: list[str] = []
    ori = next((f.orientation for f in frames if f.orientation is not None), None)
    if ori is not None and 2 <= sum(f.position is not None for f in frames) < len(frames):
        frames, note = _fill_missing_positions(frames, ori)
        warnings.append(note)
    have_pos = ori is not None and bool(frames) and all(f.position is not None for f in frames)
    if have_pos:
        n = _normal(ori)
        if n[int(np.argmax(np.abs(n)))] < 0:
            n = -n
        s = np.array([np.dot(f.position, n) for f in frames])
        order = sorted(range(len(frames)),
                       key=lambda i: (-s[i], frames[i].instance_number or 0, frames[i].path))
        kept = [order[0]] if order else []
        dups = []
        for i in order[1:]:
            if abs(s[kept[-1]] - s[i]) < DUPLICATE_TOL_MM:
                dups.append(i)
            else:
                kept.append(i)
        if dups:
            names = ", ".join(_short_path(frames[i].path) for i in dups[:5])
            more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
            sops = {frames[i].sop_instance_uid for i in kept}
            copies = sum(bool(frames[i].sop_instance_uid) and frames[i].sop_instance_uid in sops for i in dups)
            what = (f" ({'all' if copies == len(dups) else copies} copies of the same image: "
                    "same SOPInstanceUID)") if copies else ""
            warnings.append(f"{len(dups)} slice(s) duplicate the position of another slice{what}; kept one "
                            f"of each and skipped {names}{more}")
        z = s[kept]
        tilt = _stack_tilt_note(frames[kept[0]].position, frames[kept[-1]].position, n)
        if tilt:
            warnings.append(tilt)
        diffs = -np.diff(z)
        if len(diffs):
            med = float(np.median(diffs))
            k_gaps = np.nonzero(diffs > 1.5 * med)[0]
            for k in k_gaps[:5]:
                warnings.append(f"gap of {diffs[k]:.2f} mm between slices {k} and {k + 1} "
                                f"(z {z[k]:.2f} -> {z[k + 1]:.2f} mm; expected {med:.2f} mm): "
                                f"about {int(round(diffs[k] / med)) - 1} slice(s) missing")
            if len(k_gaps) > 5:
                warnings.append(f"{len(k_gaps) - 5} more gaps")
            uneven = np.abs(diffs - med) > UNEVEN_TOL_MM
            uneven[k_gaps] = False
            if uneven.any():
                warnings.append(f"uneven slice spacing: {diffs.min():.2f} to {diffs.max():.2f} mm "
                                f"(median {med:.2f} mm used for the volume)")
        else:
            med, note = _spacing_between_slices(frames[kept[0]].header if kept else None)
            if note:
                warnings.append(note)
        problem = ""
        lo, hi = SLICE_SPACING_RANGE_MM
        if len(diffs) and not lo <= med <= hi:
            problem = f"slice spacing {med:.4g} mm is implausible for CT (expected {lo:g}-{hi:g} mm)"
            warnings.append(problem + ": lengths and volumes along z would be wrong")
        return _Arrangement(tuple(frames[i] for i in kept), tuple(float(v) for v in z),
                            med, -n, tuple(warnings), problem)
    # No geometry: InstanceNumber order (PS3.3 says it is not geometry, hence the warning).
    # The same image twice (same SOPInstanceUID) is kept once, as with positions.
    seen: dict[str, _Frame] = {}
    copies = []
    for f in frames:
        if f.sop_instance_uid and f.sop_instance_uid in seen:
            copies.append(f)
        elif f.sop_instance_uid:
            seen[f.sop_instance_uid] = f
    if copies:
        frames = [f for f in frames if not any(f is c for c in copies)]
        names = ", ".join(f.name for f in copies[:5]) + (f" and {len(copies) - 5} more" if len(copies) > 5 else "")
        warnings.append(f"{len(copies)} slice(s) are copies of another (same SOPInstanceUID); kept one of each "
                        f"and skipped {names}")
    order = sorted(range(len(frames)),
                   key=lambda i: (frames[i].instance_number is None, frames[i].instance_number or 0,
                                  frames[i].path, frames[i].frame or 0))
    sbs, sbs_note = _spacing_between_slices(frames[0].header if frames else None, 0.0)
    if sbs_note:
        warnings.append(sbs_note)
    spacing = sbs if sbs > 0 else 1.0
    if len(frames) > 1:
        missing = sum(f.position is None for f in frames)
        what = ("ImageOrientationPatient missing" if ori is None
                else f"ImagePositionPatient missing in {missing} of {len(frames)} slices")
        warnings.append(f"{what}: slices ordered by InstanceNumber, z spacing "
                        + (f"{spacing:g} mm from SpacingBetweenSlices" if sbs > 0 else "unknown (1 mm assumed)")
                        + "; distances along z are not reliable")
    axis0 = None
    if ori is not None:
        n = _normal(ori)
        axis0 = -n if n[int(np.argmax(np.abs(n)))] > 0 else n
    z = tuple(-k * spacing for k in range(len(order)))
    return _Arrangement(tuple(frames[i] for i in order), z, spacing, axis0, tuple(warnings))


def _spacing_between_slices(header: Dataset | None, default: float = 1.0) -> tuple[float, str]:
    """SpacingBetweenSlices when plausible (else ``default``) and a warning when it was not."""
    raw = _text(header, "SpacingBetweenSlices") if header is not None else None
    if raw is None:
        return default, ""
    v = _float_or(raw, float("nan"))
    lo, hi = SLICE_SPACING_RANGE_MM
    if lo <= v <= hi:
        return v, ""
    return default, (f"SpacingBetweenSlices {_raw_text(raw)!r} mm is implausible (expected {lo:g}-{hi:g} mm): "
                     "not used" + (f", {default:g} mm assumed" if default > 0 else ""))


def _short_path(path: str) -> str:
    """The file's name with its folder, enough to find it in a listing."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


#: Slices stacked more than this off their normal are reported as sheared (gantry tilt).
TILT_NOTE_DEG = 0.5


def _stack_tilt_note(first: tuple[float, float, float] | None, last: tuple[float, float, float] | None,
                     normal: np.ndarray) -> str:
    """A warning when the slices are stacked along a line that is not their normal.

    That is what a tilted gantry produces: each slice is shifted in its own plane by
    ``tan(tilt)`` times the slice distance. Per-slice images, areas and voxel volumes
    (area x distance along the normal) stay right; a straight 3-D position computed
    from the first slice drifts, hence the note.
    """
    if first is None or last is None:
        return ""
    d = np.subtract(last, first)
    length = float(np.linalg.norm(d))
    along = abs(float(np.dot(d, normal)))
    if length <= 0 or along <= 0:
        return ""
    angle = float(np.degrees(np.arccos(min(1.0, along / length))))
    if angle <= TILT_NOTE_DEG:
        return ""
    drift = float(np.sqrt(max(length ** 2 - along ** 2, 0.0)))
    return (f"slices are stacked {angle:.1f}\u00b0 off their normal (gantry tilt): each image and the "
            f"areas and volumes are right, but 3-D positions drift in-plane by up to {drift:.1f} mm "
            "from the first to the last slice")


def _fill_missing_positions(frames: list[_Frame], ori: tuple[float, ...]) -> tuple[list[_Frame], str]:
    """Place slices without ImagePositionPatient when the others allow it.

    When the slices that have a position lie on a line that InstanceNumber
    parametrises (position = a + b * InstanceNumber, within 0.1 mm), the missing
    positions are taken from that line; otherwise those slices are left out.
    Returns the frames to arrange and the warning that says which.
    """
    missing = [f for f in frames if f.position is None]
    have = [f for f in frames if f.position is not None]
    names = ", ".join(_short_path(f.path) for f in missing[:5]) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    head = f"ImagePositionPatient missing in {len(missing)} of {len(frames)} slices ({names})"
    numbered = [f for f in have if f.instance_number is not None]
    inst = np.array([f.instance_number for f in numbered], dtype=float)
    if (all(f.instance_number is not None for f in missing) and len(numbered) >= 2
            and np.ptp(inst) > 0 and len(set(inst.tolist())) == len(inst)):
        pos = np.array([f.position for f in numbered], dtype=float)
        design = np.column_stack([np.ones_like(inst), inst])
        coef, *_ = np.linalg.lstsq(design, pos, rcond=None)
        resid = float(np.abs(design @ coef - pos).max())
        if resid < 0.1:
            filled = [f if f.position is not None else dataclasses.replace(
                f, position=tuple(float(v) for v in coef[0] + coef[1] * f.instance_number)) for f in frames]
            return filled, head + ": their positions were estimated from InstanceNumber"
    return have, head + ": those slices were left out (InstanceNumber does not place them reliably)"


def _uid_note(frames: list[_Frame]) -> str:
    """One warning for empty or malformed SOPInstanceUIDs (read raw, so pydicom does not print its own), else ""."""
    empty = sum(not f.sop_instance_uid for f in frames)
    bad = [u for u in dict.fromkeys(f.sop_instance_uid.split("#")[0] for f in frames if f.sop_instance_uid)
           if len(u) > 64 or not _UID_RE.match(u)]
    notes = []
    if empty:
        notes.append(f"SOPInstanceUID is empty in {empty} of {len(frames)} images (removed by de-identification?): "
                     "slices are identified by InstanceNumber and position, and no DICOM SEG can reference them")
    if bad:
        notes.append(f"{len(bad)} image(s) carry a SOPInstanceUID that is not a valid DICOM UID "
                     f"(first: {bad[0][:64]!r}); other DICOM software may reject them")
    return "; ".join(notes)


def _series_info(key: str, frames: list[_Frame], extra_warnings: list[str]) -> SeriesInfo:
    hdr = frames[0].header
    arr = _arrange(frames)
    modality = str(_get(hdr, "Modality", "") or "")
    spp = _int_or_none(_get(hdr, "SamplesPerPixel")) or 1
    ori = next((f.orientation for f in frames if f.orientation is not None), None)
    files = tuple(dict.fromkeys(f.path for f in frames))
    syntaxes = tuple(sorted({_transfer_syntax(f.header) for f in frames}))
    problem_warnings, problem_reasons = _problem_notes(frames)
    warnings = list(extra_warnings) + problem_warnings + list(arr.warnings)
    for ts in syntaxes:
        problem = _decoder_problem(ts)
        if problem:
            warnings.append(problem)
    ps, ps_note = _pixel_spacing(frames)
    if ps_note:
        warnings.append(ps_note)
        if ps == (1.0, 1.0) and "1 mm pixels assumed" in ps_note:
            ps = None
    uid_note = _uid_note(frames)
    if uid_note:
        warnings.append(uid_note)
    lossy = [f for f in frames if str(_get(f.header, "LossyImageCompression", "") or "").strip() == "01"
             or _transfer_syntax(f.header) in _LOSSY_SYNTAXES]
    if lossy:
        warnings.append(f"{len(lossy)} of {len(frames)} images are lossy compressed "
                        f"({Path(lossy[0].path).name}...): densities are approximate")
    bits = _int_or_none(_get(hdr, "BitsStored"))
    return SeriesInfo(
        key=key,
        series_instance_uid=str(_get(hdr, "SeriesInstanceUID", "")),
        study_instance_uid=str(_get(hdr, "StudyInstanceUID", "")),
        modality=modality,
        series_description=str(_get(hdr, "SeriesDescription", "") or ""),
        files=files,
        slice_count=len(arr.frames),
        rows=int(hdr.Rows),
        columns=int(hdr.Columns),
        pixel_spacing=ps,
        z_spacing_mm=round(arr.z_spacing_mm, 4) if len(arr.frames) > 1 and arr.axis0 is not None else None,
        orientation=ori,
        plane=_plane(ori),
        transfer_syntaxes=syntaxes,
        samples_per_pixel=spp,
        warnings=tuple(warnings),
        analysable_reason=_analysable_reason(modality, spp, ori, len(arr.frames), bits,
                                             problem_reasons + [arr.problem]),
        frames=tuple(frames),
    )


def _series_sort_key(s: SeriesInfo) -> tuple:
    # Largest analysable CT first; between equal counts the thinner slices (the same rule as
    # ``ctscreen analyze``'s default choice, so viewer and CLI open the same series).
    return (s.modality != "CT", bool(s.analysable_reason), -s.slice_count, s.z_spacing_mm or float("inf"), s.key)


#: File names that say "DICOM" (or say nothing): such a file that is empty or too short is
#: likely a slice lost in transfer, and is named in the warnings of the series beside it.
_DICOM_LIKE_SUFFIXES = frozenset({"", ".dcm", ".dicom", ".dic", ".ima", ".img"})


def _suspect_reason(path: str, size: int) -> str:
    """Why an ignored file may be a lost slice ('' when it looks like any other non-DICOM file)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _DICOM_LIKE_SUFFIXES and not suffix[1:].isdigit():
        return ""
    if size == 0:
        return "empty"
    if size < 132:
        return f"{size} bytes, too short to be DICOM"
    return "not readable as DICOM" if suffix in (".dcm", ".dicom") else ""


def scan_folder(path: str | os.PathLike[str], *, cancel: CancelFlag | None = None) -> ScanResult:
    """Find the DICOM image series under ``path`` (a folder, walked recursively, or one file).

    Reads headers only, each within a byte budget; only regular files are opened
    (named pipes, sockets and devices are skipped with a note). Files that are
    not DICOM are ignored and counted; unreadable DICOM files and non-image
    objects (RTSTRUCT, SEG, SR...) are skipped with a note in
    ``ScanResult.warnings``. A file of a series that is skipped (truncated, no
    complete image, inconsistent frame count) is also named in that series'
    warnings, and so are empty or truncated ``.dcm`` files beside a series.

    Parameters
    ----------
    cancel
        Anything with ``is_set()``; checked between files (raises :class:`Cancelled`).

    Returns
    -------
    ScanResult
        ``series`` sorted largest CT first (analysable ones before the others).

    Raises
    ------
    NotADicomSeries
        When ``path`` does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise NotADicomSeries(f"{root} does not exist — choose a folder with a CT series")
    ignored = 0
    notes: list[str] = []
    skipped: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}  # SeriesInstanceUID -> notes on its files that were skipped
    suspects: dict[str, list[str]] = {}  # folder -> "name (why)" of ignored files that may be lost slices
    # uid -> list of clusters; a cluster is (signature, frames)
    groups: dict[str, list[tuple[tuple, list[_Frame]]]] = {}
    for fpath in _iter_files(root, notes):
        if cancel is not None and cancel.is_set():
            raise Cancelled("scanning cancelled")
        try:
            st = os.stat(fpath)
            if not stat.S_ISREG(st.st_mode):
                notes.append(f"{fpath}: {_file_kind(st.st_mode)}, not a file — skipped (not read)")
                continue
            kind = _sniff(fpath)
        except OSError as exc:
            notes.append(f"{fpath}: cannot be read ({exc.strerror or exc}) — skipped")
            continue
        if not kind:
            ignored += 1
            why = _suspect_reason(fpath, st.st_size)
            if why:
                suspects.setdefault(os.path.dirname(fpath), []).append(f"{Path(fpath).name} ({why})")
            continue
        try:
            ds, pix = _read_header_info(fpath)
        except Exception as exc:  # corrupt header: say which file, go on
            notes.append(f"{fpath}: unreadable DICOM header ({type(exc).__name__}: {_one_line(exc)}) — skipped")
            suspects.setdefault(os.path.dirname(fpath), []).append(f"{Path(fpath).name} (unreadable header)")
            continue
        if not any(k in ds for k in _IDENTIFYING):
            if kind == "part10":  # a DICOM file whose dataset is missing: cut short
                notes.append(f"{fpath}: DICOM file without a readable dataset (truncated?) — skipped")
                suspects.setdefault(os.path.dirname(fpath), []).append(f"{Path(fpath).name} (no readable dataset)")
            else:  # parsed with force=True but holds nothing DICOM-like
                ignored += 1
            continue
        sop_class = str(_get(ds, "SOPClassUID", "")
                        or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        modality = str(_get(ds, "Modality", "") or "")
        uid = str(_get(ds, "SeriesInstanceUID", "") or f"(no SeriesInstanceUID) {Path(fpath).parent}")
        if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            skipped.setdefault("DICOMDIR (folder index)", []).append(fpath)
            continue
        if (modality in NON_IMAGE_MODALITIES or sop_class == _SEG_SOP_CLASS
                or "Rows" not in ds or "Columns" not in ds):
            if modality == "CT" and sop_class.startswith("1.2.840.10008.5.1.4.1.1.2"):
                note = f"{fpath}: CT image header without Rows/Columns (truncated or damaged) — slice skipped"
                notes.append(note)
                dropped.setdefault(uid, []).append(note)
                continue
            skipped.setdefault(modality or "non-image", []).append(fpath)
            continue
        file_notes: list[str] = []
        try:
            frames = _frames_of(fpath, ds, pix, file_notes)
            rows, cols = int(ds.Rows), int(ds.Columns)
        except _Dropped as exc:
            note = f"{fpath}: {exc} — slice skipped"
            notes.append(note)
            dropped.setdefault(uid, []).append(note)
            continue
        except Exception as exc:
            note = f"{fpath}: unusable image header ({type(exc).__name__}: {_one_line(exc)}) — skipped"
            notes.append(note)
            dropped.setdefault(uid, []).append(note)
            continue
        if not frames:
            continue
        dropped.setdefault(uid, []).extend(f"{fpath}: {n}" for n in file_notes)
        spp = _int_or_none(_get(ds, "SamplesPerPixel")) or 1
        multi = frames[0].frame is not None
        ori = frames[0].orientation
        clusters = groups.setdefault(uid, [])
        for sig, members in clusters:
            s_rows, s_cols, s_spp, s_multi, s_ori = sig
            same_ori = (ori is None and s_ori is None) or (
                ori is not None and s_ori is not None and max(abs(a - b) for a, b in zip(ori, s_ori)) < 1e-3)
            if (s_rows, s_cols, s_spp) == (rows, cols, spp) and not multi and not s_multi and same_ori:
                members.extend(frames)
                break
        else:
            clusters.append(((rows, cols, spp, multi, ori), list(frames)))
    for kind, paths in skipped.items():
        names = ", ".join(Path(p).name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        notes.append(f"skipped {len(paths)} {kind} object(s) without a viewable image: {names}")
    suspect_notes = {
        folder: (f"{len(items)} file(s) in {Path(folder).name or folder} could not be read as DICOM ("
                 + ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                 + "): if they were slices of this series, those slices are missing")
        for folder, items in suspects.items()}
    notes.extend(suspect_notes.values())
    series: list[SeriesInfo] = []
    for uid, clusters in groups.items():
        clusters = _merge_invalid_orientation(clusters)
        for i, ((rows, cols, spp, multi, ori), frames) in enumerate(clusters):
            split_note = []
            if len(clusters) > 1:
                split_note = [f"SeriesInstanceUID {uid} mixes image sizes or orientations; "
                              f"split into {len(clusters)} series (this is part {i + 1}: "
                              f"{rows}x{cols}, {_plane(ori)})"]
            folders = dict.fromkeys(os.path.dirname(f.path) for f in frames)
            extra = split_note + list(dropped.get(uid, ())) + [suspect_notes[d] for d in folders if d in suspect_notes]
            key = uid if len(clusters) == 1 else f"{uid}#{i + 1}"
            try:
                series.append(_series_info(key, frames, extra))
            except Exception as exc:  # inconsistent headers: report, keep the other series
                notes.append(f"series {key} in {Path(frames[0].path).parent} skipped: "
                             f"unusable headers ({type(exc).__name__}: {_one_line(exc)})")
    series.sort(key=_series_sort_key)
    return ScanResult(series=series, ignored_count=ignored, warnings=tuple(notes))


def _one_line(exc: object) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _merge_invalid_orientation(clusters: list[tuple[tuple, list[_Frame]]]) -> list[tuple[tuple, list[_Frame]]]:
    """Put slices whose ImageOrientationPatient was invalid back into the series of their size.

    Such slices have no orientation and would otherwise form a series of their
    own; with the others they are placed by position (their problem is named in
    the series' warnings).
    """
    if len(clusters) < 2:
        return clusters
    out = []
    orphans = []
    for sig, members in clusters:
        if sig[4] is None and all(any(k == "orientation" for k, _ in f.problems) for f in members):
            orphans.append((sig, members))
        else:
            out.append((sig, members))
    for sig, members in orphans:
        home = next((m for s, m in out if s[:4] == sig[:4] and not sig[3]), None)
        if home is None:
            out.append((sig, members))
        else:
            home.extend(members)
    return out


def no_series_error(path: str | os.PathLike[str], scan: ScanResult) -> NotADicomSeries:
    """The error for a path without image series (shared by loader and CLI)."""
    extra = f"; {scan.warnings[0]}" if scan.warnings else ""
    return NotADicomSeries(
        f"{path} contains no DICOM images ({scan.ignored_count} files ignored{extra}) "
        "— choose a folder with a CT series")


def find_series(scan: ScanResult, key_or_uid: str) -> SeriesInfo:
    """The series whose ``key`` or SeriesInstanceUID is ``key_or_uid``."""
    for s in scan.series:
        if key_or_uid in (s.key, s.series_instance_uid):
            return s
    shown = ", ".join(f"{s.key} ({s.modality}, {s.slice_count} slices)" for s in scan.series[:4])
    more = f" and {len(scan.series) - 4} more (ctscreen info lists them)" if len(scan.series) > 4 else ""
    raise NotADicomSeries(f"no series {key_or_uid} here; found: {shown}{more} — pass one of these UIDs")


def _pick_series(path: str | os.PathLike[str]) -> tuple[SeriesInfo, tuple[str, ...]]:
    scan = scan_folder(path)
    if not scan.series:
        raise no_series_error(path, scan)
    if len(scan.series) == 1:
        return scan.series[0], scan.warnings
    ct = [s for s in scan.series if s.modality == "CT"]
    if not ct:
        raise NotADicomSeries(
            f"{path} holds {len(scan.series)} image series but no CT series ("
            + ", ".join(f"{s.modality} {s.slice_count} slices" for s in scan.series[:5])
            + ") — choose one series, or a folder with a CT series")
    return ct[0], scan.warnings  # already sorted: largest analysable CT first


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Display:
    """In-plane transform from stored to radiological display order."""

    transpose: bool
    flip_y: bool
    flip_x: bool
    row_dir: np.ndarray  # LPS unit vector of array axis 1 (down the screen)
    col_dir: np.ndarray  # LPS unit vector of array axis 2 (across the screen)

    def apply(self, img: np.ndarray) -> np.ndarray:
        if self.transpose:
            img = np.swapaxes(img, 0, 1)
        if self.flip_y:
            img = img[::-1]
        if self.flip_x:
            img = img[:, ::-1]
        return img


def _display_transform(orientation: tuple[float, ...] | None) -> _Display:
    """Columns should point to +x (patient left) when x is in plane, else +y
    (posterior); rows to +y for axial, to -z (feet) for coronal/sagittal."""
    if orientation is None:
        return _Display(False, False, False, np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0]))
    r = _unit(orientation[:3])  # direction of increasing column index
    c = _unit(orientation[3:])  # direction of increasing row index
    ax_r, ax_c = int(np.argmax(np.abs(r))), int(np.argmax(np.abs(c)))
    transpose = ax_r > ax_c or (ax_r == ax_c and abs(c[ax_c]) > abs(r[ax_r]))
    if transpose:
        r, c = c, r
        ax_r, ax_c = ax_c, ax_r
    flip_x = r[ax_r] < 0 if ax_r != 2 else r[ax_r] > 0
    flip_y = c[ax_c] < 0 if ax_c != 2 else c[ax_c] > 0
    return _Display(transpose, bool(flip_y), bool(flip_x), -c if flip_y else c, -r if flip_x else r)


def _sign_correct(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    if not signed:
        return arr
    if arr.dtype == np.uint16 and bits_stored == 16:
        return arr.view(np.int16)
    a = arr.astype(np.int32) & ((1 << bits_stored) - 1)
    sign = 1 << (bits_stored - 1)
    return (a ^ sign) - sign


# (7FE0,0010) OB, undefined length, then the Basic Offset Table item tag: the start
# of encapsulated Pixel Data in explicit VR little endian (all compressed syntaxes).
_ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0"


def _fast_jpeg(path: str, header: Dataset, pixel: _PixelInfo | None = None) -> np.ndarray | None:
    """Decode a single-frame JPEG image without parsing the dataset again.

    The header was parsed by :func:`scan_folder`; here the file is read as bytes,
    the last encapsulated Pixel Data element located, and its frame decoded by
    imagecodecs with the GIL released. ``None`` when anything looks unusual
    (the caller then takes pydicom's path).
    """
    with _open_regular(path) as fh:
        end = _pixel_data_end(fh, pixel)
        data = fh.read(end) if end is not None else fh.read()
    at = data.rfind(_ENCAPSULATED_PIXEL_DATA)
    if at < 0:
        return None
    frame = next(pydicom.encaps.generate_frames(data[at + 12:], number_of_frames=1))
    if frame.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return None  # no EOI marker: truncated stream (libjpeg-turbo would pad it silently)
    _check_codestream(frame, header)
    arr = np.asarray(_jpeg8_decode(frame))
    if arr.shape != (int(header.Rows), int(header.Columns)) or arr.dtype not in (np.uint8, np.uint16):
        return None
    return _sign_correct(arr, min(max(_int_or_none(_get(header, "BitsStored")) or 16, 1), 16),
                         _int_or_none(_get(header, "PixelRepresentation")) == 1)


def _codestream_size(stream: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, None when not found."""
    if stream[:2] == b"\xff\xd8":  # JPEG / JPEG-LS: walk the marker segments to the first SOF
        pos = 2
        while pos + 4 <= len(stream) and pos < 1 << 20:
            if stream[pos] != 0xFF:
                return None
            marker = stream[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            length = int.from_bytes(stream[pos + 2:pos + 4], "big")
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
                seg = stream[pos + 4:pos + 9]
                if len(seg) < 5:
                    return None
                return int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big")
            if marker == 0xDA or length < 2:
                return None
            pos += 2 + length
        return None
    if stream[:4] == b"\xff\x4f\xff\x51" and len(stream) >= 24:  # JPEG 2000: SIZ follows SOC
        xsiz, ysiz, xo, yo = struct.unpack(">IIII", stream[8:24])
        return ysiz - yo, xsiz - xo
    return None


def _check_codestream(stream: bytes, header: Dataset) -> None:
    """Refuse a compressed frame whose own size contradicts Rows/Columns before a decoder sees it.

    A decoder told nothing else allocates what the codestream declares (up to
    65535 x 65535 for JPEG); the header's size is what the volume holds.
    """
    size = _codestream_size(stream)
    rows, cols = _int_or_none(_get(header, "Rows")), _int_or_none(_get(header, "Columns"))
    if size is not None and size != (rows, cols):
        raise ValueError(f"the compressed image is {size[0]}x{size[1]} but the header says {rows}x{cols}")


def _pixel_data_end(fh: Any, pixel: _PixelInfo | None) -> int | None:
    """Byte offset just past the Pixel Data element of an open file (None when not known)."""
    if pixel is None or pixel.deflated:
        return None
    if pixel.length is not None:
        return min(pixel.offset + pixel.length, pixel.data_size)
    end = "<" if pixel.little else ">"
    pos = pixel.offset
    for _ in range(4 * MAX_FRAMES_PER_FILE):  # items of the encapsulated sequence, 8 bytes read each
        fh.seek(pos)
        item = fh.read(8)
        if len(item) < 8:
            break
        group, elem, length = struct.unpack(end + "HHI", item)
        if (group, elem) == (0xFFFE, 0xE0DD):
            pos += 8
            break
        if (group, elem) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            break
        pos += 8 + length
    fh.seek(0)
    return min(pos, pixel.data_size)


def _dataset_for_decoding(path: str, ts: str, pixel: _PixelInfo | None, n_frames: int, header: Dataset) -> Dataset:
    """The full dataset of a file, read within bounds.

    A deflated dataset is inflated only as far as its header and the frames it
    holds (a deflate bomb stops there); compressed frames are checked against
    Rows/Columns before any decoder runs.
    """
    if ts == _DEFLATED_TS:
        need = (pixel.offset if pixel is not None else HEADER_BUDGET_BYTES) + n_frames * _frame_bytes(header) + 65536
        with _open_regular(path) as fh:
            data = fh.read(_HEADER_CHUNK)
            found = _deflated_meta(data)
            if found is None:
                raise ValueError("deflated file without readable file meta information")
            meta, start = found
            fh.seek(start)
            inflated, _ = _inflate(fh, need)
        ds = pydicom.dcmread(io.BytesIO(inflated), force=True)
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
        return ds
    with _open_regular(path) as fh:
        # Up to the end of the pixel data only: what follows it (a sparse or padded tail) is never parsed.
        end = _pixel_data_end(fh, pixel)
        ds = pydicom.dcmread(io.BytesIO(fh.read(end) if end is not None else fh.read()), force=True)
    try:
        compressed = UID(ts).is_compressed
    except ValueError:
        compressed = False
    if compressed and "PixelData" in ds:
        try:
            frames = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=n_frames))
        except Exception as exc:
            raise ValueError(f"compressed pixel data is damaged ({exc})") from None
        for frame in frames:
            if frame[:2] in (b"\xff\xd8", b"\xff\x4f"):  # JPEG, JPEG-LS, JPEG 2000
                _check_codestream(frame, header)
                # Every one ends with FFD9 (EOI / EOC; encoders may pad with 00 or FF); without it the
                # decoders fill in the missing part of a cut file silently.
                tail = frame.rstrip(b"\x00")
                if not (tail.endswith(b"\xff\xd9") or tail.rstrip(b"\xff").endswith(b"\xff\xd9")
                        or tail.endswith(b"\xff\xd9\xff")):
                    raise ValueError("the compressed image is cut short (no end-of-image marker): "
                                     "the file is truncated or damaged")
    return ds


def _decode_file(path: str, header: Dataset, ts: str, frames: list[int | None], *,
                 n_frames: int | None = None, pixel: _PixelInfo | None = None) -> dict[int | None, np.ndarray]:
    """Stored pixel values of the wanted frames of one file (runs in a worker thread).

    ``n_frames`` is the frame count checked against the pixel data by the scan; the
    decoder is told that, never a NumberOfFrames the pixel data does not hold.
    """
    if (frames == [None] and _jpeg8_decode is not None and ts in _FAST_JPEG_SYNTAXES
            and (_int_or_none(_get(header, "SamplesPerPixel")) or 1) == 1):
        try:
            arr = _fast_jpeg(path, header, pixel)
        except Exception:
            arr = None
        if arr is not None:
            return {None: arr}
    n_checked = n_frames or 1
    ds = _dataset_for_decoding(path, ts, pixel, n_checked, header)
    if "PixelData" not in ds:
        raise ValueError("no pixel data")
    if n_checked > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = n_checked
    for k in ("Rows", "Columns"):  # what the scan checked and the volume holds
        if k in header:
            setattr(ds, k, int(header[k].value))
    if "SamplesPerPixel" not in ds:  # old (ACR-NEMA style) files omit these type 1 elements
        ds.SamplesPerPixel = 1
    if "PhotometricInterpretation" not in ds and int(ds.SamplesPerPixel) == 1:
        ds.PhotometricInterpretation = "MONOCHROME2"
    if not getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None):
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(ts)
    arr = ds.pixel_array
    spp = _int_or_none(_get(ds, "SamplesPerPixel")) or 1
    if n_checked == 1:
        arr = arr[np.newaxis]
    if spp == 3:  # view colour images as luminance (ITU-R BT.601)
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
    return {f: arr[0 if f is None else f] for f in frames}


@dataclass
class _LoadPlan:
    """What iter_load_series decodes, into which array, and how."""

    arrangement: _Arrangement
    frames: list[_Frame]
    warnings: list[str]
    rows: int
    cols: int
    disp: _Display
    dtype: type
    bits: int


def _plan_load(info: SeriesInfo) -> _LoadPlan:
    """Order the frames, check decoders, choose the output dtype (PS3.3 C.11.1 range)."""
    arr = _arrange(list(info.frames))
    warnings: list[str] = []
    frames = list(arr.frames)
    # Undecodable transfer syntaxes: fail now with what to install.
    bad = {ts: _decoder_problem(ts) for ts in {_transfer_syntax(f.header) for f in frames}}
    bad = {ts: msg for ts, msg in bad.items() if msg}
    if bad:
        usable = [f for f in frames if _transfer_syntax(f.header) not in bad]
        if not usable:
            raise UnsupportedTransferSyntax(f"{info.files[0]}: " + "; ".join(bad.values()))
        for ts, msg in bad.items():
            lost = [f for f in frames if _transfer_syntax(f.header) == ts]
            names = ", ".join(f.name for f in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
            warnings.append(f"skipped {len(lost)} slice(s) ({names}): {msg}")
        arr = _arrange(usable)  # the z positions, gaps and spacing without the skipped slices
        warnings.extend(w for w in arr.warnings if w not in info.warnings)
        frames = list(arr.frames)
    hdr = frames[0].header
    rows, cols = int(hdr.Rows), int(hdr.Columns)
    disp = _display_transform(info.orientation)
    slopes = np.array([f.slope for f in frames])
    intercepts = np.array([f.intercept for f in frames])
    integral = bool(np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts))) \
        and info.samples_per_pixel == 1 \
        and bool(np.all(np.abs(slopes) < 2 ** 31) and np.all(np.abs(intercepts) < 2 ** 31))  # else float32
    bits = min(max(_int_or_none(_get(hdr, "BitsStored")) or 16, 1), 32)
    signed = _int_or_none(_get(hdr, "PixelRepresentation")) == 1
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ends = np.concatenate([slopes * lo + intercepts, slopes * hi + intercepts])
    fits16 = integral and ends.min() >= -32768 and ends.max() <= 32767
    dtype = np.int16 if fits16 else (np.int32 if integral else np.float32)
    return _LoadPlan(arr, frames, warnings, rows, cols, disp, dtype, bits)


def iter_load_series(
    path_or_series: str | os.PathLike[str] | SeriesInfo,
    *,
    workers: int | None = None,
    cancel: CancelFlag | None = None,
) -> Generator[LoadProgress, None, Volume]:
    """Load one series, yielding progress; the :class:`Volume` is the generator's return value.

    Parameters
    ----------
    path_or_series
        A :class:`SeriesInfo` from :func:`scan_folder`, or a folder/file. A path
        with one image series loads that series (whatever the modality); with
        several, the largest CT series.
    workers
        Decoding threads (default: ``min(8, cpu_count + 1)``).
    cancel
        Anything with ``is_set()`` (a :class:`threading.Event`); checked between slices.

    Yields
    ------
    LoadProgress
        The first progress with ``first_slice`` set carries slice 0 (most
        superior for axial CT) in HU and display orientation.

    Raises
    ------
    NotADicomSeries, UnsupportedTransferSyntax, SeriesGeometryError (damaged headers), Cancelled
    """
    def check_cancel() -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("loading cancelled")

    scan_notes: tuple[str, ...] = ()
    if isinstance(path_or_series, SeriesInfo):
        info = path_or_series
    else:
        yield LoadProgress(0, 0, None, f"reading DICOM headers in {path_or_series}")
        info, scan_notes = _pick_series(path_or_series)
    check_cancel()

    try:
        plan = _plan_load(info)
    except CtscreenError:
        raise
    except Exception as exc:  # damaged headers must not crash the caller
        raise SeriesGeometryError(
            f"series {info.key} in {Path(info.files[0]).parent}: the headers do not describe a usable "
            f"image ({type(exc).__name__}: {exc}) — the files may be damaged") from exc
    arr, frames, rows, cols = plan.arrangement, plan.frames, plan.rows, plan.cols
    disp, dtype, bits = plan.disp, plan.dtype, plan.bits
    warnings = list(scan_notes) + list(info.warnings) + plan.warnings
    shape_yx = (cols, rows) if disp.transpose else (rows, cols)
    total = len(frames)
    out = _allocate(info, (total,) + shape_yx, dtype)

    # One job per file; frames of a multi-frame file are decoded together.
    jobs: dict[str, list[int]] = {}
    for k, f in enumerate(frames):
        jobs.setdefault(f.path, []).append(k)

    def job(path: str, ks: list[int]) -> list[int]:
        if cancel is not None and cancel.is_set():
            return []
        first = frames[ks[0]]
        stored = _decode_file(path, first.header, _transfer_syntax(first.header), [frames[k].frame for k in ks],
                              n_frames=first.n_frames, pixel=first.pixel)
        for k in ks:
            img = stored[frames[k].frame]
            if img.shape[:2] != (rows, cols):
                raise ValueError(f"image is {img.shape[0]}x{img.shape[1]}, series is {rows}x{cols}")
            f = frames[k]
            dst = disp.apply(out[k])  # a view: writing it stores the slice in display order
            if dtype == np.float32:
                np.multiply(img, np.float32(f.slope), out=dst, casting="unsafe")
                dst += np.float32(f.intercept)
            elif f.slope != 1:  # wide intermediate: slope * value may overflow int16
                tmp = img.astype(np.int64) * int(f.slope)
                tmp += int(f.intercept)
                dst[...] = tmp
            else:
                if img.dtype == np.uint16 and dtype == np.int16 and bits <= 15:
                    img = img.view(np.int16)  # exact: stored values < 2**15
                # a typed scalar keeps numpy from casting the intercept to uint8/uint16
                np.add(img, dtype(int(f.intercept)), out=dst, casting="unsafe")
        return ks

    n_workers = workers or min(8, (os.cpu_count() or 1) + 1)
    failed: dict[int, str] = {}
    done = 0
    first_sent = False
    pool = ThreadPoolExecutor(max_workers=max(1, n_workers), thread_name_prefix="ctscreen-decode")
    try:
        futures: dict[Future, tuple[str, list[int]]] = {}
        for path, ks in jobs.items():  # frames are in z order, so slice 0's file is submitted first
            futures[pool.submit(job, path, ks)] = (path, ks)
        pending = set(futures)
        first_future = next(iter(futures)) if futures else None
        step = max(1, total // 50)
        last_report = 0
        while pending:
            finished, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            check_cancel()
            for fut in finished:
                path, ks = futures[fut]
                exc = fut.exception()
                if exc is not None:
                    for k in ks:
                        failed[k] = f"{path}: cannot decode ({type(exc).__name__}: {exc}) — slice skipped"
                done += len(ks)
            if not first_sent and first_future in finished:
                first_sent = True
                first = None if 0 in failed else np.array(out[0])
                yield LoadProgress(done, total, first, "first slice decoded")
            elif done - last_report >= step or not pending:
                last_report = done
                yield LoadProgress(done, total, None, f"decoded {done} of {total} slices")
            check_cancel()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

    if failed:
        warnings.extend(failed[k] for k in sorted(failed)[:10])
        if len(failed) > 10:
            warnings.append(f"{len(failed) - 10} more slices could not be decoded")
        keep = [k for k in range(total) if k not in failed]
        if not keep:
            raise NotADicomSeries(f"no slice of series {info.key} in {Path(info.files[0]).parent} "
                                  f"could be decoded: {failed[min(failed)]}")
        kept = [frames[k] for k in keep]
        arr = _arrange(kept)  # re-check spacing/gaps without the lost slices
        warnings.extend(w for w in arr.warnings if w not in warnings)
        # The arrangement may order or leave out slices anew: take the decoded images in its order.
        where = {(f.path, f.frame): k for k, f in zip(keep, kept)}
        out = out[[where[(f.path, f.frame)] for f in arr.frames]]
        frames = list(arr.frames)
    if dtype == np.int32:
        out = out.astype(np.int16) if out.min() >= -32768 and out.max() <= 32767 else out.astype(np.float32)
    note = _hu_sanity_note(out, info.modality, frames[0].header)
    if note:
        warnings.append(note)
    hu_reason = _hu_range_reason(out, info.modality, frames)
    if hu_reason:
        warnings.append(hu_reason)
    return _make_volume(info, frames, out, arr, disp, warnings, [hu_reason])


def _available_memory_bytes() -> int:
    """What one allocation may take: a share of physical memory and of the address-space limit left."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            used = 0
            try:
                with open("/proc/self/statm") as fh:
                    used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                pass
            limits.append(max(soft - used, 0))
    except (ImportError, ValueError, OSError):
        pass
    return int(min(limits) * MEMORY_SHARE) if limits else 1 << 62


def _allocate(info: SeriesInfo, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """The volume array, refused with a clear error when it cannot fit in memory."""
    need = int(np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize)
    where = f"series {info.key} in {Path(info.files[0]).parent}"
    what = f"{shape[0]} slices of {shape[1]}x{shape[2]} need {need / 2**30:.1f} GiB"
    if need > _available_memory_bytes():
        raise SeriesGeometryError(f"{where}: {what}, more than this machine can hold — check the "
                                  "files' NumberOfFrames/Rows/Columns, or load fewer slices")
    try:
        return np.zeros(shape, dtype=dtype)
    except MemoryError:
        raise SeriesGeometryError(f"{where}: out of memory ({what}) — close other programs or load "
                                  "fewer slices") from None


def _hu_range_reason(hu: np.ndarray, modality: str, frames: list[_Frame]) -> str:
    """Why the densities of a CT cannot be Hounsfield units ('' when they can be).

    The modality LUT (RescaleSlope/Intercept) maps stored values to HU; a median
    outside :data:`CT_MEDIAN_HU_RANGE` or non-finite values mean it is wrong, and
    every density threshold of the analysis would be meaningless.
    """
    if modality != "CT" or hu.size == 0:
        return ""
    sample = hu[:, ::8, ::8]
    lut = f"RescaleSlope {frames[0].slope:g}, RescaleIntercept {frames[0].intercept:g}"
    if sample.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        return f"densities are not finite numbers ({lut}) — the modality LUT is damaged"
    med = float(np.median(sample))
    lo, hi = CT_MEDIAN_HU_RANGE
    if not lo <= med <= hi:
        return (f"median density {med:.0f} HU is far outside the CT range ({lut}): the pixel values are not "
                "Hounsfield units")
    return ""


def _hu_sanity_note(hu: np.ndarray, modality: str, header: Dataset) -> str:
    """A warning when a CT holds no air at all: the modality LUT is then likely missing or wrong.

    Every CT of a body has air (-1000 HU) around or inside it; a series whose
    darkest pixels are above -500 usually lost its RescaleIntercept on export.
    """
    if modality != "CT" or hu.size == 0:
        return ""
    sample = hu[:, ::8, ::8]
    if float(np.percentile(sample, 0.5)) <= -500:
        return ""
    why = ("RescaleIntercept is missing" if "RescaleIntercept" not in header
           else f"RescaleIntercept is {_text(header, 'RescaleIntercept')}")
    return (f"no air found (nothing below -500 HU) and {why}: the pixel values may not be Hounsfield "
            "units, so lung and lesion densities would be wrong — check the export settings")


def _make_volume(info: SeriesInfo, frames: list[_Frame], hu: np.ndarray, arr: _Arrangement,
                 disp: _Display, warnings: list[str], extra_reasons: Iterable[str] = ()) -> Volume:
    if not (len(frames) == len(arr.z_mm) == hu.shape[0]):
        raise SeriesGeometryError(f"series {info.key} in {Path(info.files[0]).parent}: {hu.shape[0]} images but "
                                  f"{len(arr.z_mm)} slice positions — the files may be damaged")
    problem_warnings, problem_reasons = _problem_notes(frames)
    said = {w.split(" of ")[0] for w in warnings}
    warnings.extend(w for w in problem_warnings if w.split(" of ")[0] not in said)
    hdr = frames[0].header
    ps, ps_note = _pixel_spacing(frames)
    if ps_note:
        warnings.append(ps_note)
    # PixelSpacing = (distance between rows, distance between columns)
    dy, dx = (ps[1], ps[0]) if disp.transpose else (ps[0], ps[1])
    if len(frames) == 1 and "SpacingBetweenSlices" not in hdr:
        warnings.append("single slice: z spacing unknown (1 mm assumed)")
    axis0 = arr.axis0 if arr.axis0 is not None else np.cross(disp.col_dir, disp.row_dir)
    direction = np.column_stack([axis0, disp.row_dir, disp.col_dir])
    origin = (0.0, 0.0, 0.0)
    pos0 = frames[0].position
    if pos0 is not None and info.orientation is not None:
        # LPS position of every stored corner, transformed like the pixels.
        r = _unit(info.orientation[:3]) * ps[1]
        c = _unit(info.orientation[3:]) * ps[0]
        n_rows, n_cols = int(hdr.Rows), int(hdr.Columns)
        corners = np.array([[np.add(pos0, i * (n_rows - 1) * c + j * (n_cols - 1) * r) for j in (0, 1)]
                            for i in (0, 1)])
        origin = tuple(float(v) for v in disp.apply(corners)[0, 0])
    reason = _analysable_reason(info.modality, info.samples_per_pixel, info.orientation, hu.shape[0],
                                _int_or_none(_get(hdr, "BitsStored")),
                                problem_reasons + [arr.problem] + list(extra_reasons))
    return Volume(
        hu=hu,
        spacing_mm=(float(arr.z_spacing_mm), float(dy), float(dx)),
        origin_mm=origin,
        direction=direction,
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        instance_numbers=tuple(f.instance_number for f in frames),
        z_mm=tuple(arr.z_mm),
        modality=info.modality,
        series_instance_uid=info.series_instance_uid,
        study_instance_uid=info.study_instance_uid,
        series_description=info.series_description,
        patient_name=str(_get(hdr, "PatientName", "") or ""),
        patient_id=str(_get(hdr, "PatientID", "") or ""),
        frame_of_reference_uid=str(_get(hdr, "FrameOfReferenceUID", "") or ""),
        source_files=tuple(f.path for f in frames),
        warnings=tuple(dict.fromkeys(warnings)),
        not_analysable_reason=reason,
        headers=tuple(f.header for f in frames),
    )


def load_series(
    path_or_series: str | os.PathLike[str] | SeriesInfo,
    *,
    workers: int | None = None,
    cancel: CancelFlag | None = None,
) -> Volume:
    """Load a series as a :class:`Volume` (drives :func:`iter_load_series`)."""
    gen = iter_load_series(path_or_series, workers=workers, cancel=cancel)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value

