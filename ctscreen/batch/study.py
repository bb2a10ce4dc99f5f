"""The batch job: analyse one study and move its complete result folder into place.

:func:`run_study` is the one function every engine runs (in the calling
process, in a local worker process, or on a Dask worker). It drives the same
pieces as ``ctscreen analyze``: :func:`ctscreen.io.study.pick_series` picks
the series, :func:`ctscreen.inference.pipeline.analyze` analyses it, and
:func:`ctscreen.io.results_folder.export_staged` writes the report, PNGs and SEG.

Safety
------
Everything is written into a staging folder ``OUT/.ctscreen-staging-<id>-*``
beside the final one, together with ``batch.json`` (the study's summary row and
its key), and the staging folder is renamed to ``OUT/<study_id>`` only when
complete. A result folder therefore either holds a finished, self-describing
result or does not exist; staging folders of a killed run are removed by the
next run. A failed study gets a folder with ``batch.json`` alone (status
``failed`` and the reason), so a rerun with the same key does not retry it
unless asked.

The model is loaded once per process and kept (:func:`loaded_model`), so a
worker that analyses many studies pays for it once. Torch is imported only
when a study is analysed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.batch.discover import STAGING_PREFIX, Study

#: The file in every result folder that says what produced it (``key``) and holds the summary row.
BATCH_JSON = "batch.json"
BATCH_JSON_FORMAT = "ctscreen-batch-study/1"
STAGING = STAGING_PREFIX + "staging-"
OLD = STAGING_PREFIX + "old-"

#: Summary columns in order (``summary.csv``); patient columns are added only with ``--include-patient``.
SUMMARY_COLUMNS = (
    "study_id", "status", "reason", "reused",
    "modality", "series_description", "slice_count", "z_spacing_mm", "series_count", "ct_series_count",
    "model", "model_version", "device",
    "lung_volume_ml", "ggo_volume_ml", "consolidation_volume_ml", "lesion_volume_ml", "percent_involved",
    "severity_total",
    "screening_category", "screening_category_label", "screening_verdict",
    "p_covid19", "p_other_pneumonia", "p_no_pneumonia",
    "warnings_count", "warnings", "notes",
    "analysis_s", "export_s", "total_s", "worker",
    "notice",
)
PATIENT_COLUMNS = ("patient_id", "patient_name", "study_date", "accession_number", "study_instance_uid",
                   "source_folder")


@dataclass(frozen=True)
class BatchOptions:
    """Options that shape every study's result (all but ``device``/``batch_size`` are part of the key).

    Attributes
    ----------
    model : str or None
        ``unet``, ``deeplab``, a weights file, or None for the shipped default.
    model_id : str
        Identity of the model's weights (see :func:`model_identity`); filled by the engine.
    device : str
        ``auto|cpu|cuda|cuda:N|mps``; a worker may be given its own GPU.
    png, cam, cam_layer, seg, include_patient, tta
        As for ``ctscreen analyze``.
    batch_size : int
        Slices per forward pass (speed only, not in the key).
    """

    model: str | None = None
    model_id: str = ""
    device: str = "auto"
    png: str = "none"
    cam: str = "none"
    cam_layer: str | None = None
    seg: bool = True
    include_patient: bool = False
    tta: bool | int = True
    batch_size: int = 8

    def key_fields(self) -> dict[str, Any]:
        """What makes two results different (the model, the options, ctscreen's version)."""
        return {"model": self.model_id or str(self.model), "png": self.png, "cam": self.cam,
                "cam_layer": self.cam_layer or "", "seg": bool(self.seg), "include_patient": bool(self.include_patient),
                "tta": self.tta, "ctscreen": __version__}


def result_key(study: Study, options: BatchOptions) -> str:
    """The key that says whether a finished result folder is still valid: inputs + model + options."""
    import hashlib

    blob = json.dumps({"input": study.input_key, "study_id": study.study_id, "options": options.key_fields()},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _file_sha(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_identity(model: str | None) -> str:
    """``name:sha256[:16]`` of the segmentation weights, ``+classifier:sha256[:16]`` of the shipped screening
    classifier when there is one (the pipeline uses it for the verdict), so new weights of either re-run a study."""
    from ctscreen.inference.models import MODELS_DIR, model_path

    path = model_path(model)
    ident = f"{path.stem}:{_file_sha(path)}"
    clf = MODELS_DIR / "classifier.pt"
    if clf.is_file():
        ident += f"+classifier:{_file_sha(clf)}"
    return ident


# --------------------------------------------------------------------------- per-process model cache

_MODELS: dict[tuple[str, str], Any] = {}
#: Set by a worker's initializer: the device this process uses instead of ``BatchOptions.device``.
WORKER_DEVICE: str | None = None


def configure_worker(torch_threads: int | None = None, device: str | None = None) -> None:
    """Set this process's torch threads and device before the first study (engines call it once per worker)."""
    global WORKER_DEVICE
    if device:
        WORKER_DEVICE = device
    if torch_threads:
        os.environ["OMP_NUM_THREADS"] = str(int(torch_threads))
        import torch

        torch.set_num_threads(int(torch_threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started: keep what is there
            pass


def loaded_model(options: BatchOptions) -> Any:
    """The model for ``options``, loaded once per process and reused for every study."""
    from ctscreen.inference.models import load_model

    device = WORKER_DEVICE or options.device or "auto"
    key = (str(options.model), device)
    if key not in _MODELS:
        _MODELS[key] = load_model(options.model, device=device)
    return _MODELS[key]


# --------------------------------------------------------------------------- summary row

def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def scrub_paths(text: str, prefixes: list[str]) -> str:
    """Replace file paths under any of ``prefixes`` by ``<study folder>`` (paths stay on this machine)."""
    out = str(text)
    for p in sorted({str(x) for x in prefixes if x}, key=len, reverse=True):
        out = re.sub(re.escape(p.rstrip(os.sep)) + r"(?:[/\\][^\s,;:()'\"]*)?", "<study folder>", out)
    return out


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def screening_columns(result: Any = None, report: dict | None = None) -> dict[str, Any]:
    """The verdict columns from ``result.screening`` (or report.json's ``screening``); empty when absent."""
    scr: Any = None
    if result is not None and getattr(result, "screening", None) is not None:
        s = result.screening
        scr = s.to_dict() if hasattr(s, "to_dict") else dataclasses.asdict(s)
    elif report and isinstance(report.get("screening"), dict):
        scr = report["screening"]
    if not scr:
        return {}
    probs = scr.get("probabilities") or {}
    return {"screening_category": scr.get("category", ""), "screening_category_label": scr.get("category_label", ""),
            "screening_verdict": scr.get("verdict", ""),
            "p_covid19": _num(probs.get("covid19")), "p_other_pneumonia": _num(probs.get("other_pneumonia")),
            "p_no_pneumonia": _num(probs.get("no_pneumonia"))}


def base_row(study: Study, options: BatchOptions) -> dict[str, Any]:
    """The columns known before the analysis (description of the series, patient data when asked)."""
    s = study.series
    row: dict[str, Any] = {"study_id": study.study_id, "status": "", "reason": "", "reused": False,
                           "modality": s.get("modality", ""), "series_description": s.get("series_description", ""),
                           "slice_count": s.get("slice_count"), "z_spacing_mm": s.get("z_spacing_mm"),
                           "series_count": s.get("series_count"), "ct_series_count": s.get("ct_series_count"),
                           "notes": " | ".join(study.notes), "notice": RESEARCH_NOTICE}
    if options.include_patient:
        row.update({k: study.patient.get(k, "") for k in PATIENT_COLUMNS[:4]})
        row["study_instance_uid"] = study.study_uid
        row["source_folder"] = study.folder
    return row


def _result_row(result: Any, report: dict, notes: list[str]) -> dict[str, Any]:
    totals = report.get("totals") or {}
    warnings = [*(report.get("warnings") or []), *((report.get("series") or {}).get("volume_warnings") or [])]
    warnings += [n for n in notes if n.startswith("no DICOM SEG")]
    row = {"model": result.model_name, "model_version": result.model_version, "device": result.device,
           "lung_volume_ml": _num(totals.get("lung_volume_ml")), "ggo_volume_ml": _num(totals.get("ggo_volume_ml")),
           "consolidation_volume_ml": _num(totals.get("consolidation_volume_ml")),
           "lesion_volume_ml": _num(totals.get("lesion_volume_ml")),
           "percent_involved": _num(totals.get("percent_involved")),
           "severity_total": totals.get("severity_total"),
           "warnings_count": len(warnings), "warnings": " | ".join(one_line(w) for w in warnings)}
    row.update(screening_columns(result, report))
    return row


# --------------------------------------------------------------------------- folders

def read_batch_json(folder: Path) -> dict[str, Any] | None:
    """The ``batch.json`` of a result folder, or None when missing or unreadable."""
    try:
        data = json.loads((folder / BATCH_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == BATCH_JSON_FORMAT else None


def _write_batch_json(folder: Path, key: str, row: dict[str, Any]) -> None:
    from ctscreen.io.files import atomic_write

    blob = {"format": BATCH_JSON_FORMAT, "key": key, "research_notice": RESEARCH_NOTICE, "row": row}
    atomic_write(folder / BATCH_JSON, json.dumps(blob, indent=2, default=str) + "\n", force=True)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the complete ``staging`` folder to ``target``; an older ``target`` (stale key) goes."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{OLD}{target.name}-", dir=target.parent))
        os.rename(target, old / "r")
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _scan_files(files: tuple[str, ...], series_uid: str, notes: list[str]) -> tuple[Any, Path]:
    """Scan just these files (a folder shared with other studies): a temporary folder of links to them."""
    from ctscreen.io.study import pick_series

    links = Path(tempfile.mkdtemp(prefix="ctscreen-batch-links-"))
    try:
        for i, f in enumerate(files):
            link = links / f"{i:06d}_{os.path.basename(f)}"
            try:
                os.symlink(os.path.abspath(f), link)
            except OSError:  # no symlinks here (some Windows setups): copy the file instead
                shutil.copy2(f, link)
        return pick_series(links, series_uid, notes), links
    except BaseException:
        shutil.rmtree(links, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- the job

@dataclass(frozen=True)
class StudyTask:
    """One unit of work: a study, where its result goes, and how to analyse it."""

    study: Study
    out: str
    options: BatchOptions
    key: str
    root: str = ""
    #: Extra seconds waited before the analysis (tests simulate a slow study with it).
    delay_s: float = 0.0
    worker: str = field(default="", compare=False)


def run_study(task: StudyTask, cancel: Any = None) -> dict[str, Any]:
    """Analyse one study and move its result folder into place; never raises for a bad study.

    Parameters
    ----------
    task : StudyTask
    cancel : threading.Event, optional
        Stops the analysis at the next batch boundary (the study is then not recorded).

    Returns
    -------
    dict
        The study's summary row (``status`` ``done`` or ``failed`` with ``reason``).
        ``full_reason`` (not part of the summary) keeps the reason with file paths for the log.

    Raises
    ------
    KeyboardInterrupt, ctscreen.errors.Cancelled
        The run is being stopped; nothing of this study is left in ``task.out``.
    """
    from ctscreen.errors import Cancelled

    t0 = time.perf_counter()
    study, options = task.study, task.options
    out = Path(task.out)
    row = base_row(study, options)
    row["worker"] = task.worker or f"pid {os.getpid()}"
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{study.study_id}-", dir=out))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes it private; the result folder is a normal one
    try:
        try:
            if study.problem:
                raise _StudyProblem(study.problem)
            if task.delay_s:
                time.sleep(task.delay_s)
            row.update(_analyse_into(task, staging, cancel, row))
            row["status"] = "done"
        except (KeyboardInterrupt, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the batch
            for p in staging.iterdir():  # a failed study keeps no partial export
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            full = one_line(exc if isinstance(exc, _StudyProblem) else
                            (str(exc) if _is_ctscreen_error(exc) else f"{type(exc).__name__}: {exc}"))
            row["status"] = "failed"
            row["full_reason"] = full
            row["reason"] = full
        if not options.include_patient:  # file paths (which may name the patient) stay on this machine
            prefixes = [study.folder, task.root, *{os.path.dirname(f) for f in study.files[:1]}]
            for col in ("reason", "notes", "warnings"):
                if row.get(col):
                    row[col] = scrub_paths(row[col], prefixes)
        row["total_s"] = round(time.perf_counter() - t0, 3)
        _write_batch_json(staging, task.key, {k: v for k, v in row.items() if k != "full_reason"})
        _move_into_place(staging, out / study.study_id)
        return row
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _StudyProblem(Exception):
    """A study that discovery already found unanalysable."""


def _is_ctscreen_error(exc: BaseException) -> bool:
    from ctscreen.errors import CtscreenError

    return isinstance(exc, CtscreenError)


def _analyse_into(task: StudyTask, staging: Path, cancel: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Pick the series, run the pipeline, write the exports into ``staging``; returns the result columns."""
    from ctscreen.inference.camlayers import check_loaded_cam_layer
    from ctscreen.io.results_folder import export_staged
    from ctscreen.io.study import pick_series
    from ctscreen.inference.pipeline import AnalyzeOptions, analyze

    study, options = task.study, task.options
    t = time.perf_counter()
    model = loaded_model(options)
    model_s = time.perf_counter() - t
    check_loaded_cam_layer(model, options.cam_layer)
    notes: list[str] = []
    links = None
    try:
        if study.exclusive:
            info = pick_series(Path(study.folder), study.series_uid or None, notes)
        else:
            info, links = _scan_files(study.files, study.series_uid, notes)
        gen = analyze(info, AnalyzeOptions(model=model, cam=options.cam, cam_layer=options.cam_layer,
                                           batch_size=int(options.batch_size or 8), tta=options.tta, cancel=cancel))
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            result = stop.value
        finally:
            gen.close()
        analysis_s = time.perf_counter() - t
        result = dataclasses.replace(result, timings_s={**result.timings_s,
                                                         "model": result.timings_s.get("model", 0.0) + model_s})
        t = time.perf_counter()
        export_staged(result, staging, options.png, options.seg, force=True,
                      include_patient=options.include_patient, notes=notes)
        export_s = time.perf_counter() - t
    finally:
        if links is not None:
            shutil.rmtree(links, ignore_errors=True)
    try:
        report = json.loads((staging / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report = {}
    cols = _result_row(result, report, notes)
    cols["analysis_s"] = round(analysis_s, 3)
    cols["export_s"] = round(export_s, 3)
    if notes:
        extra = [one_line(n) for n in notes if not n.startswith("no DICOM SEG")]
        if extra:
            cols["notes"] = " | ".join(x for x in (row.get("notes", ""), *extra) if x)
    return cols
