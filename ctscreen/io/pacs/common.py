"""What the PACS clients share: the error type, the search criteria, the study and series records.

Research use, not for diagnosis.

Both clients (:mod:`ctscreen.io.pacs.dicomweb`, :mod:`ctscreen.io.pacs.dimse`) take a
:class:`StudyQuery` and answer with :class:`StudyRecord` / :class:`SeriesRecord`, built
from the DICOM attributes the server returned (a QIDO-RS JSON object is turned into a
pydicom ``Dataset`` first, so both paths read the same keywords).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ctscreen.errors import CtscreenError

#: Calling AE title ctscreen uses when none is configured.
DEFAULT_CALLING_AE = "CTSCREEN"
#: Seconds a connection, a request or an association may take before the server is called down.
DEFAULT_TIMEOUT_S = 10.0

CancelCheck = Callable[[], bool]


class PacsError(CtscreenError):
    """A PACS could not be reached, refused the request or answered an error.

    The message is one line: which server, what happened, what to do.
    """


def normalise_date(text: str) -> str:
    """``2020-03-01`` or ``20200301`` -> ``20200301``; raises ValueError for anything else."""
    digits = text.replace("-", "").replace(".", "").replace("/", "").strip()
    if not re.fullmatch(r"\d{8}", digits):
        raise ValueError(f"not a date: {text!r} (use YYYYMMDD or YYYY-MM-DD)")
    return digits


def parse_date_range(text: str | None) -> tuple[str, str]:
    """Parse ``FROM-TO`` into two DICOM dates (``""`` for an open end).

    Accepts ``20200101-20201231``, ``2020-01-01-2020-12-31``, ``2020-01-01..2020-12-31``,
    ``20200101-`` (from), ``-20201231`` (until) and a single date (that day).

    Raises
    ------
    ValueError
        The text holds no date, more than two, or an impossible order.
    """
    if not text or not text.strip():
        return "", ""
    s = text.strip()
    tokens = list(re.finditer(r"\d{4}-\d{2}-\d{2}|\d{8}", s))
    if not tokens or len(tokens) > 2:
        raise ValueError(f"cannot read the date range {text!r} \u2014 use FROM-TO as YYYYMMDD-YYYYMMDD "
                         "(either end may be left out)")
    rest = s
    for t in tokens:
        rest = rest.replace(t.group(0), " ")
    if rest.strip(" -./") != "":
        raise ValueError(f"cannot read the date range {text!r} \u2014 use FROM-TO as YYYYMMDD-YYYYMMDD")
    dates = [normalise_date(t.group(0)) for t in tokens]
    if len(dates) == 2:
        if dates[0] > dates[1]:
            raise ValueError(f"the date range {text!r} ends before it starts")
        return dates[0], dates[1]
    before = s[:tokens[0].start()].strip()
    after = s[tokens[0].end():].strip()
    if before and not after:
        return "", dates[0]
    if after and not before:
        return dates[0], ""
    return dates[0], dates[0]


@dataclass(frozen=True)
class StudyQuery:
    """Search criteria; empty fields match anything.

    Attributes
    ----------
    patient_id, patient_name, accession_number : str
        DICOM matching; a name without ``*`` or ``?`` matches names that start with it.
    date_from, date_to : str
        ``YYYYMMDD``; either may be empty (open range).
    modality : str
        Matches ``ModalitiesInStudy`` (e.g. ``CT``).
    study_instance_uid : str
        One study.
    limit : int
        Most studies to return (0: the server's own limit).
    """

    patient_id: str = ""
    patient_name: str = ""
    date_from: str = ""
    date_to: str = ""
    accession_number: str = ""
    modality: str = ""
    study_instance_uid: str = ""
    limit: int = 0

    @classmethod
    def from_text(cls, *, patient_id: str = "", patient_name: str = "", date_range: str = "",
                  accession_number: str = "", modality: str = "", study_instance_uid: str = "",
                  limit: int = 0) -> "StudyQuery":
        """Criteria from what a user typed (``date_range`` as in :func:`parse_date_range`)."""
        d0, d1 = parse_date_range(date_range)
        return cls(patient_id=patient_id.strip(), patient_name=patient_name.strip(), date_from=d0, date_to=d1,
                   accession_number=accession_number.strip(), modality=modality.strip().upper(),
                   study_instance_uid=study_instance_uid.strip(), limit=int(limit or 0))

    def date_matcher(self) -> str:
        """The DICOM range matcher of StudyDate: ``A-B``, ``A-``, ``-B``, ``A`` or ``""``."""
        if not self.date_from and not self.date_to:
            return ""
        if self.date_from and self.date_from == self.date_to:
            return self.date_from
        return f"{self.date_from}-{self.date_to}"

    def name_matcher(self) -> str:
        name = self.patient_name
        if name and not any(ch in name for ch in "*?"):
            name += "*"
        return name

    def filters(self) -> dict[str, str]:
        """Non-empty matching keys, by DICOM keyword."""
        pairs = {
            "PatientID": self.patient_id,
            "PatientName": self.name_matcher(),
            "StudyDate": self.date_matcher(),
            "AccessionNumber": self.accession_number,
            "ModalitiesInStudy": self.modality,
            "StudyInstanceUID": self.study_instance_uid,
        }
        return {k: v for k, v in pairs.items() if v}


#: Study-level attributes asked for in every study search.
STUDY_FIELDS = ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "StudyDate", "StudyTime",
                "AccessionNumber", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                "NumberOfStudyRelatedInstances", "StudyID")
#: Series-level attributes asked for in every series search.
SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                 "NumberOfSeriesRelatedInstances", "BodyPartExamined")


def _s(ds: Any, keyword: str) -> str:
    value = getattr(ds, keyword, "")
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


def _i(ds: Any, keyword: str) -> int | None:
    try:
        value = getattr(ds, keyword, None)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StudyRecord:
    """One study a search found."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()
    series_count: int | None = None
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Any) -> "StudyRecord":
        mods = _s(ds, "ModalitiesInStudy")
        return cls(study_instance_uid=_s(ds, "StudyInstanceUID"), patient_id=_s(ds, "PatientID"),
                   patient_name=_s(ds, "PatientName"), study_date=_s(ds, "StudyDate"),
                   study_time=_s(ds, "StudyTime"), accession_number=_s(ds, "AccessionNumber"),
                   description=_s(ds, "StudyDescription"),
                   modalities=tuple(m for m in mods.split("\\") if m),
                   series_count=_i(ds, "NumberOfStudyRelatedSeries"),
                   instance_count=_i(ds, "NumberOfStudyRelatedInstances"))


@dataclass(frozen=True)
class SeriesRecord:
    """One series of a study."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    series_number: int | None = None
    description: str = ""
    instance_count: int | None = None

    @classmethod
    def from_dataset(cls, ds: Any, study_instance_uid: str) -> "SeriesRecord":
        return cls(study_instance_uid=_s(ds, "StudyInstanceUID") or study_instance_uid,
                   series_instance_uid=_s(ds, "SeriesInstanceUID"), modality=_s(ds, "Modality"),
                   series_number=_i(ds, "SeriesNumber"), description=_s(ds, "SeriesDescription"),
                   instance_count=_i(ds, "NumberOfSeriesRelatedInstances"))


@dataclass(frozen=True)
class RetrieveProgress:
    """One step of a series retrieval.

    Attributes
    ----------
    done, total : int
        Instances handled so far (written, skipped or kept beside a different file) and expected.
    written, skipped : int
        New files written; files already complete in the cache.
    message : str
        What just happened, for a status line.
    """

    done: int
    total: int
    written: int = 0
    skipped: int = 0
    message: str = ""

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


@dataclass
class RetrieveResult:
    """What a finished retrieval left in the cache."""

    folder: str
    files: list[str] = field(default_factory=list)
    written: int = 0
    skipped: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class StoreResult:
    """What a push sent: SOP Instance UIDs stored and the ones the server refused (with a reason)."""

    stored: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
