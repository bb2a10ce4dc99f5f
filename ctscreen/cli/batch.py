"""``ctscreen batch ROOT --out DIR``: screen every study under an archive folder.

One result folder per study (named by a hash of its StudyInstanceUID, no
patient data unless ``--include-patient``) and ``summary.csv`` /
``summary.json`` across studies. A rerun skips studies already finished with
the same inputs, model and options; Ctrl-C stops the workers and writes the
summary of what finished. See :mod:`ctscreen.batch`.

Research use, not for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import CtscreenError


def add_parser(sub: Any) -> None:
    """The ``batch`` subcommand's arguments."""
    b = sub.add_parser("batch", help="analyse every study under a folder (local workers or a Dask cluster)",
                       description="Analyse every study (StudyInstanceUID) under ROOT with the full pipeline. "
                                   f"{RESEARCH_NOTICE}")
    b.add_argument("root", metavar="ROOT", nargs="?",
                   help="folder holding the studies (walked recursively); or give a PACS and a search instead")
    b.add_argument("--out", required=True, help="output folder: one folder per study, summary.csv, summary.json")
    b.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: 2 per GPU, else one per 2 CPU cores; 0 = in this process)")
    b.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps (local workers share the GPUs)")
    b.add_argument("--engine", choices=("local", "dask"), default="local",
                   help="local worker processes, or a Dask distributed cluster")
    b.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="Dask scheduler address (tcp://host:8786); without it --engine dask starts a local cluster")
    b.add_argument("--model", default=None, help="unet|deeplab or a weights file (default: the shipped default)")
    b.add_argument("--png", choices=("none", "lesions", "all", "montage"), default="montage")
    b.add_argument("--cam", choices=("none", "lesions", "all"), default="none", help="slices to compute Grad-CAM for")
    b.add_argument("--cam-layer", metavar="NAME", default=None, help="network layer for Grad-CAM")
    b.add_argument("--no-seg", action="store_true", help="do not write DICOM Segmentation objects")
    b.add_argument("--force", action="store_true", help="re-analyse studies that are already finished")
    b.add_argument("--retry-failed", action="store_true", help="re-analyse studies that failed before")
    b.add_argument("--include-patient", action="store_true",
                   help="name result folders by PatientID/StudyDate and put patient data and source folders "
                        "into the summary (left out by default)")
    b.add_argument("--quiet", action="store_true", help="print only the final summary line")
    from ctscreen.cli.pull import add_server_args

    add_server_args(b)  # --server / --dicomweb / --dimse: a PACS as the source instead of ROOT
    for group in b._mutually_exclusive_groups:  # optional here: ROOT is the other source
        group.required = False
    q = b.add_argument_group("PACS search (with --server, --dicomweb or --dimse; CT series are retrieved)")
    q.add_argument("--patient-id", default="", metavar="ID")
    q.add_argument("--name", default="", help="patient name (matches names starting with it)")
    q.add_argument("--date", default="", metavar="FROM-TO", help="study date range, YYYYMMDD-YYYYMMDD")
    q.add_argument("--accession", default="", metavar="NUMBER")
    q.add_argument("--modality", default="", metavar="CT", help="studies with this modality in them")
    q.add_argument("--study", default="", metavar="UID", help="one Study Instance UID")
    q.add_argument("--limit", type=int, default=0, metavar="N", help="at most N studies")
    q.add_argument("--cache", metavar="DIR", default=None,
                   help="where retrieved series are kept (default: ctscreen's PACS cache folder)")


def _line(ev: Any) -> str:
    r = ev.row or {}
    head = f"[{ev.finished}/{ev.total}] {r.get('study_id', '')}"
    if ev.kind == "failed":
        return f"{head} failed: {r.get('full_reason') or r.get('reason', '')}"
    if ev.kind == "skipped":
        return f"{head} finished earlier ({r.get('status')}), skipped"
    les, pct = r.get("lesion_volume_ml"), r.get("percent_involved")
    what = (f"lesions {les:.1f} mL ({pct:.1f} % of lung)" if isinstance(les, float) and isinstance(pct, float)
            else "done")
    if r.get("screening_category"):
        what += f", {r['screening_category']}"
    return f"{head} {what} in {r.get('total_s', 0):.1f} s"


def _from_pacs(args: argparse.Namespace, say: Any) -> tuple[Path, Any]:
    """Search the PACS, retrieve the matching studies' CT series into the cache, discover them."""
    from ctscreen.batch.pacs_source import pull_studies
    from ctscreen.cli.pull import _query, server_from_args
    from ctscreen.io.pacs.common import PacsError
    from ctscreen.io.pacs.config import default_cache_dir

    query = _query(args)
    if not query.filters():
        raise PacsError("give at least one search criterion (--patient-id, --name, --date, --accession, --modality, "
                        "--study), so the whole archive is not pulled")
    server = server_from_args(args)
    cache = Path(args.cache).expanduser() if args.cache else default_cache_dir()
    say(f"searching {server.describe()}; series go to {cache}")
    gen = pull_studies(server, query, cache, include_patient=args.include_patient)
    while True:
        try:
            say(next(gen))
        except StopIteration as stop:
            return cache, stop.value


def run(args: argparse.Namespace) -> int:
    """Entry point of ``ctscreen batch``: discovery, engine, summary. Returns 0, or 1 when a study failed."""
    from ctscreen.batch import BatchOptions, discover_studies, run_batch
    from ctscreen.batch.engine import default_workers
    from ctscreen.inference.camlayers import check_cam_layer

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CtscreenError(f"--out {out} is a file, not a folder \u2014 choose a folder for the results")
    if args.scheduler and args.engine != "dask":
        raise CtscreenError("--scheduler needs --engine dask")
    check_cam_layer(args.model, args.cam_layer)
    from ctscreen.inference.device import resolve_device
    from ctscreen.inference.models import load_model

    dev = resolve_device(args.device)  # an unavailable device fails before any work
    load_model(args.model, device="cpu")  # a missing or corrupt model fails here, not in every worker
    options = BatchOptions(model=args.model, device=args.device, png=args.png, cam=args.cam,
                           cam_layer=args.cam_layer, seg=not args.no_seg, include_patient=args.include_patient)
    say = (lambda s: None) if args.quiet else (lambda s: print(f"ctscreen batch: {s}", file=sys.stderr, flush=True))
    pacs = bool(getattr(args, "server", None) or getattr(args, "dicomweb", None) or getattr(args, "dimse", None))
    if pacs == bool(args.root):
        raise CtscreenError("give ROOT (a folder of studies) or a PACS (--server, --dicomweb or --dimse) with a "
                            "search, not both" if pacs else "give ROOT, a folder of studies, or a PACS to search")
    if pacs:
        root, discovery = _from_pacs(args, say)
    else:
        root = Path(args.root).expanduser()
        discovery = discover_studies(root, include_patient=args.include_patient, exclude=out)
    for note in discovery.notes:
        say(note)
    if not discovery.studies:
        raise CtscreenError(f"{root} holds no DICOM study ({discovery.ignored_folders} folder(s) without DICOM "
                            "images) \u2014 give the folder that holds the studies")
    workers = args.workers if args.workers is not None else default_workers(dev.type)
    say(f"{len(discovery.studies)} studies under {root}; results in {out}")
    cancel = threading.Event()
    gen = run_batch(discovery, out, options, engine=args.engine, workers=workers, scheduler=args.scheduler,
                    force=args.force, retry_failed=args.retry_failed, cancel=cancel)
    summary = None
    interrupts = 0
    while summary is None:
        try:
            ev = next(gen)
            if ev.kind in ("started", "stopping"):
                say(ev.message)
            elif ev.row is not None:
                say(_line(ev))
        except StopIteration as stop:
            summary = stop.value
        except KeyboardInterrupt:
            interrupts += 1
            cancel.set()
            if interrupts > 1:  # a second Ctrl-C: stop now (the summary is still written)
                gen.close()
                raise
    c = summary.counts
    print(f"Batch: {c['done']} done, {c['failed']} failed"
          + (f", {c['not_run']} not run (stopped)" if c["not_run"] else "")
          + f" of {c['total']} studies ({c['reused']} finished earlier) in {summary.wall_s:.1f} s with "
          f"{summary.workers} {summary.engine} worker(s). Summary: {out / 'summary.csv'}. {RESEARCH_NOTICE}")
    if summary.interrupted:
        return 130
    return 1 if c["failed"] else 0
