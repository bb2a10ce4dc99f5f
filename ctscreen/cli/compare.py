"""``ctscreen compare PRIOR CURRENT --out DIR``: follow-up comparison of two studies without a window.

Research use, not for diagnosis.

``PRIOR`` and ``CURRENT`` are each a DICOM folder (analysed now, with the same
model and options as ``ctscreen analyze``, Grad-CAM off) or the output folder of
``ctscreen analyze --nifti`` (re-opened without running the model). The two are
aligned by their lung masks (:func:`ctscreen.imaging.compare.compare`) and
``comparison.json``, ``comparison.csv`` and ``comparison.png`` (matched slices side
by side) are written atomically; nothing is overwritten without ``--force``.
Torch is imported only when a study must be analysed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import CtscreenError, ExportError, NotADicomSeries


def add_parser(sub: Any) -> None:
    """The ``compare`` subcommand's arguments."""
    c = sub.add_parser("compare", help="compare a prior and a current study (change per lung and zone)")
    c.add_argument("prior", help="the earlier study: a DICOM folder, or a 'ctscreen analyze --nifti' output folder")
    c.add_argument("current", help="the later study: a DICOM folder, or a 'ctscreen analyze --nifti' output folder")
    c.add_argument("--out", required=True, help="output folder for comparison.json/.csv/.png")
    c.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    c.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    c.add_argument("--force", action="store_true", help="overwrite existing comparison files")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_or_analyze(folder: Path, model: Any, device: str, label: str, show_progress: bool = True) -> Any:
    """The :class:`AnalysisResult` of ``folder``: re-opened from an analysis folder, else analysed now.

    ``model`` is a loaded model, or a one-element list used as a lazy cache
    (``[None]`` is filled with the loaded model the first time one is needed).
    """
    from ctscreen.io.nifti import is_analysis_folder, read_analysis_folder

    if not folder.exists():
        raise NotADicomSeries(f"{folder} does not exist \u2014 give a DICOM folder or a 'ctscreen analyze --nifti' "
                              "output folder")
    if is_analysis_folder(folder):
        if show_progress:
            print(f"ctscreen compare: {label}: re-using the analysis in {folder}", file=sys.stderr)
        return read_analysis_folder(folder)
    from ctscreen.io.study import pick_series
    from ctscreen.inference.pipeline import STAGE_LABELS, AnalyzeOptions, analyze
    from ctscreen.progress import ProgressBar

    info = pick_series(folder, None)
    if isinstance(model, list):
        if model[0] is None:
            from ctscreen.inference.models import load_model

            model[0] = load_model(model[1] if len(model) > 1 else None, device=device)
        loaded = model[0]
    else:
        loaded = model
    bar = ProgressBar(enabled=show_progress)
    gen = analyze(info, AnalyzeOptions(model=loaded, cam="none"))
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            bar.update(f"{label}: {STAGE_LABELS.get(p.stage, p.stage)}", p.fraction, p.eta_s, p.message)
    finally:
        gen.close()
        bar.close()


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ctscreen compare``; errors are one-line :class:`CtscreenError`."""
    from ctscreen.io.export_compare import COMPARISON_NAMES, write_comparison

    t0 = time.perf_counter()
    out = Path(args.out).expanduser()
    prior_dir, current_dir = Path(args.prior).expanduser(), Path(args.current).expanduser()
    force = bool(getattr(args, "force", False))
    try:
        if out.exists() and not out.is_dir():
            raise ExportError(f"--out {out} is a file, not a folder \u2014 choose a folder for the comparison")
        if not force:
            clash = [out / n for n in COMPARISON_NAMES if (out / n).exists()]
            if clash:
                raise ExportError(f"{out} already holds {clash[0].name} \u2014 use --force to overwrite or choose "
                                  "another --out")
        for f in (prior_dir, current_dir):
            if not f.exists():
                raise NotADicomSeries(f"{f} does not exist \u2014 give a DICOM folder or a 'ctscreen analyze "
                                      "--nifti' output folder")
        device = getattr(args, "device", "auto") or "auto"
        model: list[Any] = [None, getattr(args, "model", None)]
        prior = load_or_analyze(prior_dir, model, device, "prior")
        current = load_or_analyze(current_dir, model, device, "current")
        from ctscreen.imaging.compare import compare

        try:
            cmp = compare(prior, current)
        except ValueError as exc:
            raise CtscreenError(f"cannot compare {prior_dir} with {current_dir}: {exc}") from exc
        written = write_comparison(cmp, out, force=force)
    except CtscreenError as exc:
        msg = _one_line(str(exc))
        if msg == str(exc):
            raise
        raise type(exc)(msg) from exc
    for w in cmp.warnings:
        print(f"ctscreen compare: warning: {_one_line(w)}", file=sys.stderr)
    both = cmp.row("both")
    ox, oy, oz = (round(v, 1) + 0.0 for v in cmp.registration.offset_mm)
    change_ml = round(both.change["lesion_ml"], 1) + 0.0  # no "-0.0"
    print(_one_line(
        f"Lesions {both.prior['lesion_ml']:.1f} mL ({both.prior['percent_involved']:.1f} %) -> "
        f"{both.current['lesion_ml']:.1f} mL ({both.current['percent_involved']:.1f} %): "
        f"{change_ml:+.1f} mL, {both.direction}; severity {both.prior['severity']:.0f} -> "
        f"{both.current['severity']:.0f}/30. Aligned by the lung masks, offset ({ox:+.1f}, {oy:+.1f}, {oz:+.1f}) mm. "
        f"Wrote {', '.join(p.name for p in written)} to {out} in {time.perf_counter() - t0:.1f} s. {RESEARCH_NOTICE}"))
    return 0
