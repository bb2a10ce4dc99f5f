"""``ctscreen analyze FOLDER --out DIR``: the lesion analysis without a window.

Torch is imported only when the command runs (the model and the pipeline), so
building the command line stays cheap.

Research use, not for diagnosis.

Steps: refuse early (existing outputs without ``--force``, missing model,
unreadable folder, no CT series), load the model, pick the series, drive
:func:`ctscreen.inference.pipeline.analyze` with a progress bar on stderr,
then write the exports. Exports are written into a hidden staging folder
inside ``--out`` and moved into place only when all of them are complete, so
an interrupted run (Ctrl-C) leaves no partial set of files behind.

Errors are raised as :class:`ctscreen.errors.CtscreenError` with a one-line
message; :func:`ctscreen.cli.main` prints it and exits non-zero.
"""

from __future__ import annotations

import os

# Before torch loads its OpenMP runtime: idle worker threads sleep instead of spinning. On a
# shared or busy CPU, spinning threads burned about 45 % more CPU and took 30 % longer for the
# same segmentation (P001, 2 cores, load average ~4); a user's own setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from ctscreen import RESEARCH_NOTICE  # noqa: E402
from ctscreen.errors import CtscreenError  # noqa: E402
from ctscreen.imaging.result import CONSOLIDATION, GGO, AnalysisResult  # noqa: E402
from ctscreen.progress import ProgressBar  # noqa: E402
from ctscreen.inference.camlayers import (  # noqa: E402
    CAM_METHOD_NAMES, DEFAULT_CAM_METHOD, check_cam_layer, check_loaded_cam_layer)
# The steps ``ctscreen analyze`` shares with ``ctscreen batch``, ``compare`` and the viewer live in the
# core; they are re-exported here for the callers and tests that know them by this module.
from ctscreen.io.results_folder import (  # noqa: E402,F401
    STAGING_PREFIX, check_output, export_staged, one_line as _one_line, planned_names)
from ctscreen.io.study import choose_series, pick_series  # noqa: E402,F401

def _num(m: Any, name: str) -> float | None:
    try:
        v = float(getattr(m, name))
    except (AttributeError, TypeError, ValueError):
        return None
    return v if v == v else None  # NaN -> None


def summary(result: AnalysisResult, out: Path, written: list[Path], total_s: float) -> str:
    """One paragraph for stdout: what was found, where the files went, the research notice."""
    vol = result.volume
    m = result.measurements
    voxel_ml = vol.voxel_volume_ml
    ggo_ml = _num(m, "ggo_volume_ml")
    cons_ml = _num(m, "consolidation_volume_ml")
    if ggo_ml is None:
        ggo_ml = float(np.count_nonzero(result.lesion == GGO)) * voxel_ml
    if cons_ml is None:
        cons_ml = float(np.count_nonzero(result.lesion == CONSOLIDATION)) * voxel_ml
    lung_ml = _num(m, "lung_volume_ml")
    if lung_ml is None:
        lung_ml = float(np.count_nonzero(result.lung)) * voxel_ml
    pct = _num(m, "percent_involved")
    if pct is None and lung_ml > 0:
        pct = 100.0 * (ggo_ml + cons_ml) / lung_ml
    severity = getattr(m, "severity_total", None)
    slices = int(np.count_nonzero(result.lesion.reshape(result.lesion.shape[0], -1).any(axis=1)))
    parts = [
        f"Analysed series {vol.series_description or vol.series_instance_uid or '?'} "
        f"({vol.shape[0]} slices) with model {result.model_name} {result.model_version} on {result.device} "
        f"in {total_s:.1f} s:",
        f"ground-glass {ggo_ml:.1f} mL, consolidation {cons_ml:.1f} mL"
        + (f", {pct:.1f} % of {lung_ml:.0f} mL lung" if pct is not None else ", no lung found")
        + (f", severity score {severity}/30" if severity is not None else "")
        + f", lesions on {slices} slice(s).",
    ]
    if result.cam:
        flagged = result.cam_flagged_slices()
        method = getattr(result, "cam_method", "") or "Grad-CAM"
        parts.append(f"Activation maps ({method}) on {len(result.cam)} slice(s) at layer {result.cam_layer}"
                     + (f"; {len(flagged)} with most activation outside the lungs." if flagged else "."))
    screening = getattr(result, "screening", None)
    if screening is not None:
        decided = ", ".join(c.key.replace("_", " ") for c in screening.criteria if c.decisive)
        probs = screening.probabilities_text()
        parts.append(f"Screening verdict ({screening.notice.rstrip('.').lower()}): RSNA {screening.category}"
                     + (f" (decided by {decided})" if decided else "")
                     + (f"; classifier {probs}." if probs else "; no classifier probabilities."))
    names = sorted({"slice_*.png" if p.name.startswith("slice_") else p.name for p in written})
    parts.append(f"Wrote {len(written)} file(s) to {out} ({', '.join(names)})"
                 + ("; no DICOM SEG, as there is no lesion to store." if not np.any(result.lesion)
                    and not any(p.suffix == ".dcm" for p in written) else "."))
    n_warn = len(result.warnings) + len(getattr(vol, "warnings", ()) or ())
    if n_warn:
        parts.append(f"{n_warn} warning(s), listed in report.json.")
    parts.append(RESEARCH_NOTICE)
    return _one_line(" ".join(parts))


@dataclasses.dataclass(frozen=True)
class AnalyzeRun:
    """What :func:`analyze_folder` did: the result (with ``export`` timing), files written, wall time."""

    result: AnalysisResult
    written: tuple[Path, ...]
    total_s: float
    out: Path
    #: Lines for stderr after the progress bar: data-quality warnings of the series, a SEG left out.
    notes: tuple[str, ...] = ()


def analyze_folder(args: argparse.Namespace, progress_stream: Any = None, show_progress: bool = True) -> AnalyzeRun:
    """Everything ``ctscreen analyze`` does except printing the summary (benchmarks call this)."""
    t0 = time.perf_counter()
    out = Path(args.out).expanduser()
    png = getattr(args, "png", "lesions") or "lesions"
    seg = not getattr(args, "no_seg", False)
    force = bool(getattr(args, "force", False))
    cam = getattr(args, "cam", "lesions") or "lesions"
    nifti = bool(getattr(args, "nifti", False))
    pdf = bool(getattr(args, "pdf", False))

    cam_layer = getattr(args, "cam_layer", None) or None
    cam_method = getattr(args, "cam_method", None) or None
    if png == "cam" and cam == "none":
        raise CtscreenError("--png cam draws the activation maps, and --cam none computes none \u2014 "
                            "use --cam lesions (the default) or --cam all")
    check_cam_layer(getattr(args, "model", None), cam_layer)
    check_output(out, png, seg, force, nifti, pdf)
    from ctscreen.inference.models import load_model

    from ctscreen.inference.device import resolve_device

    resolve_device(getattr(args, "device", "auto") or "auto")  # an unavailable device fails before anything else
    t = time.perf_counter()
    model = load_model(getattr(args, "model", None), device=getattr(args, "device", "auto") or "auto")
    model_s = time.perf_counter() - t
    check_loaded_cam_layer(model, cam_layer)
    classifier = getattr(args, "classifier", None) or None
    if classifier and classifier.lower() != "none":
        from ctscreen.inference.classifier import classifier_path

        classifier = str(classifier_path(classifier))  # a missing file fails now, not after the analysis
    choice: list[str] = []
    scan_notes: list[str] = []
    info = pick_series(Path(args.folder).expanduser(), getattr(args, "series", None), choice, scan_notes)
    if show_progress:
        for line in scan_notes:  # what the folder scan passed over (a FIFO, a broken file ...)
            print(f"ctscreen analyze: note: {line}", file=progress_stream or sys.stderr)
        for line in choice:  # before the long run: which series is being analysed
            print(f"ctscreen analyze: {line}", file=progress_stream or sys.stderr)

    from ctscreen.inference.pipeline import STAGE_LABELS, AnalyzeOptions, analyze

    tta = getattr(args, "tta", "auto") or "auto"
    options = AnalyzeOptions(model=model, cam=cam, cam_layer=cam_layer, cam_method=cam_method,
                             tta=True if tta == "auto" else int(tta),
                             cleanup=bool(getattr(args, "cleanup", False)),
                             batch_size=int(getattr(args, "batch_size", 0) or 8), classifier=classifier)
    bar = ProgressBar(stream=progress_stream, enabled=show_progress)
    gen = analyze(info, options)
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                result: AnalysisResult = stop.value
                break
            bar.update(STAGE_LABELS.get(p.stage, p.stage), p.fraction, p.eta_s, p.message)
        bar.update("writing results", 1.0, None, "")
        # the model was loaded here, before the pipeline: count it in the report's timings
        result = dataclasses.replace(result, timings_s={**result.timings_s,
                                                         "model": result.timings_s.get("model", 0.0) + model_s})
        t = time.perf_counter()
        notes = [f"warning: {w}" for w in result.volume.warnings]
        written = export_staged(result, out, png, seg, force,
                                include_patient=bool(getattr(args, "include_patient", False)), notes=notes,
                                nifti=nifti, pdf=pdf)
        export_s = time.perf_counter() - t
    finally:
        gen.close()
        bar.close()
    result = dataclasses.replace(result, timings_s={**result.timings_s, "export": export_s})
    return AnalyzeRun(result=result, written=tuple(written), total_s=time.perf_counter() - t0, out=out,
                      notes=tuple(notes))


def add_parser(sub: Any) -> None:
    """The ``analyze`` subcommand's arguments."""
    a = sub.add_parser("analyze", help="segment lesions and write the report headless")
    a.add_argument("folder")
    a.add_argument("--out", required=True, help="output folder")
    a.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    a.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    a.add_argument("--series", help="SeriesInstanceUID (default: the analysable axial CT series with the most "
                                    "slices, named on stderr when there are several; `ctscreen info` lists them)")
    a.add_argument("--png", choices=("none", "lesions", "all", "montage", "cam"), default="lesions",
                   help="annotated PNGs: lesion slices, all slices, one montage, or 'cam': every slice with an "
                        "activation map, drawn with the heat map, its colour bar, method and layer")
    a.add_argument("--no-seg", action="store_true", help="do not write the DICOM Segmentation object")
    a.add_argument("--cam", choices=("none", "lesions", "all"), default="lesions",
                   help="slices to compute Grad-CAM for")
    a.add_argument("--cam-method", metavar="NAME", default=None, choices=CAM_METHOD_NAMES,
                   help=f"how the activation maps are made: {', '.join(CAM_METHOD_NAMES)} (default "
                        f"{DEFAULT_CAM_METHOD}, chosen by benchmarks/explanations.py; 'seg-' explains the "
                        "predicted lesion region, the others the whole slice)")
    a.add_argument("--cam-layer", metavar="NAME", default=None,
                   help="network layer for Grad-CAM (unet: decoder1 (default), decoder2, decoder3, decoder4, "
                        "bottleneck; deeplab: aspp (default), decoder, layer3, layer2)")
    a.add_argument("--tta", choices=("auto", "1", "2", "4"), default="auto",
                   help="flipped views averaged by the segmentation (auto: 1 on the CPU, 4 on a GPU; more views "
                        "cost time and changed Dice by < 0.01 in validation, see the model card)")
    a.add_argument("--cleanup", action="store_true",
                   help="remove tiny, single-slice and rim-only lesion components in 3-D (off by default: no "
                        "measurable gain on the shared series, see the model card)")
    a.add_argument("--nifti", action="store_true",
                   help="also write lesions.nii.gz, lung.nii.gz and ct.nii.gz (RAS affine; opens aligned in "
                        "ITK-SNAP, 3D Slicer, nnU-Net)")
    a.add_argument("--pdf", action="store_true", help="also write report.pdf, a one-page report to file or print")
    a.add_argument("--classifier", metavar="NAME|FILE|none", default=None,
                   help="screening classifier for the COVID-19 / other pneumonia / no pneumonia probabilities "
                        "(default: the shipped one; a file written by 'ctscreen train-classifier'; 'none' for the "
                        "RSNA category alone)")
    a.add_argument("--force", action="store_true", help="overwrite existing output files")
    a.add_argument("--include-patient", action="store_true",
                   help="burn patient name and ID into the PNGs and write them into report.json (left out by default)")


def run_analyze(args: argparse.Namespace) -> int:
    """Entry point of ``ctscreen analyze`` (arguments: :func:`add_parser`).

    Returns 0 on success; failures raise :class:`ctscreen.errors.CtscreenError`
    (``cli.main`` prints the one-line reason and exits 2).
    """
    try:
        run = analyze_folder(args)
    except CtscreenError as exc:  # the edge prints str(exc) as is: keep it to one line
        msg = _one_line(str(exc))
        if msg == str(exc):
            raise
        raise type(exc)(msg) from exc
    except MemoryError:  # exports are staged: nothing half-written is left in --out
        raise CtscreenError(f"out of memory while analysing {args.folder} \u2014 close other programs, or "
                            "analyse a smaller series (--series; `ctscreen info` lists them)") from None
    except Exception as exc:  # never a traceback: one line naming what failed
        raise CtscreenError(_one_line(
            f"unexpected error while analysing {args.folder} ({type(exc).__name__}: {exc}) \u2014 nothing was "
            f"written; check the series with `ctscreen info {args.folder}` and report this line")) from exc
    for line in run.notes:
        print(f"ctscreen analyze: {_one_line(line)}", file=sys.stderr)
    print(summary(run.result, run.out, list(run.written), run.total_s))
    return 0


run = run_analyze
