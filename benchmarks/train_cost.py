"""What one training step costs on this machine, and what the shipped recipes would take here.

Prints one JSON object: seconds per optimizer step (forward + backward + AdamW, random
input, after a warm-up step) for the segmentation UNet (256 px, batch 32, 3 classes, as
``ctscreen train``) and the screening classifier (192 px, batch 32, as
``ctscreen train-classifier``), the ratio between them, and the projected wall time of the
shipped segmentation recipe (1,772 steps of batch 32, 4 minutes on one H200; see
``ctscreen/resources/models/unet.md``) at the measured rate.

Usage::

    python benchmarks/train_cost.py [--threads 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ctscreen.inference import classifier as C  # noqa: E402
from ctscreen.inference.nets import UNet  # noqa: E402

SHIPPED_UNET_STEPS = 1772


def step_seconds(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    net.train()
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up the allocator and oneDNN
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    seg = step_seconds(UNet().to(memory_format=torch.channels_last),
                       torch.rand(32, 1, 256, 256).contiguous(memory_format=torch.channels_last),
                       torch.randint(0, 3, (32, 256, 256)), args.steps)
    clf = step_seconds(C.SliceClassifier(), torch.rand(32, 1, 192, 192), torch.randint(0, 2, (32,)), args.steps)
    print(json.dumps({
        "device": "cpu", "threads": args.threads, "load_average_1min": round(os.getloadavg()[0], 2),
        "segmentation_unet_step_s": round(seg, 3), "classifier_step_s": round(clf, 3),
        "ratio_segmentation_to_classifier": round(seg / clf, 2),
        "shipped_unet_recipe_steps": SHIPPED_UNET_STEPS,
        "shipped_unet_recipe_hours_here": round(seg * SHIPPED_UNET_STEPS / 3600.0, 2),
        "shipped_unet_recipe_minutes_on_h200": 4.0,
    }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
