"""Peak resident memory of ``ctscreen analyze`` on a thin-slice series, against a plain series load.

Prints one JSON object. A thin-slice series is built in a temporary directory
(never inside the repository; removed afterwards unless ``--keep``) from a
source series: every source slice is written ``--repeat-slices`` times at a
correspondingly smaller z step (3 copies of a 2 mm series: 0.667 mm), with a
fresh SeriesInstanceUID and SOPInstanceUIDs, explicit VR little endian,
uncompressed. Then, each in its own child process:

* ``ctscreen analyze TMP --out TMP_OUT --device cpu --png none --force`` (the
  command as a user runs it; Grad-CAM on the lesion slices, the default);
* the reference: only :func:`ctscreen.io.dicom.load_series` on the same
  folder, so figures from another machine or another series can be compared;
* the import floor: a child that only imports the analyze command's modules
  (torch included) and loads no data.

Peaks are each child's own ``ru_maxrss`` as :func:`os.wait4` reports it (the
child's peak RSS; a child that forks keeps only the largest of its process
tree's peaks, and ctscreen's workers are threads, so this is the whole peak).
MB is 2**20 bytes.

Usage::

    python benchmarks/memory.py [--repeat-slices N] [--source FOLDER] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DEFAULT_SOURCE = str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "covid-ct-md" / "P001")
MB = 2 ** 20

LOAD_ONLY = ("import sys\n"
             "from ctscreen.io.dicom import load_series\n"
             "v = load_series(sys.argv[1])\n"
             "print(v.hu.shape)\n")
IMPORTS_ONLY = "import ctscreen.cli.analyze, ctscreen.inference.pipeline, torch\n"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    return f"{value:.4f}"


def build_thin_series(source: str, dest: Path, repeat: int) -> dict:
    """Write every slice of ``source`` ``repeat`` times at a ``repeat``-times smaller z step.

    Returns the slice count, the rows and columns, and the source and new z steps in mm.
    """
    files = [p for p in sorted(Path(source).iterdir()) if p.is_file()]
    heads = []
    for p in files:
        try:
            h = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception:  # not DICOM
            continue
        if "ImagePositionPatient" in h:
            heads.append((float(h.ImagePositionPatient[2]), p))
    if len(heads) < 2:
        raise SystemExit(f"{source}: fewer than 2 DICOM slices with ImagePositionPatient")
    heads.sort()
    step = float(np.median(np.diff([z for z, _ in heads])))
    if step <= 0:
        raise SystemExit(f"{source}: slices share one z position; cannot build a thin-slice series")
    thin = step / repeat
    series_uid = generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    rows = cols = 0
    for z, p in heads:
        ds = pydicom.dcmread(p)
        ds.decompress()  # explicit VR little endian, uncompressed pixel data
        rows, cols = int(ds.Rows), int(ds.Columns)
        for j in range(repeat):
            zj = z + j * thin
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.InstanceNumber = n + 1
            ipp = list(ds.ImagePositionPatient)
            ds.ImagePositionPatient = [_ds(float(ipp[0])), _ds(float(ipp[1])), _ds(zj)]
            if "SliceLocation" in ds:
                ds.SliceLocation = _ds(zj)
            ds.SliceThickness = _ds(thin)
            if "SpacingBetweenSlices" in ds:
                ds.SpacingBetweenSlices = _ds(thin)
            ds.save_as(dest / f"thin_{n + 1:05d}.dcm", enforce_file_format=True)
            n += 1
        del ds
    return {"slices": n, "rows": rows, "columns": cols, "source_slices": len(heads),
            "source_step_mm": round(step, 4), "step_mm": round(thin, 4)}


def _ctscreen_command() -> list[str]:
    """The ``ctscreen`` entry point of this interpreter's environment (the venv need not be on PATH)."""
    beside = Path(sys.executable).with_name("ctscreen")
    if beside.is_file():
        return [str(beside)]
    exe = shutil.which("ctscreen")
    if exe:
        return [exe]
    return [sys.executable, "-c", "import sys; from ctscreen.cli import main; sys.exit(main(sys.argv[1:]))"]


def run_measured(argv: list[str], log: Path) -> dict:
    """Run ``argv`` as a child; its wall seconds, exit status and peak RSS (MB) from :func:`os.wait4`."""
    t = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    out = {"peak_mb": round(usage.ru_maxrss * 1024 / MB, 1), "wall_s": round(wall, 2),
           "returncode": proc.returncode}
    if proc.returncode != 0:
        out["log_tail"] = log.read_text(errors="replace")[-2000:]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat-slices", type=int, default=3, help="copies of each source slice (default 3)")
    p.add_argument("--source", default=DEFAULT_SOURCE, help=f"source series folder (default {DEFAULT_SOURCE})")
    p.add_argument("--keep", action="store_true", help="keep the temporary series and outputs (path printed)")
    a = p.parse_args(argv)
    if a.repeat_slices < 1:
        p.error("--repeat-slices must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="ctscreen-membench-"))
    try:
        t0 = time.perf_counter()
        series = tmp / "series"
        built = build_thin_series(a.source, series, a.repeat_slices)
        build_s = time.perf_counter() - t0
        volume_mb = built["slices"] * built["rows"] * built["columns"] * 2 / MB

        analyze_cmd = _ctscreen_command() + [
            "analyze", str(series), "--out", str(tmp / "out"), "--device", "cpu", "--png", "none", "--force"]
        analyze = run_measured(analyze_cmd, tmp / "analyze.log")
        load = run_measured([sys.executable, "-c", LOAD_ONLY, str(series)], tmp / "load.log")
        imports = run_measured([sys.executable, "-c", IMPORTS_ONLY], tmp / "imports.log")

        cam_slices = None
        rep = next((tmp / "out").rglob("report.json"), None) if (tmp / "out").is_dir() else None
        if rep is not None:
            cam_slices = len(json.loads(rep.read_text()).get("gradcam", {}).get("computed_slices", []))
        report = {
            "benchmark": "ctscreen analyze peak resident memory on a thin-slice series",
            "source": a.source,
            "repeat_slices": a.repeat_slices,
            "series": built,
            "slices": built["slices"],
            "cam_slices": cam_slices,
            "volume_int16_mb": round(volume_mb, 1),
            "analyze_peak_mb": analyze["peak_mb"],
            "load_only_peak_mb": load["peak_mb"],
            "imports_only_peak_mb": imports["peak_mb"],
            "ratio_analyze_to_volume": round(analyze["peak_mb"] / volume_mb, 2),
            "ratio_analyze_to_load": round(analyze["peak_mb"] / load["peak_mb"], 2),
            "ratio_analyze_above_imports_to_volume": round((analyze["peak_mb"] - imports["peak_mb"]) / volume_mb, 2),
            "wall_s": {"build_series": round(build_s, 1), "analyze": analyze["wall_s"], "load_only": load["wall_s"],
                       "total": round(time.perf_counter() - t0, 1)},
            "command": " ".join(analyze_cmd),
            "units": {"mb": "2**20 bytes", "peak": "ru_maxrss of the child from os.wait4"},
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
        }
        failed = {k: r for k, r in (("analyze", analyze), ("load_only", load), ("imports_only", imports))
                  if r["returncode"] != 0}
        if failed:
            report["failed"] = failed
        if a.keep:
            report["kept"] = str(tmp)
        print(json.dumps(report, indent=1))
        return 1 if failed else 0
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
