"""DICOM Segmentation (SEG) export of the lesion mask via highdicom.

Research use, not for diagnosis.

One BINARY SEG instance with two segments (1 ground-glass opacity,
2 consolidation), derived from the source CT series. The lesion mask is in the
volume's display order, which the loader may have flipped relative to the
stored pixels; every slice is mapped back to its source image through
``Volume.sop_instance_uids`` and the flips (or a transpose) are undone by
comparing the stored Image Orientation (Patient) with ``Volume.direction``,
so each SEG frame lies pixel-for-pixel on its source image. Only frames with
lesions are stored.

The SEG is built from in-memory copies of the source headers (the ones the
loader read; the files are never modified). Where an untidy header lacks
PixelSpacing, SliceThickness or a slice's ImagePositionPatient, the copy gets
the value the loader used (pixel size from ReconstructionDiameter, positions
estimated from InstanceNumber...), so the SEG's geometry is the volume's. A
series whose geometry the loader could only guess (no orientation, no
position or pixel size at all) gets no SEG: :class:`ExportError` says why.

As a DICOM object of the same patient and study, the SEG carries the source's
patient module (name, ID) - that is how DICOM links it to the study.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DSfloat

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import ExportError
from ctscreen.io.files import atomic_write
from ctscreen.imaging.result import CONSOLIDATION, GGO

#: Segmented Property Category: SCT 49755003 "Morphologically Abnormal Structure" (CID 7150).
CATEGORY = codes.SCT.MorphologicallyAbnormalStructure
#: Segmented Property Type of segment 1: DCM 112120 "Ground glass opacity" (CID 6104).
GGO_TYPE = codes.DCM.GroundGlassOpacity
#: Segmented Property Type of segment 2: SCT 95436008 "Lung consolidation".
CONSOLIDATION_TYPE = Code("95436008", "SCT", "Lung consolidation")
SEGMENT_LABELS = {GGO: "Ground-glass opacity", CONSOLIDATION: "Consolidation"}
DEFAULT_SERIES_NUMBER = 9901
#: A slice position in the headers and the volume's z_mm agree to this (else the loader did not use them).
_POSITION_TOL_MM = 0.05

# Type 2 attributes highdicom copies from the source; some scanners omit them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                 "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def display_to_stored(mask_yx: np.ndarray, iop: Sequence[float], direction: np.ndarray,
                      stored_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Map a display-order slice back to the stored pixel grid of its source image.

    Parameters
    ----------
    mask_yx : ndarray, (y, x)
        A slice in the volume's display order.
    iop : sequence of 6 float
        The source's Image Orientation (Patient): row vector (direction of
        increasing column index) then column vector (increasing row index).
    direction : ndarray, (3, 3)
        ``Volume.direction`` (columns: LPS vectors of array axes z, y, x).
    stored_shape : (rows, columns), optional
        Checked against the result.

    Raises
    ------
    ExportError
        The display axes are not the stored axes up to flips and a transpose.
    """
    d = np.asarray(direction, dtype=float)
    dy, dx = d[:, 1], d[:, 2]
    r = np.asarray(iop[:3], dtype=float)  # stored axis 1
    c = np.asarray(iop[3:6], dtype=float)  # stored axis 0
    m = np.array([[c @ dy, c @ dx], [r @ dy, r @ dx]])  # [stored axis, display axis]
    tol = 0.99
    if abs(m[0, 0]) > tol and abs(m[1, 1]) > tol:
        out = mask_yx
        if m[0, 0] < 0:
            out = out[::-1, :]
        if m[1, 1] < 0:
            out = out[:, ::-1]
    elif abs(m[0, 1]) > tol and abs(m[1, 0]) > tol:
        out = mask_yx.T
        if m[0, 1] < 0:
            out = out[::-1, :]
        if m[1, 0] < 0:
            out = out[:, ::-1]
    else:
        raise ExportError("the volume's orientation does not match the source images' Image Orientation "
                          "(Patient) up to flips \u2014 a SEG cannot reference them; export PNG/report instead")
    out = np.ascontiguousarray(out)
    if stored_shape is not None and tuple(out.shape) != tuple(stored_shape):
        raise ExportError(f"slice shape {out.shape} does not match the source image ({stored_shape[0]}x"
                          f"{stored_shape[1]}) \u2014 the volume was resampled; a SEG needs the original grid")
    return out


def _header_copy(header: Any) -> Dataset:
    """A new dataset holding the same elements as ``header``, so elements added to it leave ``header`` alone.

    The elements themselves are shared (cheap, unlike a deep copy): callers only add
    elements or replace them with :func:`_put`, never change a value in place.
    """
    ds = Dataset()
    ds.update(header)
    meta = getattr(header, "file_meta", None)
    if meta is not None:
        ds.file_meta = meta
    return ds


def _put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set ``keyword`` on our copy without touching an element it shares with the loaded header."""
    if keyword in ds:
        del ds[keyword]
    setattr(ds, keyword, value)


def _source_datasets(volume: Any) -> list[Any]:
    """One header dataset (no pixel data) per display slice, matched by SOP Instance UID, ours to add to.

    The headers the loader read (``volume.headers``) are used as they are - the same
    elements the files hold, without reading a few hundred files again; a slice
    without one is read from ``volume.source_files``. The source files are never written.
    """
    uids = [str(u) for u in volume.sop_instance_uids]
    if len(uids) != volume.shape[0]:
        raise ExportError("the volume has no SOP Instance UID per slice \u2014 a SEG needs the source DICOM images")
    if not all(uids):
        empty = sum(not u for u in uids)
        raise ExportError(f"the SOPInstanceUID of {empty} of {len(uids)} source images is empty (removed by "
                          "de-identification?), and a DICOM SEG can only reference its source images by that UID "
                          "\u2014 the images are there; re-export the series with its UIDs to get a SEG")
    if len(set(uids)) != len(uids) or any("#" in u for u in uids):  # "#": a frame of a multi-frame file
        raise ExportError("the series is stored as multi-frame images; DICOM SEG export supports single-frame "
                          "series only for now \u2014 export PNG/report instead")
    by_uid: dict[str, Any] = {}
    wanted = set(uids)
    for h in volume.headers:
        uid = str(getattr(h, "SOPInstanceUID", "") or "")
        if uid in wanted and uid not in by_uid:
            by_uid[uid] = _header_copy(h)
    if len(by_uid) < len(wanted):
        for f in dict.fromkeys(volume.source_files):
            if len(by_uid) == len(wanted):
                break
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - moved/deleted/unreadable: reported below as not found
                continue
            uid = str(ds.get("SOPInstanceUID", ""))
            if uid in wanted and uid not in by_uid:
                by_uid[uid] = ds
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise ExportError(f"{len(missing)} source image(s) of the series were not found (first: {missing[0]}) "
                          "\u2014 keep the original DICOM files next to the analysis")
    out = []
    for u in uids:
        ds = by_uid[u]
        for kw in _TYPE2_COPIED:  # on our in-memory copy only
            if kw not in ds:
                setattr(ds, kw, "")
        out.append(ds)
    return out


def _numbers(ds: Dataset, keyword: str, n: int) -> tuple[float, ...] | None:
    """``n`` finite numbers of ``keyword``, or None when absent, empty or damaged."""
    try:
        value = ds.get(keyword)
        vals = tuple(float(v) for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value]))
    except (TypeError, ValueError):
        return None
    if len(vals) != n or not all(np.isfinite(vals)):
        return None
    return vals


def _ds(value: float) -> DSfloat:
    return DSfloat(float(value), auto_format=True)


def _stored_pixel_spacing(iop: Sequence[float], volume: Any) -> tuple[float, float]:
    """PixelSpacing (row distance, column distance) of the stored grid from the volume's display spacing."""
    d = np.asarray(volume.direction, dtype=float)
    col_vec = np.asarray(iop[3:6], dtype=float)  # down the stored rows
    row_vec = np.asarray(iop[:3], dtype=float)  # along a stored row
    sy, sx = float(volume.spacing_mm[1]), float(volume.spacing_mm[2])
    between_rows = sy if abs(col_vec @ d[:, 1]) >= abs(col_vec @ d[:, 2]) else sx
    between_cols = sx if abs(row_vec @ d[:, 2]) >= abs(row_vec @ d[:, 1]) else sy
    return between_rows, between_cols


def _fill_geometry(sources: list[Any], volume: Any) -> None:
    """Give every source copy the geometry a SEG needs, from the volume where the header lacks it.

    Untidy series lack PixelSpacing, SliceThickness or a slice's ImagePositionPatient;
    the loader then took the pixel size from ReconstructionDiameter/ImagerPixelSpacing
    and estimated missing positions from InstanceNumber. The same values go on our
    in-memory copies (never on the files), so the SEG's plane positions and pixel
    measures are where the loader put the slices. Raises :class:`ExportError` where the
    volume's geometry is itself a guess (no orientation, no position or pixel size at all).
    """
    iops = [_numbers(ds, "ImageOrientationPatient", 6) for ds in sources]
    iop = next((v for v in iops if v is not None), None)
    if iop is None:
        raise ExportError("the source images have no Image Orientation (Patient), so a SEG cannot be placed on "
                          "them \u2014 export PNG/report instead")
    first = next(ds for ds, v in zip(sources, iops) if v is not None)
    for ds, v in zip(sources, iops):
        if v is None:
            _put(ds, "ImageOrientationPatient", list(first.ImageOrientationPatient))

    if any(_numbers(ds, "PixelSpacing", 2) is None for ds in sources):
        # what the loader's fallbacks use; without any of it the volume's pixel size is the 1 mm it assumed
        known = any(_numbers(ds, "PixelSpacing", 2) is not None
                    or ((_numbers(ds, "ReconstructionDiameter", 1) or (0.0,))[0] > 0
                        and ds.get("Rows") == ds.get("Columns"))
                    or _numbers(ds, "ImagerPixelSpacing", 2) is not None for ds in sources)
        if not known:
            raise ExportError("the source images have no PixelSpacing (nor ReconstructionDiameter or "
                              "ImagerPixelSpacing), so the pixel size in a SEG would be made up \u2014 "
                              "export PNG/report instead")
        spacing = [_ds(v) for v in _stored_pixel_spacing(iop, volume)]
        for ds in sources:
            if _numbers(ds, "PixelSpacing", 2) is None:
                _put(ds, "PixelSpacing", list(spacing))

    thickness = next((v[0] for v in (_numbers(ds, "SliceThickness", 1) for ds in sources) if v and v[0] > 0),
                     float(volume.spacing_mm[0]))
    for ds in sources:
        v = _numbers(ds, "SliceThickness", 1)
        if v is None or v[0] <= 0:
            _put(ds, "SliceThickness", _ds(thickness))

    positions = [_numbers(ds, "ImagePositionPatient", 3) for ds in sources]
    have = [k for k, p in enumerate(positions) if p is not None]
    if len(have) == len(sources):
        return
    # The loader's slice axis: the normal, pointing along the patient axis it is closest to;
    # z_mm[k] is slice k's position along it.
    normal = np.cross(iop[:3], iop[3:])
    normal = normal / np.linalg.norm(normal)
    if normal[int(np.argmax(np.abs(normal)))] < 0:
        normal = -normal
    z = np.asarray(volume.z_mm, dtype=float)
    p = np.array([positions[k] for k in have], dtype=float).reshape(-1, 3)
    s = p @ normal
    if (len(have) < 2 or len(z) != len(sources) or np.ptp(s) <= 0
            or float(np.abs(s - z[have]).max()) > _POSITION_TOL_MM):
        raise ExportError(f"{len(sources) - len(have)} of {len(sources)} source images have no Image Position "
                          "(Patient) and the others do not place them, so the slices were only ordered by "
                          "InstanceNumber \u2014 a SEG cannot say where its frames lie; export PNG/report instead")
    # In-plane part of the position as a straight line along the normal (constant without gantry
    # tilt, the shear with it): the line the loader's InstanceNumber fit put the missing slices on.
    coef = np.polyfit(s, p - s[:, None] * normal, 1)
    for k, pos in enumerate(positions):
        if pos is None:
            est = coef[0] * z[k] + coef[1] + z[k] * normal
            _put(sources[k], "ImagePositionPatient", [_ds(v) for v in est])


def build_seg(result: Any, series_number: int = DEFAULT_SERIES_NUMBER,
              series_description: str | None = None) -> Any:
    """Build the ``highdicom.seg.Segmentation`` of ``result.lesion`` (not written).

    Raises
    ------
    ExportError
        Sources missing, geometry mismatch, or highdicom refused the input.
    """
    import highdicom as hd

    vol = result.volume
    lesion = np.asarray(result.lesion)
    if lesion.shape != vol.shape:
        raise ExportError(f"lesion mask shape {lesion.shape} does not match the volume {vol.shape}")
    sources = _source_datasets(vol)
    _fill_geometry(sources, vol)
    frames = []
    for k, ds in enumerate(sources):
        sl = np.where((lesion[k] == GGO) | (lesion[k] == CONSOLIDATION), lesion[k], 0).astype(np.uint8)
        frames.append(display_to_stored(sl, ds.ImageOrientationPatient, vol.direction, (int(ds.Rows), int(ds.Columns))))
    pixel_array = np.stack(frames)
    if not pixel_array.any():
        raise ExportError("no lesions were found, so there is nothing to store in a DICOM SEG \u2014 "
                          "export the report instead")

    algorithm = hd.AlgorithmIdentificationSequence(
        name=str(result.model_name or "ctscreen")[:64],
        family=codes.DCM.ArtificialIntelligence,
        version=str(result.model_version or __version__)[:64],
        source="ctscreen",
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=label, segment_label=SEGMENT_LABELS[label],
            segmented_property_category=CATEGORY, segmented_property_type=ptype,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"ctscreen {SEGMENT_LABELS[label]}",
        )
        for label, ptype in ((GGO, GGO_TYPE), (CONSOLIDATION, CONSOLIDATION_TYPE))
    ]
    desc = series_description or f"ctscreen lesions {result.model_name}"[:64]
    try:
        with warnings.catch_warnings():
            # highdicom checks the copied PatientName and warns with the name itself in the
            # message: that would put the patient's name on stderr and in logs. The SEG copies
            # the name as stored, so the warning tells the user nothing they can act on.
            warnings.filterwarnings("ignore", message=r".*intended person name.*", category=UserWarning)
            # a malformed UID in a copied header: the loader already reported it once, in the series warnings
            warnings.filterwarnings("ignore", message=r"Invalid value for VR UI", category=UserWarning)
            seg = _segmentation(hd, sources, pixel_array, descriptions, series_number, desc)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ExportError(f"highdicom could not build the SEG for series {vol.series_instance_uid}: {exc}") from exc
    return seg


def _segmentation(hd: Any, sources: Any, pixel_array: Any, descriptions: Any, series_number: int, desc: str) -> Any:
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(series_number),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ctscreen",
        manufacturer_model_name="ctscreen",
        software_versions=__version__,
        device_serial_number="0",
        content_label="LESIONS",
        content_description=RESEARCH_NOTICE[:64],
        series_description=desc[:64],
        omit_empty_frames=True,
    )


def write_seg(result: Any, path: str | os.PathLike, force: bool = False,
              series_number: int = DEFAULT_SERIES_NUMBER, series_description: str | None = None) -> Path:
    """Build the DICOM SEG of ``result`` and write it atomically to ``path``; returns the path."""
    target = Path(path)
    if target.exists() and not force:  # refuse before the (slow) build
        raise ExportError(f"{target} exists \u2014 use --force to overwrite")
    seg = build_seg(result, series_number=series_number, series_description=series_description)
    return atomic_write(target, lambda fh: seg.save_as(fh, enforce_file_format=True), force=force)
