"""Seeded mutations of small DICOM series: the loader's fuzz test and its long benchmark share them.

A *base* is a few consecutive slices (pydicom datasets, in z order, most superior
first): real COVID-CT-MD P001 slices (JPEG Lossless), real Lung-PET-CT-Dx slices
(uncompressed), either of them downsampled and stored uncompressed, or a synthetic
64 x 64 series. :func:`build_case` writes one mutated copy of a base into a folder:
1-3 of the :data:`KINDS` below (what damaged exports, PACS transfers, anonymisers and
hostile files do to a series), sometimes with random bit flips or a cut file on top.

Every kind says whether a loaded volume *must* carry a warning (or a not-analysable
reason) when it applies: ``must_warn``. :func:`classify` turns the outcome of
``load_series`` into one of the benchmark's outcome names, and :func:`geometry_problems`
checks a loaded volume's geometry whatever the mutation was.

The source files under ``../shared`` are read, never written.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
P001 = SHARED / "covid-ct-md" / "P001"
LUNG_PET = SHARED / "lung-pet-ct-dx-A0002"

OUTCOMES = ("loaded_ok", "refused_clear", "loaded_with_warning", "hang", "crash", "oom", "silent_bad_geometry")


# --------------------------------------------------------------------------- bases


@dataclass
class Base:
    """Slices to mutate, in z order (index 0 most superior), and the file names they get."""

    name: str
    datasets: list[Dataset]
    names: list[str]
    _encoded: list[bytes] | None = field(default=None, repr=False)

    @property
    def encoded(self) -> list[bytes]:
        """The unmutated files' bytes (written once; a case re-encodes only the slices it changes)."""
        if self._encoded is None:
            with lenient_pydicom():
                self._encoded = [_encode(copy.deepcopy(ds)) for ds in self.datasets]
        return self._encoded


def _sorted_files(folder: Path) -> list[Path]:
    found = []
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.append((-float(ds.ImagePositionPatient[2]), path))
    return [p for _, p in sorted(found)]


def real_base(source: str, n: int = 8, first: int | None = None, downsample: int = 1) -> Base:
    """``n`` consecutive real slices of ``source`` ("p001" or "lungpet"), as stored, or downsampled
    by ``downsample`` and stored uncompressed (fast cases)."""
    folder = P001 if source == "p001" else LUNG_PET
    files = _sorted_files(folder)
    start = first if first is not None else max(0, len(files) // 2 - n // 2)
    datasets = []
    for path in files[start:start + n]:
        ds = pydicom.dcmread(path)
        if downsample > 1:
            px = np.ascontiguousarray(ds.pixel_array[::downsample, ::downsample])
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = px.tobytes()
            ds.Rows, ds.Columns = px.shape
            ps = [float(v) * downsample for v in ds.PixelSpacing]
            ds.PixelSpacing = ps
            for kw in ("SmallestImagePixelValue", "LargestImagePixelValue"):
                if kw in ds:
                    del ds[kw]
        datasets.append(ds)
    names = [p.name for p in files[start:start + n]]
    return Base(f"{source}{'/' + str(downsample) if downsample > 1 else ''}", datasets, names)


def synthetic_base(n: int = 6, size: int = 64, seed: int = 0) -> Base:
    """A small axial CT series with lungs-like densities (air outside, soft tissue, air lungs)."""
    rng = np.random.default_rng(seed)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) ** 2 / (0.42 * size) ** 2 + (xx - size / 2) ** 2 / (0.46 * size) ** 2) < 1
    lungs = (((yy - size / 2) ** 2 / (0.25 * size) ** 2 + (np.abs(xx - size / 2) - 0.2 * size) ** 2
              / (0.14 * size) ** 2) < 1)
    datasets = []
    for k in range(n):
        hu = np.where(body, 40, -1000) + rng.integers(-20, 20, (size, size))
        hu = np.where(lungs, -850, hu)
        stored = (hu + 1024).clip(0, 4095).astype(np.uint16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Fuzz^Case", "FUZZ-1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality = "CT"
        ds.SeriesDescription = "synthetic fuzz base"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, 50.0 - 2.5 * k]  # k = 0 most superior
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [0.7, 0.7]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return Base("synthetic", datasets, [f"IM{k:04d}.dcm" for k in range(n)])


# --------------------------------------------------------------------------- mutations


@dataclass
class Work:
    """One case under construction: datasets (ds phase), then bytes (bytes phase), then files (fs phase)."""

    rng: random.Random
    datasets: list[Dataset]  # the base's, never changed: ds() copies a slice on first change
    names: list[str]
    encoded: list[bytes] = field(default_factory=list)
    folder: Path | None = None
    touched: set[int] = field(default_factory=set)  # slices a mutation changed
    copies: dict[int, Dataset] = field(default_factory=dict)

    def ds(self, k: int) -> Dataset:
        """Slice ``k`` to change (a copy of the base's)."""
        if k not in self.copies:
            self.copies[k] = copy.deepcopy(self.datasets[k])
        self.touched.add(k)
        return self.copies[k]

    def all(self) -> list[Dataset]:
        return [self.ds(k) for k in range(len(self.datasets))]

    def pick(self) -> int:
        """A slice index; ends of the stack (the silent case of old) twice as likely."""
        n = len(self.datasets)
        k = self.rng.choice([0, n - 1, 0, n - 1] + list(range(n)))
        self.touched.add(k)
        return k


@dataclass(frozen=True)
class Kind:
    name: str
    phase: str  # "ds", "bytes" or "fs"
    fn: Callable[[Work], None]
    must_warn: bool


KINDS: dict[str, Kind] = {}


def _kind(phase: str, must_warn: bool):
    def deco(fn: Callable[[Work], None]) -> Callable[[Work], None]:
        name = fn.__name__.lstrip("_")
        KINDS[name] = Kind(name, phase, fn, must_warn)
        return fn
    return deco


def _set(ds: Dataset, keyword: str, vr: str, value: Any) -> None:
    """Set an element as it would be written, even when its value is invalid for its VR."""
    tag = pydicom.tag.Tag(pydicom.datadict.tag_for_keyword(keyword))
    if vr in ("DS", "IS", "CS", "UI") :
        text = "\\".join(value) if isinstance(value, list) else str(value)
        raw = text.encode("latin-1")
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)
    else:
        ds[tag] = DataElement(tag, vr, value)


def _all_or_one(w: Work) -> list[int]:
    if w.rng.random() < 0.5:
        w.touched.update(range(len(w.datasets)))
        return list(range(len(w.datasets)))
    return [w.pick()]


# NumberOfFrames: checked against the pixel data before anything is allocated.
@_kind("ds", True)
def _frames_negative(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", "-1")


@_kind("ds", True)
def _frames_zero(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", "0")


@_kind("ds", True)
def _frames_int32_max(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", str(2 ** 31 - 1))


@_kind("ds", True)
def _frames_1e12(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", "1000000000000")


@_kind("ds", True)
def _frames_100k(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", "100000")


@_kind("ds", True)
def _frames_text(w: Work) -> None:
    _set(w.ds(w.pick()), "NumberOfFrames", "IS", "many")


@_kind("ds", True)
def _frames_all_two(w: Work) -> None:
    for ds in w.all():
        _set(ds, "NumberOfFrames", "IS", "2")


@_kind("ds", True)
def _per_frame_one_item_1e6(w: Work) -> None:
    ds = w.ds(w.pick())
    item, pos = Dataset(), Dataset()
    pos.ImagePositionPatient = list(ds.get("ImagePositionPatient", [0, 0, 0]))
    item.PlanePositionSequence = Sequence([pos])
    ds.PerFrameFunctionalGroupsSequence = Sequence([item])
    _set(ds, "NumberOfFrames", "IS", "1000000")


@_kind("ds", True)
def _shared_groups_garbage(w: Work) -> None:
    ds = w.ds(w.pick())
    item, ori = Dataset(), Dataset()
    ori.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    item.PlaneOrientationSequence = Sequence([ori])
    ds.SharedFunctionalGroupsSequence = Sequence([item])
    _set(ds, "NumberOfFrames", "IS", "3")


# Orientation: must be two perpendicular unit vectors.
@_kind("ds", True)
def _orientation_collinear(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["1", "0", "0", "1", "0", "0"])


@_kind("ds", True)
def _orientation_zero(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["0"] * 6)


@_kind("ds", True)
def _orientation_huge(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["1e308", "0", "0", "0", "1e308", "0"])


@_kind("ds", True)
def _orientation_nan(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["nan", "0", "0", "0", "1", "0"])


@_kind("ds", True)
def _orientation_skewed(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["1", "0", "0", "0.5", "0.866", "0"])


@_kind("ds", True)
def _orientation_short_list(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "ImageOrientationPatient", "DS", ["1", "0", "0", "0"])


@_kind("ds", False)
def _orientation_sagittal(w: Work) -> None:  # valid, only not axial: a reason, not a warning
    for ds in w.all():
        _set(ds, "ImageOrientationPatient", "DS", ["0", "1", "0", "0", "0", "-1"])


@_kind("ds", True)
def _orientation_missing(w: Work) -> None:
    for ds in w.all():
        if "ImageOrientationPatient" in ds:
            del ds.ImageOrientationPatient


# Positions.
@_kind("ds", True)
def _position_huge(w: Work) -> None:
    ds = w.ds(w.pick())
    _set(ds, "ImagePositionPatient", "DS", ["0", "0", "1e30"])


@_kind("ds", True)
def _position_nan(w: Work) -> None:
    _set(w.ds(w.pick()), "ImagePositionPatient", "DS", ["nan", "0", "0"])


@_kind("ds", True)
def _position_missing(w: Work) -> None:
    ds = w.ds(w.pick())
    if "ImagePositionPatient" in ds:
        del ds.ImagePositionPatient


@_kind("ds", True)
def _position_duplicate(w: Work) -> None:
    k = w.pick()
    other = 1 if k == 0 else k - 1
    _set(w.ds(k), "ImagePositionPatient", "DS",
         [str(v) for v in w.datasets[other].ImagePositionPatient])  # the base's: never deleted


@_kind("ds", True)
def _position_all_same(w: Work) -> None:
    pos = [str(v) for v in w.datasets[0].ImagePositionPatient]
    for ds in w.all():
        _set(ds, "ImagePositionPatient", "DS", pos)


@_kind("ds", True)
def _position_far_slice(w: Work) -> None:  # finite but a metre away: a gap
    k = w.pick()
    ds = w.ds(k)
    x, y, z = (float(v) for v in w.datasets[k].ImagePositionPatient)
    _set(ds, "ImagePositionPatient", "DS", [str(x), str(y), str(z + 900.0)])


@_kind("ds", True)
def _position_squeezed(w: Work) -> None:  # 0.02 mm apart: implausible slice spacing
    x, y, z = (float(v) for v in w.datasets[0].ImagePositionPatient)
    for k, ds in enumerate(w.all()):
        _set(ds, "ImagePositionPatient", "DS", [str(x), str(y), f"{z - 0.02 * k:.4f}"])


@_kind("ds", True)
def _position_stretched(w: Work) -> None:  # 80 mm apart
    x, y, z = (float(v) for v in w.datasets[0].ImagePositionPatient)
    for k, ds in enumerate(w.all()):
        _set(ds, "ImagePositionPatient", "DS", [str(x), str(y), str(z - 80.0 * k)])


# Spacing.
@_kind("ds", True)
def _pixel_spacing_zero_one(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "PixelSpacing", "DS", ["0.7", "0"])


@_kind("ds", True)
def _pixel_spacing_negative(w: Work) -> None:
    for k in _all_or_one(w):
        _set(w.ds(k), "PixelSpacing", "DS", ["-0.7", "-0.7"])


@_kind("ds", True)
def _pixel_spacing_zero(w: Work) -> None:
    for ds in w.all():
        _set(ds, "PixelSpacing", "DS", ["0", "0"])


@_kind("ds", True)
def _pixel_spacing_huge(w: Work) -> None:
    for ds in w.all():
        _set(ds, "PixelSpacing", "DS", ["1e30", "1e30"])


@_kind("ds", True)
def _pixel_spacing_missing(w: Work) -> None:
    for ds in w.all():
        if "PixelSpacing" in ds:
            del ds.PixelSpacing


@_kind("ds", True)
def _spacing_between_slices_huge(w: Work) -> None:
    for ds in w.all():
        _set(ds, "SpacingBetweenSlices", "DS", "1e30")
        if "ImagePositionPatient" in ds:
            del ds.ImagePositionPatient


# Modality LUT.
@_kind("ds", True)
def _slope_negative(w: Work) -> None:
    for ds in w.all():
        _set(ds, "RescaleSlope", "DS", "-1")


@_kind("ds", True)
def _intercept_min(w: Work) -> None:
    for ds in w.all():
        _set(ds, "RescaleIntercept", "DS", "-32768")


@_kind("ds", True)
def _slope_zero(w: Work) -> None:
    _set(w.ds(w.pick()), "RescaleSlope", "DS", "0")


@_kind("ds", True)
def _slope_huge(w: Work) -> None:
    for ds in w.all():
        _set(ds, "RescaleSlope", "DS", "1e30")


@_kind("ds", True)
def _intercept_text(w: Work) -> None:
    _set(w.ds(w.pick()), "RescaleIntercept", "DS", "minus")


# Image description versus pixel data.
@_kind("ds", True)
def _rows_zero(w: Work) -> None:
    _set(w.ds(w.pick()), "Rows", "US", 0)


@_kind("ds", True)
def _rows_max(w: Work) -> None:
    _set(w.ds(w.pick()), "Rows", "US", 65535)


@_kind("ds", True)
def _columns_plus_one(w: Work) -> None:
    ds = w.ds(w.pick())
    _set(ds, "Columns", "US", int(ds.Columns) + 1)


@_kind("ds", False)
def _bits_allocated_8(w: Work) -> None:
    _set(w.ds(w.pick()), "BitsAllocated", "US", 8)


@_kind("ds", False)
def _bits_stored_zero(w: Work) -> None:
    _set(w.ds(w.pick()), "BitsStored", "US", 0)


@_kind("ds", True)
def _samples_per_pixel_3(w: Work) -> None:
    _set(w.ds(w.pick()), "SamplesPerPixel", "US", 3)


@_kind("ds", False)
def _photometric_garbage(w: Work) -> None:
    _set(w.ds(w.pick()), "PhotometricInterpretation", "CS", "PALETTE COLOR")


@_kind("ds", False)
def _pixel_representation_signed(w: Work) -> None:
    for ds in w.all():
        _set(ds, "PixelRepresentation", "US", 1)


# Transfer syntax and encoding.
def _with_transfer_syntax(data: bytes, uid: str) -> bytes:
    """The file with its file meta saying ``uid`` (the dataset bytes unchanged); a file whose
    meta an earlier mutation destroyed is returned as it is."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    bio = io.BytesIO(data)
    try:
        read_preamble(bio, True)
        meta = _read_file_meta_info(bio)
    except Exception:  # noqa: BLE001 - cut or flipped by another mutation
        return data
    rest = data[bio.tell():]
    meta.TransferSyntaxUID = uid
    out = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=False)
    return b"\x00" * 128 + b"DICM" + out.getvalue() + rest


@_kind("bytes", True)
def _transfer_syntax_unknown(w: Work) -> None:
    k = w.pick()
    if w.encoded[k]:
        w.encoded[k] = _with_transfer_syntax(w.encoded[k], "1.2.3.4.5")


@_kind("bytes", True)
def _transfer_syntax_lie(w: Work) -> None:
    k = w.pick()
    if w.encoded[k]:
        native = not w.ds(k).file_meta.TransferSyntaxUID.is_compressed
        w.encoded[k] = _with_transfer_syntax(w.encoded[k], "1.2.840.10008.1.2.4.90" if native
                                             else "1.2.840.10008.1.2.1")


@_kind("ds", False)
def _deflated_valid(w: Work) -> None:
    ds = w.ds(w.pick())
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"


_ZERO_BLOCKS: dict[int, bytes] = {}


def _deflated_zeros(size: int) -> bytes:
    """``size`` zero bytes as raw deflate blocks ending on a sync flush (computed once per size)."""
    if size not in _ZERO_BLOCKS:
        c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        _ZERO_BLOCKS[size] = c.compress(bytes(size)) + c.flush(zlib.Z_SYNC_FLUSH)
    return _ZERO_BLOCKS[size]


@_kind("bytes", True)
def _deflate_bomb(w: Work) -> None:
    """The slice in the deflated syntax with 16-64 MiB of private zeros before its pixel data:
    a few kB on disk (deflate compresses zeros about 1000:1)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    k = w.pick()
    data = w.encoded[k]
    if not data:
        return
    bio = io.BytesIO(data)
    try:
        read_preamble(bio, True)
        _read_file_meta_info(bio)
    except Exception:  # noqa: BLE001 - cut or flipped by another mutation
        return
    body = data[bio.tell():]
    at = body.rfind(b"\xe0\x7f\x10\x00")
    if at < 0:
        return
    size = w.rng.choice([16, 32, 64]) << 20
    element = b"\xdf\x7f\x10\x10OB\x00\x00" + size.to_bytes(4, "little")  # private (7FDF,1010) OB
    head = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    tail = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = (head.compress(body[:at] + element) + head.flush(zlib.Z_SYNC_FLUSH) + _deflated_zeros(size)
              + tail.compress(body[at:]) + tail.flush())
    w.encoded[k] = _with_transfer_syntax(data[:bio.tell()], "1.2.840.10008.1.2.1.99") + stream


@_kind("ds", True)
def _private_header_8mib(w: Work) -> None:
    ds = w.ds(w.pick())
    ds.add_new(0x00091010, "OB", bytes(8 << 20))


# Identity (series grouping, duplicates).
@_kind("ds", False)
def _series_uid_split(w: Work) -> None:
    _set(w.ds(w.pick()), "SeriesInstanceUID", "UI", generate_uid())


@_kind("ds", False)
def _sop_duplicate(w: Work) -> None:
    k = w.pick()
    other = 1 if k == 0 else k - 1
    w.ds(k).SOPInstanceUID = w.ds(other).SOPInstanceUID


@_kind("ds", False)
def _instance_number_text(w: Work) -> None:
    _set(w.ds(w.pick()), "InstanceNumber", "IS", "x7")


@_kind("ds", False)
def _modality_missing(w: Work) -> None:
    for ds in w.all():
        if "Modality" in ds:
            del ds.Modality


@_kind("ds", False)
def _sop_uid_empty(w: Work) -> None:
    _set(w.ds(w.pick()), "SOPInstanceUID", "UI", "")


# Bytes of the written files.
@_kind("bytes", False)
def _bit_flips(w: Work) -> None:
    k = w.pick()
    data = bytearray(w.encoded[k])
    if not data:
        return
    for _ in range(w.rng.randint(1, 32)):
        i = w.rng.randrange(len(data))
        data[i] ^= 1 << w.rng.randrange(8)
    w.encoded[k] = bytes(data)


@_kind("bytes", False)
def _header_bit_flips(w: Work) -> None:
    k = w.pick()
    data = bytearray(w.encoded[k])
    if not data:
        return
    for _ in range(w.rng.randint(1, 8)):
        i = w.rng.randrange(min(len(data), 2048))
        data[i] ^= 1 << w.rng.randrange(8)
    w.encoded[k] = bytes(data)


@_kind("bytes", True)
def _truncate_anywhere(w: Work) -> None:
    k = w.pick()
    w.encoded[k] = w.encoded[k][:w.rng.randrange(len(w.encoded[k]) + 1)]


@_kind("bytes", True)
def _truncate_end_slice(w: Work) -> None:
    k = w.rng.choice([0, len(w.encoded) - 1])
    w.touched.add(k)
    w.encoded[k] = w.encoded[k][:w.rng.randrange(max(len(w.encoded[k]), 1))]


@_kind("bytes", True)
def _zero_length_end_slice(w: Work) -> None:
    k = w.rng.choice([0, len(w.encoded) - 1])
    w.touched.add(k)
    w.encoded[k] = b""


@_kind("bytes", True)
def _zero_length_any(w: Work) -> None:
    w.encoded[w.pick()] = b""


@_kind("bytes", False)
def _garbage_appended(w: Work) -> None:
    k = w.pick()
    w.encoded[k] = w.encoded[k] + bytes(w.rng.getrandbits(8) for _ in range(w.rng.randint(1, 4096)))


@_kind("bytes", False)
def _pixel_length_huge(w: Work) -> None:
    k = w.pick()
    data = bytearray(w.encoded[k])
    at = data.rfind(b"\xe0\x7f\x10\x00")
    if at >= 0 and data[at + 4:at + 6] in (b"OW", b"OB"):
        data[at + 8:at + 12] = (0x7FFFFFF0).to_bytes(4, "little")
    w.encoded[k] = bytes(data)


# The folder.
@_kind("fs", False)
def _fifo(w: Work) -> None:
    os.mkfifo(w.folder / "zz_pipe.dcm")


@_kind("fs", False)
def _sparse_dicm_256mib(w: Work) -> None:
    with open(w.folder / "zz_sparse.dcm", "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        fh.truncate(256 << 20)


@_kind("fs", False)
def _sparse_after_header(w: Work) -> None:
    head = w.encoded[0][:2048]
    with open(w.folder / "zz_sparse_header.dcm", "wb") as fh:
        fh.write(head)
        fh.truncate(256 << 20)


@_kind("fs", False)
def _symlink_loop(w: Work) -> None:
    os.symlink(w.folder, w.folder / "loop")


@_kind("fs", False)
def _delete_end_slice(w: Work) -> None:  # a shorter series; never the slice another mutation changed
    ends = [k for k in (0, len(w.names) - 1) if k not in w.touched]
    if ends:
        (w.folder / w.names[w.rng.choice(ends)]).unlink(missing_ok=True)


@_kind("fs", False)
def _junk_files(w: Work) -> None:
    (w.folder / "notes.txt").write_text("not dicom")
    (w.folder / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00")


ALWAYS_OK_EXTRAS = ("bit_flips", "truncate_anywhere")
#: Random damage may also undo a mutation (a flipped bit in the changed value): no warning is owed then.
RANDOM_DAMAGE = ("bit_flips", "header_bit_flips", "garbage_appended")
#: Kinds that take a slice out of the series.
DETACHING = ("series_uid_split",)


@contextlib.contextmanager
def lenient_pydicom():
    """Let pydicom write invalid values (the mutations are invalid on purpose)."""
    s = pydicom.config.settings
    old = (s.reading_validation_mode, s.writing_validation_mode)
    s.reading_validation_mode = s.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        s.reading_validation_mode, s.writing_validation_mode = old


def _encode(ds: Dataset) -> bytes:
    """Part-10 bytes (pydicom deflates the dataset itself for the deflated transfer syntax)."""
    bio = io.BytesIO()
    try:
        pydicom.dcmwrite(bio, ds, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - a mutated file meta: write it as it is
        bio = io.BytesIO()
        pydicom.dcmwrite(bio, ds, enforce_file_format=False)
    return bio.getvalue()


@dataclass(frozen=True)
class Case:
    seed: int
    base: str
    kinds: tuple[str, ...]
    must_warn: bool


def choose_kinds(rng: random.Random, kinds: list[str] | None = None) -> tuple[str, ...]:
    names = kinds or sorted(KINDS)
    chosen = rng.sample(names, rng.randint(1, 3))
    if rng.random() < 0.15:  # random damage on top
        chosen.append(rng.choice(ALWAYS_OK_EXTRAS))
    return tuple(dict.fromkeys(chosen))


def build_case(folder: Path, base: Base, seed: int, kinds: tuple[str, ...] | None = None) -> Case:
    """Write one mutated copy of ``base`` into ``folder`` (created); the mutations come from ``seed``."""
    rng = random.Random(seed)
    kinds = kinds or choose_kinds(rng)
    folder.mkdir(parents=True, exist_ok=True)
    w = Work(rng, base.datasets, list(base.names), folder=folder)
    encoded = base.encoded
    hit: dict[str, set[int]] = {}  # the slices each kind changed

    def apply(name: str) -> None:
        before = set(w.touched)
        w.touched = set()
        KINDS[name].fn(w)
        hit[name] = set(w.touched)
        w.touched |= before

    with lenient_pydicom():
        for name in kinds:
            if KINDS[name].phase == "ds":
                apply(name)
        w.encoded = [_encode(w.copies[k]) if k in w.copies else encoded[k] for k in range(len(encoded))]
    for name in kinds:
        if KINDS[name].phase == "bytes":
            apply(name)
    for name, data in zip(w.names, w.encoded):
        (folder / name).write_bytes(data)
    for name in kinds:
        if KINDS[name].phase == "fs":
            KINDS[name].fn(w)
    # A slice moved to a series of its own (a new SeriesInstanceUID) takes its damage with it:
    # the series that loads owes no warning for it.
    detached = set().union(*(hit.get(k, set()) for k in DETACHING))
    must_warn = (any(KINDS[k].must_warn and not (hit.get(k) and hit[k] <= detached) for k in kinds)
                 and not any(k in RANDOM_DAMAGE for k in kinds))
    return Case(seed, base.name, tuple(kinds), must_warn)


# --------------------------------------------------------------------------- outcomes


def geometry_problems(vol: Any) -> list[str]:
    """What is wrong with a loaded volume's geometry (empty when it is sound)."""
    out = []
    depth = vol.hu.shape[0]
    if len(vol.z_mm) != depth:
        out.append(f"z_mm has {len(vol.z_mm)} entries for {depth} slices")
    if not np.all(np.isfinite(vol.z_mm)):
        out.append("z_mm not finite")
    sp = np.asarray(vol.spacing_mm, float)
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        out.append(f"spacing {tuple(sp)}")
    elif vol.modality == "CT":
        if not (0.05 <= sp[1] <= 20 and 0.05 <= sp[2] <= 20):
            out.append(f"pixel spacing {tuple(sp[1:])} implausible")
        if depth > 1 and not 0.05 <= sp[0] <= 50:
            out.append(f"slice spacing {sp[0]} implausible")
    d = np.asarray(vol.direction, float)
    if d.shape != (3, 3) or not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=1e-2):
        out.append("direction is not a rotation")
    if not np.all(np.isfinite(np.asarray(vol.origin_mm, float))):
        out.append("origin not finite")
    if len(vol.sop_instance_uids) != depth or len(vol.source_files) != depth:
        out.append("per-slice lists do not match the depth")
    if vol.modality == "CT" and vol.hu.size:
        sample = np.asarray(vol.hu[:, ::8, ::8], dtype=np.float64)
        if not np.all(np.isfinite(sample)):
            out.append("HU not finite")
        elif not -1500 <= float(np.median(sample)) <= 3100:
            out.append(f"median HU {float(np.median(sample)):.0f}")
    return out


def classify(case: Case, vol: Any = None, error: BaseException | None = None) -> tuple[str, str]:
    """(outcome, detail) of one case that ended (hangs and crashes are the caller's to see)."""
    from ctscreen.errors import CtscreenError

    if error is not None:
        if isinstance(error, MemoryError):
            return "oom", repr(error)[:200]
        if isinstance(error, CtscreenError):
            msg = str(error)
            if not msg or "\n" in msg or "Traceback" in msg:
                return "crash", f"unclear message: {msg[:200]!r}"
            return "refused_clear", msg[:200]
        return "crash", f"{type(error).__name__}: {error}"[:300]
    warned = bool(vol.warnings) or bool(vol.not_analysable_reason)
    problems = geometry_problems(vol)
    if problems and not warned:
        return "silent_bad_geometry", "; ".join(problems)
    if case.must_warn and not warned:
        return "silent_bad_geometry", f"{case.kinds} loaded without a warning"
    return ("loaded_with_warning" if warned else "loaded_ok"), ""


def run_case(folder: Path, case: Case) -> tuple[str, str]:
    """Scan and load ``folder`` as the viewer and ``ctscreen analyze`` do; classify the outcome."""
    from ctscreen.io.dicom import load_series

    try:
        vol = load_series(folder, workers=2)
    except Exception as exc:  # noqa: BLE001 - classified
        return classify(case, error=exc)
    return classify(case, vol)
