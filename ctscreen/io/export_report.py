"""``report.json`` and ``report.csv`` of an analysis (schema: ``docs/report-schema.md``).

Research use, not for diagnosis. Patient name and ID are left out unless asked for.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.io.files import atomic_write

#: Bump the major part on incompatible changes, the minor part on additions.
REPORT_SCHEMA_VERSION = "1.3"

#: Per-slice fields, in this order, in ``report.json`` ``slices[]`` and ``report.csv``.
SLICE_FIELDS = (
    "index", "slice_number", "sop_instance_uid", "instance_number", "z_mm",
    "ggo_area_mm2", "consolidation_area_mm2", "lesion_area_mm2",
    "lungs", "zone", "percent_of_slice_lung", "cam_flagged",
)

#: Study-level columns at the end of every ``report.csv`` row: the screening verdict and the notice.
STUDY_CSV_COLUMNS = ("rsna_category", "classifier_verdict", "research_notice")

#: ``report.csv`` header: field name with its unit in brackets where it has one.
CSV_COLUMNS = (
    "index", "slice_number", "sop_instance_uid", "instance_number", "z [mm]",
    "ggo_area [mm2]", "consolidation_area [mm2]", "lesion_area [mm2]",
    "lungs", "zone", "percent_of_slice_lung [%]", "cam_flagged",
) + STUDY_CSV_COLUMNS

_ROW_SOURCE_FIELDS = ("index", "z_mm", "sop_instance_uid", "instance_number", "ggo_area_mm2",
                      "consolidation_area_mm2", "lesion_area_mm2", "lungs", "zone", "percent_of_slice_lung")


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays to Python, NaN/inf to ``None``, tuples to lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (Path, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    return str(value)


def _row_value(row: Any, name: str) -> Any:
    if isinstance(row, dict):
        return row.get(name)
    return getattr(row, name, None)


def report_rows(result: Any) -> list[dict[str, Any]]:
    """The per-slice rows of ``result.measurements`` as plain dicts (fields: :data:`SLICE_FIELDS`).

    Identifiers (``sop_instance_uid``, ``instance_number``, ``z_mm``) come from
    the measurement row, falling back to the volume's per-slice tuples. A
    SOPInstanceUID the source left empty stays ``""`` (the loader never puts a
    file path there): such rows are identified by ``instance_number`` and ``z_mm``.
    """
    m = result.measurements
    vol = result.volume
    flagged = set(result.cam_flagged_slices()) if hasattr(result, "cam_flagged_slices") else set()
    rows = []
    for r in (getattr(m, "rows", None) or ()):
        d = {name: _row_value(r, name) for name in _ROW_SOURCE_FIELDS}
        k = int(d["index"])
        if d["sop_instance_uid"] is None and k < len(vol.sop_instance_uids):
            d["sop_instance_uid"] = vol.sop_instance_uids[k]
        if d["instance_number"] is None and k < len(vol.instance_numbers):
            d["instance_number"] = vol.instance_numbers[k]
        if d["z_mm"] is None and k < len(vol.z_mm):
            d["z_mm"] = vol.z_mm[k]
        d["slice_number"] = k + 1
        d["cam_flagged"] = k in flagged
        rows.append({name: _jsonable(d[name]) for name in SLICE_FIELDS})
    return rows


def _totals(measurements: Any) -> dict[str, Any]:
    to_dict = getattr(measurements, "to_dict", None)
    if callable(to_dict):
        d = dict(to_dict())
    elif dataclasses.is_dataclass(measurements):
        d = dataclasses.asdict(measurements)
    else:
        d = {}
    d.pop("rows", None)  # the rows go to ``slices`` with identifiers attached
    return _jsonable(d)


def build_report(result: Any, include_patient: bool = False,
                 created: _dt.datetime | None = None,
                 reader_measurements: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The ``report.json`` content (see ``docs/report-schema.md``).

    Parameters
    ----------
    result : AnalysisResult
    include_patient : bool
        Add ``series.patient_name`` and ``series.patient_id``. Off by default.
    created : datetime, optional
        Creation time (default: now, UTC).
    reader_measurements : list of dict, optional
        The reader's own rulers, ROIs and probes made in the viewer
        (:meth:`ctscreen.imaging.annotations.Annotations.to_dicts`); written as
        ``reader_measurements`` when given.
    """
    vol = result.volume
    created = created or _dt.datetime.now(_dt.timezone.utc)
    volume_warnings, warnings = list(vol.warnings), list(result.warnings)
    if not include_patient:  # a folder or file name can carry the patient's name: names stay on this machine
        from ctscreen.io.privacy import scrub_all

        scrubbed = scrub_all(volume_warnings + warnings, getattr(vol, "source_files", ()) or ())
        volume_warnings, warnings = scrubbed[:len(volume_warnings)], scrubbed[len(volume_warnings):]
    series: dict[str, Any] = {
        "study_instance_uid": vol.study_instance_uid,
        "series_instance_uid": vol.series_instance_uid,
        "series_description": vol.series_description,
        "modality": vol.modality,
        "frame_of_reference_uid": vol.frame_of_reference_uid,
        "slice_count": int(vol.shape[0]),
        "rows": int(vol.shape[1]),
        "columns": int(vol.shape[2]),
        "spacing_mm": [float(s) for s in vol.spacing_mm],
        "z_first_mm": float(vol.z_mm[0]) if len(vol.z_mm) else None,
        "z_last_mm": float(vol.z_mm[-1]) if len(vol.z_mm) else None,
        "volume_warnings": volume_warnings,
    }
    if include_patient:
        series["patient_name"] = str(vol.patient_name)
        series["patient_id"] = str(vol.patient_id)
    flagged = result.cam_flagged_slices() if hasattr(result, "cam_flagged_slices") else []
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "ctscreen_version": __version__,
        "research_notice": RESEARCH_NOTICE,
        "created": created.isoformat(timespec="seconds"),
        "series": series,
        "model": {
            "name": result.model_name,
            "version": result.model_version,
            "device": result.device,
        },
        "timings_s": {str(k): float(v) for k, v in dict(result.timings_s).items()},
        "warnings": warnings,
        "totals": _totals(result.measurements),
        "slices": report_rows(result),
        "gradcam": {
            "layer": getattr(result, "cam_layer", ""),
            "method": getattr(result, "cam_method", ""),
            "computed_slices": sorted(int(k) for k in getattr(result, "cam", {}) or {}),
            "outside_lung_threshold": float(getattr(result, "CAM_OUTSIDE_FLAG", 0.5)),
            "flagged_slices": [
                {
                    "index": int(k),
                    "slice_number": int(k) + 1,
                    "sop_instance_uid": vol.sop_instance_uids[k] if k < len(vol.sop_instance_uids) else None,
                    "instance_number": vol.instance_numbers[k] if k < len(vol.instance_numbers) else None,
                    "z_mm": float(vol.z_mm[k]) if k < len(vol.z_mm) else None,
                    "outside_lung_fraction": _jsonable(float(result.cam_outside_fraction[k])),
                }
                for k in flagged
            ],
        },
        "screening": screening_dict(result),
    }
    if reader_measurements is not None:  # the viewer's measuring tools (issue 10)
        report["reader_measurements"] = list(reader_measurements)
    return _jsonable(report)


def screening_dict(result: Any) -> dict[str, Any] | None:
    """The ``screening`` object of ``report.json`` (``Screening.to_dict()``), None when not computed."""
    screening = getattr(result, "screening", None)
    if screening is None:
        return None
    to_dict = getattr(screening, "to_dict", None)
    return _jsonable(to_dict() if callable(to_dict) else screening)


def study_csv_cells(result: Any) -> list[str]:
    """The :data:`STUDY_CSV_COLUMNS` cells: RSNA category, the classifier's verdict with its probability, notice."""
    s = getattr(result, "screening", None)
    if s is None:
        return ["", "", RESEARCH_NOTICE]
    verdict = ""
    probs = dict(getattr(s, "probabilities", {}) or {})
    if getattr(s, "verdict", "") and s.verdict in probs:
        verdict = f"{s.verdict} {float(probs[s.verdict]):.2f}"
    return [str(getattr(s, "category", "")), verdict, str(getattr(s, "notice", "") or RESEARCH_NOTICE)]


def write_report_json(result: Any, path: str | os.PathLike, force: bool = False,
                      include_patient: bool = False,
                      reader_measurements: list[dict[str, Any]] | None = None) -> Path:
    """Write ``report.json`` (UTF-8, indented) atomically; returns the path."""
    text = json.dumps(build_report(result, include_patient=include_patient,
                                   reader_measurements=reader_measurements),
                      indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write(path, text + "\n", force=force)


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    return value


def write_report_csv(result: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``report.csv``: one header row (:data:`CSV_COLUMNS`, units in brackets), one row per slice.

    Every row ends with the study's screening verdict and the research notice
    (:data:`STUDY_CSV_COLUMNS`); with no lesion slice, one row with empty slice fields carries them.
    """
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    study = study_csv_cells(result)
    rows = report_rows(result)
    for row in rows:
        w.writerow([_csv_cell(row[f]) for f in SLICE_FIELDS] + study)
    if not rows:
        w.writerow([""] * len(SLICE_FIELDS) + study)
    return atomic_write(path, buf.getvalue(), force=force)
