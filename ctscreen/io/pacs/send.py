"""Results as DICOM objects for the PACS: the lesion SEG and annotated key images as Secondary Capture.

Research use, not for diagnosis.

A PACS viewer shows a study's objects side by side, so the results are sent as objects
of the same study: the DICOM SEG (:func:`ctscreen.io.export_seg.build_seg`, which viewers
such as OHIF and Weasis overlay on the CT) and the annotated montage and key slices as
Secondary Capture images (RGB), which every PACS viewer displays. The key images are the
PNG renderings of :mod:`ctscreen.io.export_png` - without patient name or ID burned in
unless asked - while the DICOM header carries the study's identifiers (patient module,
Study Instance UID, accession number), copied from the analysed series, so the images sit
beside the study.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.io.files import MONTAGE_NAME, REPORT_JSON, SEG_NAME, SLICE_PNG_PATTERN

#: The one-page report 'ctscreen analyze --pdf' writes (ctscreen.io.report_pdf.REPORT_PDF; that module needs matplotlib).
REPORT_PDF = "report.pdf"
from ctscreen.io.pacs.common import PacsError

#: Series number of the key images (the SEG uses 9901).
SC_SERIES_NUMBER = 9902
#: Series number of the report (Encapsulated PDF).
PDF_SERIES_NUMBER = 9903
#: Most single-slice key images sent beside the montage.
MAX_KEY_IMAGES = 6

# Study-level attributes a Secondary Capture copies from the analysed series.
_STUDY_KEYWORDS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
                   "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                   "ReferringPhysicianName", "StudyDescription")


def reference_header(volume: Any) -> Dataset:
    """The study-identifying header of an analysed volume (first loaded header, else its first file)."""
    for h in getattr(volume, "headers", ()) or ():
        if getattr(h, "StudyInstanceUID", None):
            return h
    for f in getattr(volume, "source_files", ()) or ():
        try:
            return pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - try the next one
            continue
    raise PacsError("the analysed series has no DICOM header to take the study's identifiers from \u2014 "
                    "key images need the source series (a study UID and patient module)")


def _orientation_code(letters: str) -> str:
    return {"S": "H", "I": "F"}.get(letters[:1], letters[:1])


def build_secondary_capture(reference: Dataset, rgb: np.ndarray, *, series_instance_uid: str,
                            instance_number: int, description: str, sop_instance_uid: str | None = None,
                            patient_orientation: tuple[str, str] = ("L", "P"), burned_in_patient: bool = False,
                            source_image: tuple[str, str] | None = None,
                            series_number: int = SC_SERIES_NUMBER) -> Dataset:
    """One RGB Secondary Capture image of the study of ``reference``.

    Parameters
    ----------
    reference : Dataset
        A header of the analysed series (patient and study modules are copied).
    rgb : ndarray of uint8, (rows, columns, 3)
    series_instance_uid : str
        The key-image series (one per push).
    instance_number : int
    description : str
        Derivation description (what the image shows).
    patient_orientation : (row, column) letters
        Direction of the image rows and columns; the loader shows axial slices with rows
        to the patient's left ("L") and columns to posterior ("P").
    burned_in_patient : bool
        The pixels show the patient's name or ID (BurnedInAnnotation YES).
    source_image : (SOP Class UID, SOP Instance UID), optional
        The CT slice a key image was rendered from.
    """
    import highdicom as hd

    arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise PacsError(f"a key image must be RGB (rows, columns, 3), not {arr.shape}")
    ref = Dataset()
    for kw in _STUDY_KEYWORDS:
        if kw in reference:
            setattr(ref, kw, reference.data_element(kw).value)
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if kw not in ref:
            setattr(ref, kw, None)
    if "StudyInstanceUID" not in ref:
        raise PacsError("the reference header has no Study Instance UID \u2014 key images cannot join the study")
    orientation = tuple(_orientation_code(x) for x in patient_orientation)
    import warnings

    with warnings.catch_warnings():
        # highdicom warns with the patient's name in the message for unusual names; keep it off stderr.
        warnings.filterwarnings("ignore", message=r".*intended person name.*", category=UserWarning)
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=arr, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", patient_orientation=orientation,
            series_instance_uid=series_instance_uid, series_number=int(series_number),
            sop_instance_uid=sop_instance_uid or generate_uid(), instance_number=int(instance_number),
            manufacturer="ctscreen", transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    sc.SeriesDescription = "ctscreen key images (research use only)"
    sc.DerivationDescription = description[:1024]
    sc.ImageComments = RESEARCH_NOTICE
    sc.BurnedInAnnotation = "YES" if burned_in_patient else "NO"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.SoftwareVersions = __version__
    sc.Laterality = ""  # Type 2C in General Series: a chest CT study is not of one side
    sc.ManufacturerModelName = "ctscreen"
    if source_image is not None and all(source_image):
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source_image
        sc.SourceImageSequence = [item]
    if "StudyDescription" in reference:
        sc.StudyDescription = reference.StudyDescription
    return sc


def build_encapsulated_pdf(reference: Dataset, pdf: bytes, *, title: str = "ctscreen chest CT lesion report",
                           sop_instance_uid: str | None = None, series_instance_uid: str | None = None,
                           burned_in_patient: bool = False, series_number: int = PDF_SERIES_NUMBER) -> Dataset:
    """The one-page report as a DICOM Encapsulated PDF of the study of ``reference``.

    PACS viewers list it with the study's documents (modality DOC) and open it as a PDF.
    """
    import datetime

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import EncapsulatedPDFStorage

    if not pdf.startswith(b"%PDF"):
        raise PacsError("the report is not a PDF file \u2014 pass the report.pdf that 'ctscreen analyze --pdf' wrote")
    ds = Dataset()
    for kw in _STUDY_KEYWORDS:
        if kw in reference:
            setattr(ds, kw, reference.data_element(kw).value)
    if "StudyInstanceUID" not in ds:
        raise PacsError("the reference header has no Study Instance UID \u2014 the report cannot join the study")
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "StudyID", "ReferringPhysicianName"):
        if kw not in ds:
            setattr(ds, kw, "")
    now = datetime.datetime.now()
    if "SpecificCharacterSet" in reference:
        ds.SpecificCharacterSet = reference.SpecificCharacterSet
    ds.SOPClassUID = EncapsulatedPDFStorage
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid or generate_uid()
    ds.SeriesNumber = int(series_number)
    ds.SeriesDescription = "ctscreen report (research use only)"
    ds.Manufacturer = "ctscreen"
    ds.ManufacturerModelName = "ctscreen"
    ds.SoftwareVersions = __version__
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES" if burned_in_patient else "NO"
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def report_pdf_bytes(result: Any, include_patient: bool = False) -> bytes:
    """The one-page report of :mod:`ctscreen.io.report_pdf` as PDF bytes (written to a temporary folder only)."""
    import tempfile

    from ctscreen.io.report_pdf import write_report_pdf

    with tempfile.TemporaryDirectory(prefix="ctscreen-report-") as tmp:
        return write_report_pdf(result, Path(tmp) / "report.pdf", include_patient=include_patient).read_bytes()


def key_slice_indices(result: Any, count: int = MAX_KEY_IMAGES) -> list[int]:
    """The ``count`` slices with the largest lesion area, in slice order."""
    les = np.asarray(result.lesion)
    area = (les.reshape(les.shape[0], -1) > 0).sum(axis=1)
    ranked = [int(k) for k in np.argsort(-area, kind="stable") if area[k] > 0][: max(0, int(count))]
    return sorted(ranked)


def secondary_captures(result: Any, *, include_patient: bool = False, max_key_images: int = MAX_KEY_IMAGES,
                       montage: bool = True) -> list[Dataset]:
    """The annotated montage and up to ``max_key_images`` lesion slices of ``result`` as Secondary Captures."""
    from ctscreen.io.export_png import render_montage, render_slice_png

    vol = result.volume
    ref = reference_header(vol)
    series_uid = generate_uid()
    headers = {str(getattr(h, "SOPInstanceUID", "")): h for h in getattr(vol, "headers", ()) or ()}
    out: list[Dataset] = []
    if montage:
        out.append(build_secondary_capture(ref, render_montage(result, include_patient=include_patient),
                                           series_instance_uid=series_uid, instance_number=1,
                                           description="ctscreen lesion montage", burned_in_patient=include_patient))
    for k in key_slice_indices(result, max_key_images):
        uid = vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else ""
        src = headers.get(uid)
        source = (str(getattr(src, "SOPClassUID", "")), uid) if src is not None else None
        out.append(build_secondary_capture(
            ref, render_slice_png(result, k, include_patient=include_patient), series_instance_uid=series_uid,
            instance_number=len(out) + 1, description=f"ctscreen lesion overlay, slice {k + 1}",
            burned_in_patient=include_patient, source_image=source))
    return out


def result_datasets(result: Any, *, seg: bool = True, key_images: bool = True, include_patient: bool = False,
                    max_key_images: int = MAX_KEY_IMAGES, report: bool = False) -> tuple[list[Dataset], list[str]]:
    """The SEG, key images and (``report``) the PDF report of an in-memory result; returns ``(datasets, notes)``.

    A result without lesions has no SEG (a note says so); the montage is still sent.
    """
    from ctscreen.errors import ExportError
    from ctscreen.io.export_seg import build_seg

    datasets: list[Dataset] = []
    notes: list[str] = []
    if seg:
        try:
            datasets.append(build_seg(result))
        except ExportError as exc:
            notes.append(f"no SEG sent: {exc}")
    if key_images:
        datasets.extend(secondary_captures(result, include_patient=include_patient, max_key_images=max_key_images))
    if report:
        datasets.append(build_encapsulated_pdf(reference_header(result.volume),
                                               report_pdf_bytes(result, include_patient=include_patient),
                                               burned_in_patient=include_patient))
    return datasets, notes


# -- from files ----------------------------------------------------------------------------------------
def _read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise PacsError(f"{path} is not a readable PNG \u2014 pass the result folder or PNG files ctscreen wrote")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_dicom(path: Path) -> Dataset:
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # noqa: BLE001
        raise PacsError(f"{path} is not a readable DICOM file ({exc}) \u2014 pass DICOM, PNG or a result folder") from exc
    if "SOPInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        raise PacsError(f"{path} has no SOP or Study Instance UID \u2014 it cannot be stored in a PACS")
    return ds


def _report_of(folder: Path) -> dict:
    try:
        return json.loads((folder / REPORT_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _key_pngs(folder: Path, report: dict, count: int) -> list[Path]:
    """The slice PNGs of a result folder with the largest lesion area (report.json), at most ``count``."""
    pngs = sorted(folder.glob(SLICE_PNG_PATTERN))
    if len(pngs) <= count:
        return pngs
    area = {}
    for row in report.get("slices", []) or []:
        try:
            area[int(row["index"]) + 1] = float(row.get("lesion_area_mm2") or 0)
        except (KeyError, TypeError, ValueError):
            continue
    def number(p: Path) -> int:
        try:
            return int(p.stem.split("_")[-1])
        except ValueError:
            return 0
    ranked = sorted(pngs, key=lambda p: -area.get(number(p), 0.0))[:count]
    return sorted(ranked, key=number)


def collect_files(paths: Sequence[str | Path], *, source: str | Path | None = None, key_images: bool = True,
                  max_key_images: int = MAX_KEY_IMAGES, report: bool = True) -> tuple[list[Dataset], list[str]]:
    """Datasets to push from result folders and files; returns ``(datasets, notes)``.

    A result folder (``ctscreen analyze --out``) gives its ``lesions_seg.dcm`` and, as
    Secondary Captures, ``montage.png`` and up to ``max_key_images`` ``slice_*.png`` (largest
    lesion area first), and with ``report`` its ``report.pdf`` as an Encapsulated PDF. DICOM
    files are sent as they are; PNG files become Secondary Captures, PDF files Encapsulated PDFs. The study identifiers of the Secondary Captures come from a DICOM file among
    the inputs (the SEG), else from ``source`` (a file or folder of the analysed series).

    Raises
    ------
    PacsError
        Nothing to send, an unreadable input, or PNGs without a study to attach them to.
    """
    dicoms: list[tuple[Path, Dataset]] = []
    pngs: list[Path] = []
    pdfs: list[Path] = []
    reports: list[dict] = []
    notes: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            report = _report_of(p)
            reports.append(report)
            if (p / SEG_NAME).exists():
                dicoms.append((p / SEG_NAME, _read_dicom(p / SEG_NAME)))
            else:
                notes.append(f"{p} has no {SEG_NAME} (no lesions, or SEG not exported)")
            if key_images:
                if (p / MONTAGE_NAME).exists():
                    pngs.append(p / MONTAGE_NAME)
                pngs.extend(_key_pngs(p, report, max_key_images))
            if report and (p / REPORT_PDF).exists():
                pdfs.append(p / REPORT_PDF)
            if not (p / SEG_NAME).exists() and not any(q.parent == p for q in pngs + pdfs):
                raise PacsError(f"{p} holds no {SEG_NAME}, {MONTAGE_NAME}, slice PNGs or {REPORT_PDF} \u2014 pass a "
                                "folder written by 'ctscreen analyze --out'")
        elif p.is_file():
            if p.suffix.lower() == ".png":
                pngs.append(p)
            elif p.suffix.lower() == ".pdf":
                pdfs.append(p)
            else:
                dicoms.append((p, _read_dicom(p)))
        else:
            raise PacsError(f"{p} does not exist \u2014 pass a result folder or files to send")
    datasets = [ds for _, ds in dicoms]
    ref = None
    if pngs or pdfs:
        ref = next((ds for _, ds in dicoms if "PatientID" in ds or "PatientName" in ds), None)
        if ref is None and source is not None:
            ref = _source_header(Path(source))
        if ref is None:
            raise PacsError("PNG key images and PDF reports need the study they belong to \u2014 include the SEG "
                            "(lesions_seg.dcm) or pass --source with the analysed DICOM series")
    burned = any("patient_name" in (r.get("series") or {}) for r in reports)
    stem = str(getattr(ref, "SOPInstanceUID", "")) + str(getattr(ref, "StudyInstanceUID", ""))
    for pdf in pdfs:
        data = pdf.read_bytes()
        digest = hashlib.sha1(data).hexdigest()
        datasets.append(build_encapsulated_pdf(
            ref, data, burned_in_patient=burned,
            series_instance_uid=generate_uid(entropy_srcs=["ctscreen-pdf-series", stem]),
            sop_instance_uid=generate_uid(entropy_srcs=["ctscreen-pdf", stem, pdf.name, digest])))
    if pngs:
        # The same result pushed twice gives the same UIDs, so the PACS does not show it twice.
        series_uid = generate_uid(entropy_srcs=["ctscreen-sc-series", stem])
        for n, png in enumerate(pngs, start=1):
            digest = hashlib.sha1(png.read_bytes()).hexdigest()
            sc = build_secondary_capture(
                ref, _read_png(png), series_instance_uid=series_uid, instance_number=n,
                sop_instance_uid=generate_uid(entropy_srcs=["ctscreen-sc", stem, png.name, digest]),
                description=f"ctscreen {png.stem.replace('_', ' ')}", burned_in_patient=burned)
            datasets.append(sc)
    if not datasets:
        raise PacsError("nothing to send \u2014 pass a result folder, a SEG, key-image PNGs or a report PDF")
    return datasets, notes


def _source_header(source: Path) -> Dataset:
    files: Iterable[Path] = [source] if source.is_file() else sorted(q for q in source.rglob("*") if q.is_file())
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # noqa: BLE001
            continue
        if "StudyInstanceUID" in ds:
            return ds
    raise PacsError(f"{source} holds no DICOM file with a Study Instance UID \u2014 pass the analysed series with --source")


def dataset_bytes(ds: Dataset) -> bytes:
    """The DICOM file form of ``ds`` (for writing a copy of what was sent)."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
