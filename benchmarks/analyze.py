"""End-to-end time of ``ctscreen analyze`` per stage, on the CPU and (where there is one) the GPU.

Prints one JSON object. For each device: wall time of the whole command as a
user runs it (scan + model + load + lung mask + segmentation + Grad-CAM +
measurements + export), split by stage, slices, ms per slice, the projection to
150 slices against the 60 s target for the CPU, and the on-demand Grad-CAM
latency of one slice (the viewer's path, target 0.3 s on the CPU). Two
references are measured in the same run: the plain series load
(:func:`ctscreen.io.dicom.load_series`), with every stage's ratio to it, and,
with ``--previous REV`` (default :data:`PREVIOUS_RELEASE`), the **previous
release** - that commit's own code, exported with ``git archive`` and run in a child
process, interleaved with the current code (previous, current, previous, ...) so a
busy machine slows both alike - with every stage's ratio current / previous.

Usage::

    python benchmarks/analyze.py FOLDER [--device cpu|cuda|all] [--model unet|deeplab|FILE]
                                 [--cam none|lesions|all] [--repeat N] [--threads N] [--batch-size N]
                                 [--previous REV|none]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the command sets it (ctscreen.cli.analyze)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctscreen.cli import _parser  # noqa: E402
from ctscreen.cli.analyze import analyze_folder  # noqa: E402

STAGES = ("scan", "model", "load", "lung_mask", "segmentation", "postprocess", "gradcam", "measurements", "screening",
          "export")
#: The last commit before issue 9 (one TTA view on the CPU, HiResCAM at decoder1, 3-D clean-up, NHWC weights).
PREVIOUS_RELEASE = "cd73bdb"
TARGET_CPU_150_S_ISSUE9 = 15.0
TARGET_CPU_150_S = 60.0
TARGET_CAM_SLICE_S = 0.3


def _sync(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_load_s(folder: str, repeat: int = 2) -> float:
    """Best of ``repeat`` plain loads of the series (the reference)."""
    from ctscreen.io.dicom import load_series

    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        load_series(folder)
        best = min(best, time.perf_counter() - t)
    return best


def cam_slice_latency(run, device: str, model_arg: str | None, repeat: int = 5) -> dict:
    """Seconds for :func:`gradcam_slice` on the slice with the most lesion (best of ``repeat``)."""
    from ctscreen.inference.gradcam import gradcam_slice
    from ctscreen.inference.models import load_model
    from ctscreen.inference.segment import thorax_box

    result = run.result
    les = result.lesion.reshape(result.lesion.shape[0], -1).sum(axis=1)
    k = int(np.argmax(les)) if les.any() else result.lesion.shape[0] // 2
    model = load_model(model_arg, device)
    hu = result.volume.hu
    box = thorax_box(hu)
    gradcam_slice(model, hu[k], box, result.lung[k])  # warm-up
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        gradcam_slice(model, hu[k], box, result.lung[k])
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"slice_index": k, "layer": model.default_cam_layer, "best_s": round(min(times), 4),
            "median_s": round(float(np.median(times)), 4), "repeats": repeat,
            "target_s": TARGET_CAM_SLICE_S if device == "cpu" else None}



def bench_device(folder: str, device: str, model: str | None, cam: str, repeat: int, ref_s: float,
                 batch_size: int = 0) -> dict:
    runs = []
    last = None
    for i in range(repeat):
        with tempfile.TemporaryDirectory(prefix="ctscreen-bench-") as out:
            argv = ["analyze", folder, "--out", out, "--device", device, "--cam", cam, "--force"]
            if model:
                argv += ["--model", model]
            args = _parser().parse_args(argv)
            args.batch_size = batch_size  # not a CLI option; 0 = the command's default
            _sync(device)
            t = time.perf_counter()
            run = analyze_folder(args, show_progress=False)
            _sync(device)
            wall = time.perf_counter() - t
        timings = dict(run.result.timings_s)
        staged = sum(timings.get(s, 0.0) for s in STAGES)
        timings["scan"] = max(0.0, wall - staged)  # folder scan, series pick, progress: the rest of the command
        runs.append({"total_s": round(wall, 3), "stages_s": {s: round(timings.get(s, 0.0), 3) for s in STAGES}})
        last = run
    best = min(runs, key=lambda r: r["total_s"])
    n = int(last.result.lesion.shape[0])
    lesion_slices = int(np.count_nonzero(last.result.lesion.reshape(n, -1).any(axis=1)))
    out = {
        "device": last.result.device,
        "model": f"{last.result.model_name} {last.result.model_version}",
        "slices": n,
        "lesion_slices": lesion_slices,
        "cam_slices": len(last.result.cam),
        "total_s": best["total_s"],
        "runs_total_s": [r["total_s"] for r in runs],
        "ms_per_slice": round(1000 * best["total_s"] / n, 1),
        "stages_s": best["stages_s"],
        "stages_ms_per_slice": {s: round(1000 * v / n, 1) for s, v in best["stages_s"].items()},
        "ratio_to_reference_load": {s: round(v / ref_s, 2) for s, v in best["stages_s"].items()}
        | {"total": round(best["total_s"] / ref_s, 2)},
        "projected_150_slices_s": round(best["total_s"] * 150 / n, 1),
        "warnings": list(last.result.warnings),
    }
    from ctscreen.inference.pipeline import FUSED_CAM_DEVICES

    if device in FUSED_CAM_DEVICES:
        out["note"] = ("Grad-CAM reuses the segmentation's forward pass here: 'segmentation' holds that pass, "
                       "'gradcam' only the backward pass and the maps")
    if device == "cpu":
        out["target_150_slices_s"] = TARGET_CPU_150_S
        out["meets_target"] = out["projected_150_slices_s"] <= TARGET_CPU_150_S
    out["gradcam_one_slice"] = cam_slice_latency(last, device, model)
    return out


_CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch
if int(sys.argv[5]):
    torch.set_num_threads(int(sys.argv[5]))
from ctscreen.cli import _parser
from ctscreen.cli.analyze import analyze_folder
with tempfile.TemporaryDirectory(prefix="ctscreen-bench-") as out:
    argv = ["analyze", sys.argv[2], "--out", out, "--device", sys.argv[3], "--cam", sys.argv[4], "--force"]
    args = _parser().parse_args(argv)
    t = time.perf_counter()
    run = analyze_folder(args, show_progress=False)
    wall = time.perf_counter() - t
import numpy as np
r = run.result
print(json.dumps({"total_s": wall, "timings_s": dict(r.timings_s), "code": sys.argv[1],
                  "cam_layer": r.cam_layer, "cam_method": getattr(r, "cam_method", ""),
                  "lesion_ml": float(r.measurements.lesion_volume_ml),
                  "lesion_slices": int(np.count_nonzero(r.lesion.reshape(r.lesion.shape[0], -1).any(axis=1)))}))
"""


def _export_commit(rev: str, dest: Path) -> Path:
    """``git archive`` of ``rev`` into ``dest`` (the weights come with it)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def _child_run(code_root: Path, folder: str, device: str, cam: str, threads: int) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _CHILD, str(code_root), folder, device, cam, str(threads)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"analyze run of {code_root} failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    staged = sum(out["timings_s"].get(s, 0.0) for s in STAGES)
    out["timings_s"]["scan"] = max(0.0, out["total_s"] - staged)
    return out


def compare_previous(folder: str, rev: str, device: str, cam: str, repeat: int, threads: int) -> dict:
    """Previous release vs current code, interleaved, best of ``repeat`` each; ratios current / previous."""
    current = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="ctscreen-prev-") as tmp:
        prev_root = _export_commit(rev, Path(tmp))
        # the shared data is found beside the repository: give the exported copy the same neighbour
        runs: dict[str, list[dict]] = {"previous": [], "current": []}
        for _ in range(max(1, repeat)):
            runs["previous"].append(_child_run(prev_root, folder, device, cam, threads))
            runs["current"].append(_child_run(current, folder, device, cam, threads))
    best = {k: min(v, key=lambda r: r["total_s"]) for k, v in runs.items()}
    stages = {k: {s: round(best[k]["timings_s"].get(s, 0.0), 3) for s in STAGES} for k in best}
    ratio = {s: (round(stages["current"][s] / stages["previous"][s], 3) if stages["previous"][s] > 0 else None)
             for s in STAGES}
    ratio["total"] = round(best["current"]["total_s"] / best["previous"]["total_s"], 3)
    return {
        "previous_release": rev,
        "runs_total_s": {k: [round(r["total_s"], 2) for r in v] for k, v in runs.items()},
        "total_s": {k: round(best[k]["total_s"], 2) for k in best},
        "stages_s": stages,
        "ratio_current_to_previous": ratio,
        "speed_up": round(best["previous"]["total_s"] / best["current"]["total_s"], 2),
        "grad_cam": {k: f"{best[k]['cam_method'] or 'seg-gradcam'} @ {best[k]['cam_layer']}" for k in best},
        "lesion_ml": {k: round(best[k]["lesion_ml"], 2) for k in best},
        "lesion_slices": {k: best[k]["lesion_slices"] for k in best},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--device", default="all", help="cpu|cuda|all (all: the CPU, and CUDA when available)")
    p.add_argument("--model", default=None, help="unet|deeplab|FILE (default: the shipped default)")
    p.add_argument("--cam", default="lesions", choices=("none", "lesions", "all"))
    p.add_argument("--repeat", type=int, default=1, help="runs per device; the fastest is reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=0, help="slices per forward pass (0: the command's default)")
    p.add_argument("--previous", default=PREVIOUS_RELEASE,
                   help="git revision of the previous release to compare with, in child processes ('none': skip)")
    p.add_argument("--only-previous", action="store_true",
                   help="only the previous-release comparison (skip the in-process runs and the one-slice latency)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    devices = ["cpu", "cuda"] if a.device == "all" else [a.device]
    if a.device == "all" and not torch.cuda.is_available():
        devices = ["cpu"]
    ref_s = reference_load_s(a.folder)
    report = {
        "benchmark": "ctscreen analyze end to end",
        "folder": a.folder,
        "cam": a.cam,
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "reference": {"what": "plain load_series of the same folder, best of 2", "seconds": round(ref_s, 3)},
        "devices": {},
    }
    if a.previous != "none":
        report["previous_release"] = {dev: compare_previous(a.folder, a.previous, dev, a.cam, max(1, a.repeat),
                                                            a.threads) for dev in devices}
        for dev, cmp in report["previous_release"].items():
            n = None
            if dev == "cpu":
                from ctscreen.io.dicom import scan_folder

                n = max(s.slice_count for s in scan_folder(a.folder).series)
                cmp["projected_150_slices_s"] = {k: round(v * 150 / n, 1) for k, v in cmp["total_s"].items()}
                cmp["target_150_slices_s"] = TARGET_CPU_150_S_ISSUE9
    if a.only_previous:
        print(json.dumps(report, indent=1))
        return 0
    for dev in devices:
        report["devices"][dev] = bench_device(a.folder, dev, a.model, a.cam, max(1, a.repeat), ref_s, a.batch_size)
    if "cpu" in report["devices"] and "cuda" in report["devices"]:
        report["cpu_over_gpu"] = round(report["devices"]["cpu"]["total_s"] / report["devices"]["cuda"]["total_s"], 2)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
