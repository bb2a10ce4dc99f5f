"""Long mutation-fuzz run of the DICOM loader: many damaged series, each in a child process.

Research use only — not for diagnosis.

Each case is one mutated copy of 8 real slices (COVID-CT-MD P001, JPEG Lossless, or
Lung-PET-CT-Dx A0002, uncompressed; 1-3 of the mutation kinds of
``tests/dicom_mutations.py``, sometimes with random bit flips or a cut file on top),
written to a temporary folder and loaded with ``load_series(folder)`` (the scan and the
load the viewer and ``ctscreen analyze`` run) in a forked child with a wall-clock limit
(``--timeout-s``, default 20 s) and an address-space limit (``--mem-gb``, default 4 GB,
RLIMIT_AS). Outcomes:

loaded_ok, loaded_with_warning, refused_clear (a CtscreenError with a one-line message),
hang (over the limit), crash (any other exception, or the child died), oom (MemoryError),
silent_bad_geometry (a volume with broken geometry, or from a mutation that must be
reported, loaded without any warning or not-analysable reason).

Prints one JSON object: counts per outcome, the bad cases (seed, kinds, detail) so each
can be replayed (``--replay SEED``), per-case timing, and as a reference the load time of
the unmutated series measured in the same run (``slowest_case_vs_reference``).
A partial result is rewritten to ``--progress`` every 100 cases.

Usage::

    nice -n 10 python benchmarks/fuzz_loader.py --cases 10000 --progress /tmp/fuzz_progress.json
    nice -n 10 python benchmarks/fuzz_loader.py --analyze --cases 100 --timeout-s 120   # end to end
    python benchmarks/fuzz_loader.py --replay 1234      # one case, in this process, verbose
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import dicom_mutations as dm  # noqa: E402

BAD = ("hang", "crash", "oom", "silent_bad_geometry")


def _bases(n_slices: int) -> list[dm.Base]:
    bases = [dm.real_base("p001", n_slices), dm.real_base("lungpet", n_slices)]
    for b in bases:  # encoded once here, not in every child
        b.encoded
    for mib in (16, 32, 64):
        dm._deflated_zeros(mib << 20)
    return bases


def _analyze_case(folder: Path, case: dm.Case) -> tuple[str, str]:
    """``ctscreen analyze`` on the mutated series: a finished run, or exit 2 with one line and nothing written."""
    import contextlib
    import io
    import traceback

    from ctscreen.cli import main

    out = folder.parent / "out"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["analyze", str(folder), "--out", str(out), "--png", "none", "--cam", "none", "--no-seg",
                         "--device", "cpu"])
    except MemoryError:
        return "oom", "MemoryError escaped ctscreen analyze"
    except BaseException as exc:  # noqa: BLE001 - a traceback would reach the user
        return "crash", "".join(traceback.format_exception(exc))[-400:]
    text = err.getvalue()
    errors = [ln for ln in text.splitlines() if ln.startswith("ctscreen analyze: error:")]
    if "Traceback" in text:
        return "crash", text[-400:]
    if code == 0:
        if not (out / "report.json").exists():
            return "crash", "exit 0 without report.json"
        return "loaded_with_warning" if "warning:" in text else "loaded_ok", ""
    if code == 2 and len(errors) == 1:
        if out.exists() and any(out.iterdir()):
            return "crash", f"failed but left {sorted(p.name for p in out.iterdir())[:5]} in --out"
        return "refused_clear", errors[0][:200]
    return "crash", f"exit {code}: {text[-300:]}"


def _child(conn, base: dm.Base, seed: int, timeout_s: float, mem_bytes: int, tmp_root: str,
           analyze: bool = False) -> None:
    """One case in a forked child: limits, build, load, classify, report through ``conn``."""
    warnings.simplefilter("ignore")
    resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    folder = Path(tmp_root) / f"case{seed}"
    trace = open(Path(tmp_root) / f"case{seed}.trace", "w")
    faulthandler.enable(trace)
    faulthandler.dump_traceback_later(max(timeout_s - 1.0, 1.0), exit=False, file=trace)
    try:
        case = dm.build_case(folder / "series", base, seed)
    except Exception as exc:  # noqa: BLE001 - the mutation itself failed: not the loader's outcome
        conn.send(("build_error", repr(exc)[:300], (), 0.0))
        return
    t0 = time.perf_counter()
    try:
        if analyze:
            outcome, detail = _analyze_case(folder / "series", case)
        else:
            outcome, detail = dm.run_case(folder / "series", case)
    except MemoryError as exc:
        outcome, detail = "oom", repr(exc)[:200]
    conn.send((outcome, detail, case.kinds, time.perf_counter() - t0))


def _reference_s(bases: list[dm.Base]) -> float:
    """Load time of the unmutated series (median of 3, in this process)."""
    from ctscreen.io.dicom import load_series

    times = []
    with tempfile.TemporaryDirectory() as td:
        for b in bases:
            folder = Path(td) / b.name.replace("/", "_")
            folder.mkdir()
            with dm.lenient_pydicom():
                for name, ds in zip(b.names, b.datasets):
                    (folder / name).write_bytes(dm._encode(ds))
            for _ in range(3):
                t = time.perf_counter()
                load_series(folder, workers=2)
                times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def run(n_cases: int, seed0: int, timeout_s: float, mem_gb: float, workers: int, n_slices: int,
        progress: str | None, analyze: bool = False) -> dict:
    bases = _bases(n_slices)
    reference_s = _reference_s(bases)
    if analyze:  # imported once here, not in every child
        import torch  # noqa: F401

        import ctscreen.cli.analyze  # noqa: F401
        import ctscreen.inference.pipeline  # noqa: F401
    ctx = mp.get_context("fork")
    tmp_root = tempfile.mkdtemp(prefix="ctscreen-fuzz-")
    counts: Counter = Counter()
    by_kind_bad: Counter = Counter()
    bad_cases: list[dict] = []
    case_times: list[float] = []
    slowest: list[tuple] = []  # (seconds, seed, kinds) of the five slowest cases
    build_errors = 0
    build_error_examples: list[dict] = []
    started = time.time()
    in_flight: dict = {}
    next_seed = seed0
    done = 0
    written = 0

    def finish(seed: int, proc, conn, t_start: float, killed: bool) -> None:
        nonlocal done, build_errors
        result = conn.recv() if conn.poll() else None
        if killed:
            trace_file = Path(tmp_root) / f"case{seed}.trace"
            where = trace_file.read_text()[-600:] if trace_file.exists() else ""
            outcome, detail, kinds, dt = "hang", f"over {timeout_s:g} s; {where}", (), time.time() - t_start
        elif result is None:
            outcome, detail, kinds, dt = "crash", f"child died (exit code {proc.exitcode})", (), time.time() - t_start
        else:
            outcome, detail, kinds, dt = result
        if outcome == "build_error":
            build_errors += 1
            if len(build_error_examples) < 5:
                build_error_examples.append({"seed": seed, "error": detail})
        else:
            counts[outcome] += 1
            case_times.append(dt)
            slowest.append((round(dt, 2), seed, list(kinds)))
            slowest.sort(reverse=True)
            del slowest[5:]
            if outcome in BAD:
                for k in kinds:
                    by_kind_bad[k] += 1
                if len(bad_cases) < 200:
                    bad_cases.append({"seed": seed, "base": bases[seed % len(bases)].name, "outcome": outcome,
                                      "kinds": list(kinds), "detail": detail[:600]})
        conn.close()
        shutil.rmtree(Path(tmp_root) / f"case{seed}", ignore_errors=True)
        (Path(tmp_root) / f"case{seed}.trace").unlink(missing_ok=True)
        done += 1

    def report() -> dict:
        times = sorted(case_times) or [0.0]
        return {
            "benchmark": "fuzz_loader" + (" (ctscreen analyze end to end)" if analyze else ""),
            "notice": "Research use only — not for diagnosis",
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "cases_run": sum(counts.values()),
            "cases_requested": n_cases,
            "build_errors": build_errors,
            "build_error_examples": build_error_examples,
            "seed_first": seed0,
            "bases": [f"{b.name}: {len(b.datasets)} slices" for b in bases],
            "mutation_kinds": len(dm.KINDS),
            "limits": {"timeout_s": timeout_s, "rlimit_as_gb": mem_gb},
            "counts": {k: counts.get(k, 0) for k in dm.OUTCOMES},
            "bad_by_kind": dict(by_kind_bad.most_common()),
            "case_s": {"median": round(times[len(times) // 2], 3), "p99": round(times[int(len(times) * 0.99)], 3),
                       "max": round(times[-1], 3)},
            "slowest_cases": [{"s": t, "seed": sd, "kinds": k} for t, sd, k in slowest],
            "reference_load_s": round(reference_s, 3),
            "slowest_case_vs_reference": round(times[-1] / reference_s, 1) if reference_s else None,
            "wall_s": round(time.time() - started, 1),
            "bad_cases": bad_cases,
        }

    try:
        while done < n_cases:
            while len(in_flight) < workers and next_seed < seed0 + n_cases:
                seed = next_seed
                next_seed += 1
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(child, bases[seed % len(bases)], seed, timeout_s,
                                                        int(mem_gb * 2 ** 30), tmp_root, analyze), daemon=True)
                proc.start()
                child.close()
                in_flight[seed] = (proc, parent, time.time())
            time.sleep(0.005)
            for seed, (proc, conn, t_start) in list(in_flight.items()):
                if not proc.is_alive() or conn.poll():
                    proc.join(5)
                    if proc.is_alive():
                        proc.kill()
                        proc.join()
                    finish(seed, proc, conn, t_start, killed=False)
                    del in_flight[seed]
                elif time.time() - t_start > timeout_s:
                    proc.kill()
                    proc.join()
                    finish(seed, proc, conn, t_start, killed=True)
                    del in_flight[seed]
            if progress and done // 100 > written // 100:
                written = done
                _write_atomic(progress, report())
    finally:
        for proc, conn, _ in in_flight.values():
            proc.kill()
        shutil.rmtree(tmp_root, ignore_errors=True)
    out = report()
    if progress:
        _write_atomic(progress, out)
    return out


def _write_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def replay(seed: int, n_slices: int) -> None:
    from ctscreen.io.dicom import scan_folder

    bases = _bases(n_slices)
    with tempfile.TemporaryDirectory() as td:
        case = dm.build_case(Path(td) / "series", bases[seed % len(bases)], seed)
        print("kinds:", case.kinds, "must_warn:", case.must_warn)
        scan = scan_folder(Path(td) / "series")
        print("scan:", [(s.key[-12:], s.slice_count, s.analysable_reason) for s in scan.series], scan.warnings)
        t = time.perf_counter()
        print("outcome:", dm.run_case(Path(td) / "series", case), f"{time.perf_counter() - t:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="first seed (case k uses seed + k)")
    ap.add_argument("--timeout-s", type=float, default=20.0)
    ap.add_argument("--mem-gb", type=float, default=4.0)
    ap.add_argument("--workers", type=int, default=1, help="cases run at the same time")
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--progress", help="rewrite a partial JSON result here every 100 cases")
    ap.add_argument("--replay", type=int, help="run one seed in this process and print what happened")
    ap.add_argument("--analyze", action="store_true",
                    help="run `ctscreen analyze` (shipped model, CPU) on each case instead of the loader alone")
    args = ap.parse_args()
    if args.replay is not None:
        replay(args.replay, args.slices)
        return
    print(json.dumps(run(args.cases, args.seed, args.timeout_s, args.mem_gb, args.workers, args.slices,
                         args.progress, args.analyze), indent=1))


if __name__ == "__main__":
    main()
