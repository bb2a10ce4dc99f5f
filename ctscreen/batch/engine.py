"""The batch engine: a generator that runs :func:`ctscreen.batch.study.run_study` over many studies.

:func:`run_batch` yields a :class:`BatchEvent` per study (skipped, done,
failed) and returns a :class:`BatchSummary`; ``summary.csv`` and
``summary.json`` are written when it ends, however it ends (finished,
cancelled through ``cancel``, Ctrl-C, or an error).

Engines (the same job function on each):

``inline``
    In the calling process, one study after the other (``--workers 0``;
    debugging and tests).
``local``
    ``N`` worker processes on this machine (``spawn``, so each starts clean).
    Each loads the model once and keeps it; torch's CPU threads are split
    between them (``cpu_count // N`` each). With CUDA, worker ``k`` uses GPU
    ``k mod G``: several workers per GPU keep it busy while another worker
    decodes DICOM and computes its lung mask on the CPU. Workers ignore
    Ctrl-C; the engine terminates them and removes their staging folders.
    A worker that dies (killed, out of memory) fails its study with that
    reason; the pool is restarted and the batch goes on.
``dask``
    A Dask ``distributed`` cluster: a real scheduler given by address
    (``--scheduler tcp://host:8786``), or a ``LocalCluster`` of ``N`` worker
    processes with one thread each started here. The workers must see ROOT
    and OUT at the same paths (a shared file system) and have ctscreen
    installed. Each worker process loads the model once; torch threads are
    split between the workers of each host.

Rerun and resumability: a study whose ``OUT/<study_id>/batch.json`` holds the
same key (inputs, model, options: :func:`ctscreen.batch.study.result_key`) is
not analysed again, and its earlier row is reused. ``force`` re-analyses
everything, ``retry_failed`` only the studies that failed.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import Cancelled
from ctscreen.batch.discover import Discovery
from ctscreen.batch.study import (
    OLD, PATIENT_COLUMNS, STAGING, SUMMARY_COLUMNS, BatchOptions, StudyTask, base_row, configure_worker,
    read_batch_json, result_key, run_study,
)

ENGINES = ("local", "dask")
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_FORMAT = "ctscreen-batch-summary/1"
#: Seconds between checks of the cancel flag while waiting for workers.
POLL_S = 0.2


@dataclass(frozen=True)
class BatchEvent:
    """One step of :func:`run_batch`.

    Attributes
    ----------
    kind : str
        ``"skipped"`` (finished earlier, reused), ``"done"``, ``"failed"``, ``"started"`` (the engine is
        up; ``row`` is None) or ``"stopping"`` (cancel seen).
    row : dict or None
        The study's summary row.
    finished, total : int
        Studies finished (done, failed or reused) so far, of all studies.
    message : str
    """

    kind: str
    row: dict[str, Any] | None
    finished: int
    total: int
    message: str = ""


@dataclass
class BatchSummary:
    """What a batch did; ``rows`` are in ``study_id`` order, one per discovered study."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    interrupted: bool
    wall_s: float
    engine: str
    workers: int
    out: Path
    files: tuple[Path, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def default_workers(device: str = "cpu") -> int:
    """Workers when not given: 2 per GPU, else one per 2 cores (at least 1)."""
    if device.startswith("cuda"):
        import torch

        return 2 * max(1, torch.cuda.device_count())
    return max(1, (os.cpu_count() or 1) // 2)


def worker_devices(device: str) -> list[str]:
    """Devices to deal out to local workers: each GPU once for ``cuda``/``auto`` with GPUs, else ``[device]``."""
    import torch

    if device in ("cuda", "auto") and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device]


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """Torch CPU threads for each of ``workers`` processes sharing ``cpus`` cores."""
    return max(1, (cpus or os.cpu_count() or 1) // max(1, workers))


# --------------------------------------------------------------------------- planning

def plan(discovery: Discovery, out: Path, options: BatchOptions, force: bool = False,
         retry_failed: bool = False) -> tuple[list[StudyTask], dict[str, dict[str, Any]]]:
    """Split the studies into work to do and rows reused from finished result folders."""
    todo: list[StudyTask] = []
    reused: dict[str, dict[str, Any]] = {}
    for study in discovery.studies:
        key = result_key(study, options)
        task = StudyTask(study=study, out=str(out), options=options, key=key, root=discovery.root)
        prev = read_batch_json(out / study.study_id)
        if prev and prev.get("key") == key and not force:
            status = (prev.get("row") or {}).get("status")
            if status == "done" or (status == "failed" and not retry_failed):
                reused[study.study_id] = {**prev["row"], "reused": True}
                continue
        todo.append(task)
    return todo, reused


def clean_staging(out: Path) -> int:
    """Remove what a killed run left in ``out``: staging folders; restore a result caught mid-replace."""
    n = 0
    if not out.is_dir():
        return 0
    for p in out.iterdir():
        if p.name.startswith(OLD) and p.is_dir():
            kept = p / "r"
            target = out / p.name[len(OLD):].rsplit("-", 1)[0]
            if kept.is_dir() and not target.exists():
                os.rename(kept, target)  # killed between the two renames: the earlier result comes back
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        elif p.name.startswith(STAGING) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


# --------------------------------------------------------------------------- engines

class _Inline:
    """Studies one after the other in this process."""

    def __init__(self, workers: int, options: BatchOptions, cancel: threading.Event):
        self.cancel = cancel
        self.workers = 1

    def run(self, tasks: list[StudyTask]) -> Iterator[tuple[StudyTask, dict[str, Any] | BaseException]]:
        for t in tasks:
            if self.cancel.is_set():
                return
            yield t, run_study(replace(t, worker="inline"), cancel=self.cancel)

    def stop(self) -> None:
        pass


def _init_local_worker(threads: int, devices: list[str], counter: Any) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine stops workers; Ctrl-C goes to it alone
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    configure_worker(threads, devices[k % len(devices)] if devices else None)


def _local_job(task: StudyTask) -> dict[str, Any]:
    return run_study(replace(task, worker=f"local-{os.getpid()}"))


class _Local:
    """A pool of worker processes on this machine."""

    def __init__(self, workers: int, options: BatchOptions, cancel: threading.Event):
        import multiprocessing as mp

        self.workers = max(1, workers)
        self.cancel = cancel
        self.ctx = mp.get_context("spawn")
        self.threads = threads_per_worker(self.workers)
        self.devices = worker_devices(options.device)
        self.pool = None
        self.restarts = 0
        self.attempts: dict[str, int] = {}

    def _start(self) -> None:
        from concurrent.futures import ProcessPoolExecutor

        counter = self.ctx.Value("i", 0)
        self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=self.ctx,
                                        initializer=_init_local_worker,
                                        initargs=(self.threads, self.devices, counter))

    def run(self, tasks: list[StudyTask]) -> Iterator[tuple[StudyTask, dict[str, Any] | BaseException]]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        self._start()
        pending = list(reversed(tasks))
        running: dict[Any, StudyTask] = {}
        window = 2 * self.workers  # a few queued per worker: none idles, and a stop drops little
        while pending or running:
            while pending and len(running) < window and not self.cancel.is_set():
                t = pending.pop()
                running[self.pool.submit(_local_job, t)] = t
            if self.cancel.is_set():
                return
            done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
            broken: list[StudyTask] = []
            for f in done:
                t = running.pop(f)
                try:
                    res = f.result()
                except BrokenProcessPool:
                    broken.append(t)
                    continue
                except Exception as exc:  # noqa: BLE001 - reported as the study's failure
                    res = exc
                yield t, res
            if broken:
                # A worker died (killed, out of memory): every study in flight fails with it, and which one
                # killed it is unknown. Each gets one more try in a new pool; a second death fails it.
                broken += list(running.values())
                running.clear()
                self.stop()
                self.restarts += 1
                for t in broken:
                    self.attempts[t.study.study_id] = self.attempts.get(t.study.study_id, 0) + 1
                    if self.attempts[t.study.study_id] >= 2:
                        yield t, RuntimeError("the worker process analysing it died twice (out of memory, or "
                                              "killed) \u2014 rerun it with fewer --workers")
                    else:
                        pending.append(t)
                self._start()

    def stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:  # running studies are abandoned: their staging folders are removed afterwards
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
        pool.shutdown(wait=False, cancel_futures=True)


_DASK_CONFIGURED: set[str] = set()


def _dask_job(task: StudyTask, threads_by_worker: dict[str, int]) -> dict[str, Any]:
    """The Dask task: set this worker's torch threads once, then the same job as everywhere."""
    from distributed import get_worker

    addr = get_worker().address
    if addr not in _DASK_CONFIGURED:
        configure_worker(threads_by_worker.get(addr))
        _DASK_CONFIGURED.add(addr)
    return run_study(replace(task, worker=addr))


class _Dask:
    """A Dask distributed cluster: the one at ``scheduler``, or a LocalCluster started here."""

    def __init__(self, workers: int, options: BatchOptions, cancel: threading.Event, scheduler: str | None = None):
        import logging

        from distributed import Client, LocalCluster

        self.cancel = cancel
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout="20s")
            except Exception as exc:  # noqa: BLE001 - one line for the user
                from ctscreen.errors import CtscreenError

                raise CtscreenError(f"cannot reach the Dask scheduler at {scheduler} ({type(exc).__name__}: {exc})"
                                    " \u2014 check the address, or leave --scheduler out for a local cluster") from None
        else:
            import dask

            # Dask's nanny sets MALLOC_TRIM_THRESHOLD_=64 KiB in its workers, which turns off glibc's
            # adaptive mmap threshold: every large tensor is then mmap-ed and zero-filled afresh, and the
            # segmentation ran 2x slower than in a local worker (14-slice studies, 2 workers, 2 cores).
            # The statistical profiler (a stack sample of every thread each 10 ms) is not needed either.
            environ = {k: v for k, v in (dask.config.get("distributed.nanny.pre-spawn-environ") or {}).items()
                       if k != "MALLOC_TRIM_THRESHOLD_"}
            with dask.config.set({"distributed.worker.profile.enabled": False,
                                  "distributed.nanny.pre-spawn-environ": environ}):
                self.cluster = LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        info = self.client.scheduler_info()
        ws = info.get("workers", {})
        if not ws:
            self.client.wait_for_workers(1, timeout=60)
            ws = self.client.scheduler_info().get("workers", {})
        self.workers = max(1, sum(int(w.get("nthreads", 1)) for w in ws.values()))
        cpus = self.client.run(os.cpu_count)
        per_host: dict[str, int] = {}
        for addr, w in ws.items():
            per_host[w.get("host", addr)] = per_host.get(w.get("host", addr), 0) + int(w.get("nthreads", 1))
        self.threads = {addr: max(1, (cpus.get(addr) or 1) // per_host[w.get("host", addr)]) for addr, w in ws.items()}
        self.futures: list[Any] = []

    def run(self, tasks: list[StudyTask]) -> Iterator[tuple[StudyTask, dict[str, Any] | BaseException]]:
        from distributed import as_completed

        by_key: dict[str, StudyTask] = {}
        pending = list(reversed(tasks))
        window = 2 * self.workers
        ac = as_completed()

        def submit_more() -> None:
            while pending and ac.count() < window and not self.cancel.is_set():
                t = pending.pop()
                f = self.client.submit(_dask_job, t, self.threads, key=f"ctscreen-{t.study.study_id}-{t.key[:12]}",
                                       pure=False, retries=0)
                by_key[f.key] = t
                self.futures.append(f)
                ac.add(f)

        submit_more()
        while not ac.is_empty() or pending:
            if self.cancel.is_set():
                return
            got = ac.next_batch(block=False)
            if not got:
                time.sleep(POLL_S)
                submit_more()
                continue
            for f in got:
                t = by_key.pop(f.key)
                try:
                    yield t, f.result()
                except Exception as exc:  # noqa: BLE001
                    yield t, exc
                self.futures.remove(f)
            submit_more()

    def stop(self) -> None:
        try:
            if self.futures:
                self.client.cancel(self.futures, force=True)
        finally:
            self.client.close()
            if self.cluster is not None:  # our own cluster: its worker processes end here
                self.cluster.close()


# --------------------------------------------------------------------------- the generator

def run_batch(discovery: Discovery, out: str | os.PathLike, options: BatchOptions, *, engine: str = "local",
              workers: int = 1, scheduler: str | None = None, force: bool = False, retry_failed: bool = False,
              cancel: threading.Event | None = None) -> Generator[BatchEvent, None, BatchSummary]:
    """Analyse every study of ``discovery`` into ``out``; yields an event per study.

    Parameters
    ----------
    discovery : Discovery
        From :func:`ctscreen.batch.discover.discover_studies`.
    out : path-like
        One folder per study and the summary go here.
    options : BatchOptions
        ``model_id`` is filled in here when empty.
    engine : {"local", "dask"}
        ``local`` with ``workers=0`` runs in this process.
    workers : int
        Worker processes (local) or LocalCluster workers (dask without ``scheduler``).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    force, retry_failed : bool
        Re-analyse every study / the studies that failed before.
    cancel : threading.Event, optional
        Set it to stop: running studies are abandoned, finished ones are kept.
        Ctrl-C (KeyboardInterrupt) while waiting does the same.

    Returns
    -------
    BatchSummary
        Also written to ``out/summary.csv`` and ``out/summary.json``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cancel = cancel or threading.Event()
    if not options.model_id:
        from ctscreen.batch.study import model_identity

        options = replace(options, model_id=model_identity(options.model))
    clean_staging(out)
    todo, reused = plan(discovery, out, options, force, retry_failed)
    rows: dict[str, dict[str, Any]] = dict(reused)
    total = len(discovery.studies)
    runner: Any = None
    interrupted = False
    extra: dict[str, Any] = {}
    try:
        for sid in sorted(reused):
            yield BatchEvent("skipped", reused[sid], len(rows), total, "finished earlier (same inputs, model, options)")
        if todo:
            if engine == "dask":
                runner = _Dask(workers, options, cancel, scheduler)
            elif workers <= 0:
                runner = _Inline(workers, options, cancel)
            else:
                runner = _Local(min(workers, len(todo)), options, cancel)
            yield BatchEvent("started", None, len(rows), total,
                             f"{len(todo)} to analyse, {len(reused)} finished earlier; engine {engine}"
                             f" with {runner.workers} worker(s)")
            it = runner.run(todo)
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    break
                except (KeyboardInterrupt, Cancelled):
                    cancel.set()
                    break
                t, res = item
                row = res if isinstance(res, dict) else _failed_row(t, res)
                rows[t.study.study_id] = row
                yield BatchEvent(row.get("status", "failed"), row, len(rows), total, row.get("reason", ""))
            interrupted = cancel.is_set() and len(rows) < total
            if interrupted:
                yield BatchEvent("stopping", None, len(rows), total, "stopping: the studies being analysed are "
                                 "abandoned, finished ones are kept")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if runner is not None:
            try:
                runner.stop()
            except Exception:  # noqa: BLE001 - stopping must not hide the summary
                pass
            extra["pool_restarts"] = getattr(runner, "restarts", 0)
        clean_staging(out)
        summary = _summarise(discovery, out, options, rows, engine, getattr(runner, "workers", workers),
                             interrupted or len(rows) < total, time.perf_counter() - t0, extra)
    return summary


def _failed_row(task: StudyTask, exc: BaseException) -> dict[str, Any]:
    """A row for a study whose job did not return (the worker died, or the engine failed it)."""
    from ctscreen.batch.study import one_line, scrub_paths

    row = base_row(task.study, task.options)
    reason = one_line(f"{type(exc).__name__}: {exc}" if not isinstance(exc, RuntimeError) else exc)
    row.update(status="failed", full_reason=reason,
               reason=reason if task.options.include_patient else scrub_paths(reason, [task.study.folder, task.root]))
    return row


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _summarise(discovery: Discovery, out: Path, options: BatchOptions, rows: dict[str, dict[str, Any]], engine: str,
               workers: int, interrupted: bool, wall_s: float, extra: dict[str, Any]) -> BatchSummary:
    """Write ``summary.csv`` and ``summary.json`` (atomically) for every discovered study."""
    from ctscreen.io.files import atomic_write

    columns = list(SUMMARY_COLUMNS) + (list(PATIENT_COLUMNS) if options.include_patient else [])
    ordered = []
    for study in sorted(discovery.studies, key=lambda s: s.study_id):
        row = rows.get(study.study_id)
        if row is None:
            row = {**base_row(study, options), "status": "not_run", "reason": "the run was stopped before this study"}
        ordered.append({c: row.get(c) for c in columns})
    counts = {k: sum(1 for r in ordered if r["status"] == k) for k in ("done", "failed", "not_run")}
    counts["reused"] = sum(1 for r in ordered if r.get("reused"))
    counts["analysed_now"] = sum(1 for r in ordered if r["status"] in ("done", "failed") and not r.get("reused"))
    counts["total"] = len(ordered)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in ordered:
        w.writerow({c: _cell(r.get(c)) for c in columns})
    blob: dict[str, Any] = {
        "format": SUMMARY_FORMAT, "research_notice": RESEARCH_NOTICE, "ctscreen_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "engine": engine, "workers": workers, "interrupted": bool(interrupted), "wall_s": round(wall_s, 3),
        "model": options.model_id or str(options.model),
        "options": {k: v for k, v in options.key_fields().items() if k != "model"},
        "counts": counts, "ignored_folders": discovery.ignored_folders, "columns": columns,
        "studies": ordered, **extra,
    }
    if options.include_patient:
        blob["root"] = discovery.root
    out.mkdir(parents=True, exist_ok=True)
    files = (atomic_write(out / SUMMARY_CSV, buf.getvalue(), force=True),
             atomic_write(out / SUMMARY_JSON, json.dumps(blob, indent=2, default=str) + "\n", force=True))
    return BatchSummary(rows=ordered, counts=counts, interrupted=bool(interrupted), wall_s=wall_s, engine=engine,
                        workers=workers, out=out, files=files, extra=extra)
