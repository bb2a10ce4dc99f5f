"""Find every study under an archive folder, headers only (no pixels, no torch).

What one *study* is
-------------------
One StudyInstanceUID. Its images may lie in one folder or be spread over
several (one folder per series is common); all series that share the UID form
one study. From its analysable CT series the batch analyses the one
``ctscreen analyze`` would pick (:func:`ctscreen.io.study.choose_series`:
most slices, then thinnest slices, then UID); the others are named in the
study's notes.

Folders are scanned one top-level subfolder of ROOT at a time with
:func:`ctscreen.io.dicom.scan_folder`, and each scan is reduced at once to a
light :class:`Study` record (paths, SOP UIDs, sizes, modification times), so
discovering an archive of thousands of studies does not hold thousands of
DICOM headers in memory. When ROOT holds files and no subfolders, ROOT itself
is the one folder scanned; loose files beside subfolders are ignored with a
note (give each study its own folder).

Problems are studies too: a subfolder whose DICOM files cannot be read, or a
study without an analysable CT series, becomes a :class:`Study` with
``problem`` set, and the batch records it as failed with that reason.
A subfolder without any DICOM file (notes, a README) is not a study; it is
counted in :attr:`Discovery.ignored_folders`.

Identity and patient data
-------------------------
``study_id`` (the result folder's name) is ``study-`` and 12 hex digits of the
SHA-256 of the StudyInstanceUID: stable across runs and machines, and free of
patient data. With ``include_patient`` it is prefixed by the PatientID and
StudyDate. Patient name, ID, date and accession number are kept in
``Study.patient`` and reach the summary only with ``--include-patient``.

Input fingerprint
-----------------
:attr:`Study.input_key` is the SHA-256 of the analysed series' UID and, per
image, its SOPInstanceUID, file size and modification time (nanoseconds),
sorted by SOP UID. It is cheap (one ``stat`` per file, no pixel read), changes
when an image is added, removed, replaced or rewritten, and does not change
when the archive is moved with its timestamps kept (``cp -p``, ``rsync -a``).
A copy that resets the times makes the batch re-analyse, never skip wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Prefix of the folders the batch stages results in (skipped by discovery when ROOT = OUT's parent).
STAGING_PREFIX = ".ctscreen-"


@dataclass(frozen=True)
class Study:
    """One study to analyse (or a problem to record), light enough to send to a worker.

    Attributes
    ----------
    study_id : str
        Name of the result folder: patient-free unless discovery ran with ``include_patient``.
    study_uid : str
        StudyInstanceUID ("" for a problem folder without readable headers).
    folder : str
        Folder the job scans: the common folder of the study's files.
    exclusive : bool
        True when ``folder`` holds no other study's images (the job scans it as
        ``ctscreen analyze FOLDER`` would); else the job scans only ``files``.
    series_uid : str
        ``key`` of the chosen CT series ("" for a problem).
    files : tuple of str
        Files of the chosen series.
    input_key : str
        Fingerprint of the chosen series' files (see the module notes).
    series : dict
        Patient-free description: modality, series_description, slice_count, z_spacing_mm,
        rows, columns, series_count (series in the study), ct_series_count.
    patient : dict
        patient_id, patient_name, study_date, accession_number (used only when asked).
    problem : str
        Why the study cannot be analysed ("" when it can).
    notes : tuple of str
        Things the summary should say (other CT series not analysed, skipped files).
    """

    study_id: str
    study_uid: str
    folder: str
    exclusive: bool
    series_uid: str
    files: tuple[str, ...]
    input_key: str
    series: dict[str, Any] = field(default_factory=dict)
    patient: dict[str, str] = field(default_factory=dict)
    problem: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover_studies` found under ROOT."""

    root: str
    studies: list[Study]
    ignored_folders: int = 0
    notes: tuple[str, ...] = ()

    @property
    def analysable(self) -> list[Study]:
        return [s for s in self.studies if not s.problem]


def short_hash(text: str, n: int = 12) -> str:
    """First ``n`` hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _safe(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text).strip())
    return keep.strip("._")[:40]


def study_id_for(study_uid: str, patient: dict[str, str] | None = None, include_patient: bool = False) -> str:
    """The result folder name of a study (patient-free unless ``include_patient``)."""
    sid = f"study-{short_hash(study_uid)}"
    if include_patient and patient:
        prefix = "_".join(p for p in (_safe(patient.get("patient_id", "")), _safe(patient.get("study_date", ""))) if p)
        if prefix:
            sid = f"{prefix}_{sid}"
    return sid


def input_key(series_uid: str, images: list[tuple[str, int, int]]) -> str:
    """Fingerprint of a series: ``images`` are ``(sop_instance_uid, size_bytes, mtime_ns)``."""
    blob = json.dumps({"series": series_uid, "images": sorted(images)}, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _header_text(header: Any, keyword: str) -> str:
    try:
        value = getattr(header, keyword, "")
    except Exception:  # noqa: BLE001 - an odd value is just left out
        return ""
    return str(value or "").strip()


@dataclass
class _SeriesRecord:
    key: str
    uid: str
    study_uid: str
    modality: str
    description: str
    slice_count: int
    z_spacing_mm: float | None
    rows: int
    columns: int
    analysable_reason: str
    files: list[str]
    images: list[tuple[str, int, int]]
    patient: dict[str, str]


def _record(info: Any) -> _SeriesRecord:
    """Reduce a :class:`SeriesInfo` to what the batch needs (drops the headers)."""
    sops: dict[str, str] = {}
    for fr in info.frames:  # one SOP UID per file (every frame of a multi-frame file shares it)
        sops.setdefault(fr.path, fr.sop_instance_uid)
    images = []
    for path in info.files:
        try:
            st = os.stat(path)
            size, mtime = int(st.st_size), int(st.st_mtime_ns)
        except OSError:
            size, mtime = -1, -1
        images.append((sops.get(path, os.path.basename(path)), size, mtime))
    header = info.frames[0].header if info.frames else None
    patient = {k: _header_text(header, kw) for k, kw in (("patient_id", "PatientID"), ("patient_name", "PatientName"),
                                                          ("study_date", "StudyDate"),
                                                          ("accession_number", "AccessionNumber"))}
    return _SeriesRecord(key=info.key, uid=info.series_instance_uid, study_uid=info.study_instance_uid,
                         modality=info.modality, description=info.series_description,
                         slice_count=int(info.slice_count), z_spacing_mm=info.z_spacing_mm,
                         rows=int(info.rows), columns=int(info.columns),
                         analysable_reason=info.analysable_reason, files=list(info.files), images=images,
                         patient=patient)


def _units(root: Path, notes: list[str]) -> Iterator[Path]:
    """The folders to scan one at a time: ROOT's subfolders, or ROOT when it holds only files."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise NotADirectoryError(f"{root} cannot be listed ({exc.strerror or exc})") from exc
    dirs = [Path(e.path) for e in entries if e.is_dir(follow_symlinks=True) and not e.name.startswith(STAGING_PREFIX)]
    files = [e for e in entries if e.is_file(follow_symlinks=True)]
    if not dirs:
        if files:
            yield root
        return
    if files:
        notes.append(f"{len(files)} file(s) directly in {root} were not scanned: give each study its own folder")
    yield from dirs


def _describe(s: _SeriesRecord) -> str:
    z = f", {s.z_spacing_mm:g} mm" if s.z_spacing_mm else ""
    return f"{s.description or 'no description'} ({s.slice_count} slices{z})"


def discover_studies(root: str | os.PathLike[str], include_patient: bool = False,
                     exclude: str | os.PathLike[str] | None = None) -> Discovery:
    """Find every study under ``root`` (see the module notes for what a study is).

    Parameters
    ----------
    root : path-like
        The archive folder.
    include_patient : bool
        Name result folders with PatientID and StudyDate as well (off by default).
    exclude : path-like, optional
        A folder not to scan (the batch's output folder when it lies inside ``root``).

    Returns
    -------
    Discovery
        Studies sorted by ``study_id`` (problems included, with ``problem`` set).

    Raises
    ------
    NotADicomSeries
        ``root`` does not exist or is not a folder.
    """
    from ctscreen.io.study import choose_series
    from ctscreen.errors import NotADicomSeries
    from ctscreen.io import dicom

    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        what = "does not exist" if not root_p.exists() else "is not a folder"
        raise NotADicomSeries(f"{root_p} {what} \u2014 give the folder that holds the studies")
    skip = Path(exclude).expanduser().resolve() if exclude else None
    notes: list[str] = []
    by_study: dict[str, list[_SeriesRecord]] = {}
    problems: list[Study] = []
    ignored = 0
    try:
        units = list(_units(root_p, notes))
    except NotADirectoryError as exc:
        raise NotADicomSeries(f"{exc} \u2014 check the permissions") from None
    for unit in units:
        if skip is not None and unit.resolve() == skip:
            continue
        try:
            scan = dicom.scan_folder(unit)
        except Exception as exc:  # noqa: BLE001 - one bad folder must not stop discovery
            rel = os.path.relpath(unit, root_p)
            problems.append(_problem(rel, unit, f"cannot be scanned ({type(exc).__name__}: {exc})"))
            continue
        if not scan.series:
            unreadable = [w for w in scan.warnings if "unreadable" in w or "cannot be read" in w
                          or "without a readable dataset" in w or "unusable" in w]
            if unreadable:
                rel = os.path.relpath(unit, root_p)
                problems.append(_problem(rel, unit, f"no readable DICOM image ({len(unreadable)} unreadable "
                                                    "file(s); `ctscreen info FOLDER` names them)"))
            else:
                ignored += 1
            continue
        for info in scan.series:
            rec = _record(info)
            by_study.setdefault(rec.study_uid or f"(no StudyInstanceUID) {unit}", []).append(rec)
        skipped_files = [w for w in scan.warnings if "skipped" in w]
        if skipped_files:
            notes.append(f"{unit}: {len(skipped_files)} file(s) or object(s) skipped while scanning "
                         "(`ctscreen info FOLDER` lists them)")

    # Which folders hold images of more than one study (a flat dump): their studies are scanned by file list.
    studies_under: dict[str, set[str]] = {}
    for suid, recs in by_study.items():
        for rec in recs:
            for d in {os.path.dirname(f) for f in rec.files}:
                p = Path(d)
                for anc in (p, *p.parents):
                    studies_under.setdefault(str(anc), set()).add(suid)
                    if anc == root_p:
                        break

    studies: list[Study] = list(problems)
    for suid, recs in by_study.items():
        patient = next((r.patient for r in recs if r.patient.get("patient_id")), recs[0].patient)
        sid = study_id_for(suid, patient, include_patient)
        all_files = [f for r in recs for f in r.files]
        folder = os.path.commonpath([os.path.dirname(f) for f in all_files])
        exclusive = studies_under.get(folder, {suid}) == {suid}
        ct = [r for r in recs if r.modality == "CT"]
        ok = [r for r in ct if not r.analysable_reason]
        base = {"series_count": len(recs), "ct_series_count": len(ct)}
        if not ok:
            if not ct:
                found = ", ".join(f"{r.modality or 'unknown'} ({r.slice_count} slices)" for r in recs[:4])
                problem = f"no CT series (found {found}) \u2014 ctscreen analyses chest CT only"
            else:
                big = max(ct, key=lambda r: r.slice_count)
                problem = (f"no CT series can be analysed; the largest, {_describe(big)}: {big.analysable_reason}")
            big = max(recs, key=lambda r: r.slice_count)
            studies.append(Study(study_id=sid, study_uid=suid, folder=folder, exclusive=exclusive, series_uid="",
                                 files=tuple(big.files), input_key=input_key(big.key, big.images),
                                 series={**base, **_series_desc(big)}, patient=patient, problem=problem))
            continue
        chosen = choose_series(_as_choice(ok))
        rec = next(r for r in ok if r.key == chosen.key)
        study_notes = []
        if len(ok) > 1:
            others = "; ".join(_describe(r) for r in ok if r is not rec)
            study_notes.append(f"{len(ok)} CT series can be analysed; analysed {_describe(rec)}, the one with the "
                               f"most slices (not analysed: {others})")
        studies.append(Study(study_id=sid, study_uid=suid, folder=folder, exclusive=exclusive, series_uid=rec.key,
                             files=tuple(rec.files), input_key=input_key(rec.key, rec.images),
                             series={**base, **_series_desc(rec)}, patient=patient, notes=tuple(study_notes)))
    # Two studies can only share an id when their UIDs collide in 48 bits, or a problem folder repeats: keep ids unique.
    seen: dict[str, int] = {}
    unique = []
    for s in sorted(studies, key=lambda s: (s.study_id, s.study_uid, s.folder)):
        n = seen.get(s.study_id, 0)
        seen[s.study_id] = n + 1
        unique.append(s if n == 0 else _renamed(s, f"{s.study_id}-{n + 1}"))
    return Discovery(root=str(root_p), studies=unique, ignored_folders=ignored, notes=tuple(notes))


@dataclass(frozen=True)
class _Choice:
    key: str
    slice_count: int
    z_spacing_mm: float | None


def _as_choice(recs: list[_SeriesRecord]) -> list[_Choice]:
    return [_Choice(r.key, r.slice_count, r.z_spacing_mm) for r in recs]


def _series_desc(r: _SeriesRecord) -> dict[str, Any]:
    return {"modality": r.modality, "series_description": r.description, "slice_count": r.slice_count,
            "z_spacing_mm": r.z_spacing_mm, "rows": r.rows, "columns": r.columns}


def _problem(rel: str, unit: Path, reason: str) -> Study:
    """A folder that cannot be read as a study: identified by a hash of its path below ROOT."""
    return Study(study_id=f"folder-{short_hash(rel)}", study_uid="", folder=str(unit), exclusive=True,
                 series_uid="", files=(), input_key=short_hash(f"{rel}\n{reason}", 64),
                 problem=reason)


def _renamed(s: Study, study_id: str) -> Study:
    from dataclasses import replace

    return replace(s, study_id=study_id)
