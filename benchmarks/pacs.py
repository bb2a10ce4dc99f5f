"""Retrieval speed from a local Orthanc: WADO-RS, C-GET and C-MOVE, and a resumed (no-op) retrieval.

Prints one JSON object. An Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``) is
started on free localhost ports with temporary storage (``tests/orthanc_server.py``), the
series is uploaded through its REST API, then retrieved ``--repeat`` times into a fresh cache
by each method. The reference measured in the same run is a plain copy of the same files
(read + atomic write, no network), so the ratios say what the protocol costs on top of
writing the cache. The last row is a second retrieval into the filled cache: the time to find
that nothing is missing (the resume path). Localhost only: real network time is not in it.

Usage::

    python benchmarks/pacs.py [FOLDER] [--repeat N]      # default FOLDER: ../shared/data/dicom/covid-ct-md/P001
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from orthanc_server import AET, PASSWORD, USER, OrthancServer, available  # noqa: E402

from ctscreen.io.files import atomic_write, fsync_dir  # noqa: E402
from ctscreen.io.pacs import ServerConfig, StudyQuery, connect, run_retrieve  # noqa: E402


def _copy(files: list[Path], out: Path) -> None:
    out.mkdir(parents=True)
    for f in files:
        atomic_write(out / f.name, f.read_bytes(), sync_dir=False)
    fsync_dir(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(ROOT.parent / "shared/data/dicom/covid-ct-md/P001"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    why = available()
    if why:
        print(json.dumps({"error": why}))
        return 1
    files = sorted(f for f in Path(args.folder).iterdir() if f.is_file())
    size_mb = sum(f.stat().st_size for f in files) / 1e6
    work = Path(tempfile.mkdtemp(prefix="ctscreen-pacs-bench-"))
    server = OrthancServer(work / "orthanc").start()
    try:
        server.upload(files)
        web = ServerConfig(name="web", url=server.url, auth="basic", username=USER, secret=PASSWORD, timeout_s=30)
        get = ServerConfig(name="get", protocol="dimse", host="127.0.0.1", port=server.dicom_port, called_ae=AET,
                           timeout_s=30)
        move = ServerConfig(name="move", protocol="dimse", host="127.0.0.1", port=server.dicom_port, called_ae=AET,
                            retrieve="move", move_port=server.move_port, timeout_s=30)
        with connect(web) as pacs:
            study = pacs.find_studies(StudyQuery())[0]
            series = [s for s in pacs.find_series(study.study_instance_uid) if s.modality == "CT"][0]
        rows: dict[str, list[float]] = {"copy (reference)": [], "WADO-RS": [], "C-GET": [], "C-MOVE": []}
        resume: dict[str, float] = {}
        for r in range(args.repeat):
            t0 = time.perf_counter()
            _copy(files, work / f"copy{r}")
            rows["copy (reference)"].append(time.perf_counter() - t0)
            for label, cfg in (("WADO-RS", web), ("C-GET", get), ("C-MOVE", move)):
                cache = work / f"{label}{r}"
                with connect(cfg) as pacs:
                    t0 = time.perf_counter()
                    result = run_retrieve(pacs.retrieve_series(series.study_instance_uid,
                                                               series.series_instance_uid, str(cache)))
                    rows[label].append(time.perf_counter() - t0)
                    assert result.written == len(files), (label, result.written)
                    if r == 0:
                        t0 = time.perf_counter()
                        again = run_retrieve(pacs.retrieve_series(series.study_instance_uid,
                                                                  series.series_instance_uid, str(cache)))
                        resume[label] = time.perf_counter() - t0
                        assert again.written == 0 and again.skipped == len(files)
                shutil.rmtree(cache, ignore_errors=True)
            shutil.rmtree(work / f"copy{r}", ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    ref = statistics.median(rows["copy (reference)"])
    out = {
        "benchmark": "pacs_retrieve",
        "series": {"folder": str(args.folder), "instances": len(files), "size_mb": round(size_mb, 1)},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "repeat": args.repeat,
        "methods": {
            label: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3),
                    "mb_per_s": round(size_mb / statistics.median(v), 1),
                    "ratio_to_copy": round(statistics.median(v) / ref, 2)}
            for label, v in rows.items()
        },
        "resume_noop_s": {k: round(v, 3) for k, v in resume.items()},
        "notes": "localhost Orthanc 1.10 (Debian); files kept in their stored transfer syntax (JPEG Lossless); "
                 "the resume row re-lists the series and re-checks every cached file",
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
