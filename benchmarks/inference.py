"""Segmentation speed per slice, at the resolution the app uses.

Prints one JSON object. For each model and device: milliseconds per slice for
the app's path (``segment.segment_labels``: HU 512x512 slices -> crop/normalise/
resize (on the device for an accelerator) -> network with flip TTA -> lesion
channels back at the crop size, labels and float16 lesion probability copied
back at 512x512) and, as the reference measured in the same run, the bare
network forward on an already prepared batch without TTA; the ratio
app/reference shows what pre/post-processing and TTA cost. ``pre_post_ms_per_slice``
is the app's preparation and label restore alone (no network). Also the
projected time for a 150-slice series.

Usage: python benchmarks/inference.py [--devices cpu,cuda] [--models unet,deeplab] [--slices 32]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def bench(model_name: str, device: str, n_slices: int, batch: int) -> dict:
    from ctscreen.inference.models import load_model
    from ctscreen.inference.segment import labels_on_device, prepare_input, segment_labels

    t = time.perf_counter()
    model = load_model(model_name, device)
    load_s = time.perf_counter() - t
    dev = model.device
    rng = np.random.default_rng(0)
    # a synthetic thorax: body ellipse of soft tissue with two lungs of -850 HU
    yy, xx = np.mgrid[:512, :512]
    body = ((yy - 256) / 180) ** 2 + ((xx - 256) / 230) ** 2 < 1
    lungs = (((yy - 250) / 120) ** 2 + ((np.abs(xx - 256) - 100) / 70) ** 2) < 1
    sl = np.where(body, 40, -1000).astype(np.int16)
    sl[lungs] = -850
    hu = np.stack([sl + rng.integers(-20, 20, sl.shape, dtype=np.int16) for _ in range(n_slices)])
    box = (40, 472, 10, 502)
    segment_labels(model, hu[:batch], box)  # warm-up
    _sync(dev)
    t = time.perf_counter()
    for i in range(0, n_slices, batch):
        segment_labels(model, hu[i:i + batch], box)
    _sync(dev)
    app_ms = (time.perf_counter() - t) / n_slices * 1000
    probs = torch.softmax(torch.randn(batch, 3, model.input_size, model.input_size, device=dev), dim=1)
    labels_on_device(probs, box, hu.shape[-2:])
    _sync(dev)
    t = time.perf_counter()
    for i in range(0, n_slices, batch):
        prepare_input(model, hu[i:i + batch], box)
        labels_on_device(probs, box, hu.shape[-2:])
    _sync(dev)
    pre_post_ms = (time.perf_counter() - t) / n_slices * 1000
    x = prepare_input(model, hu[:batch], box)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
        model.net(x)
        _sync(dev)
        reps = max(1, n_slices // batch)
        t = time.perf_counter()
        for _ in range(reps):
            model.net(x)
        _sync(dev)
    ref_ms = (time.perf_counter() - t) / (reps * batch) * 1000
    return {"model": model_name, "device": str(dev),
            "hardware": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads",
            "input": "512x512 HU -> 256x256 network input", "batch": batch, "tta": True,
            "load_model_s": round(load_s, 3), "app_ms_per_slice": round(app_ms, 2),
            "pre_post_ms_per_slice": round(pre_post_ms, 2),
            "reference_bare_forward_ms_per_slice": round(ref_ms, 2),
            "ratio_app_to_reference": round(app_ms / ref_ms, 2),
            "projected_150_slices_s": round(app_ms * 150 / 1000, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", default="cpu" + (",cuda" if torch.cuda.is_available() else ""))
    ap.add_argument("--models", default="unet,deeplab")
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    for dev in args.devices.split(","):
        for m in args.models.split(","):
            out.append(bench(m, dev, args.slices if dev == "cpu" else max(args.slices, 256),
                             8 if dev == "cpu" else 32))
    print(json.dumps({"benchmark": "inference", "torch": torch.__version__, "cpu_threads": args.threads,
                      "results": out}, indent=2))


if __name__ == "__main__":
    main()
