"""``ctscreen train``: train a lesion segmentation model on COVID-SemiSeg.

Recipe (the thesis's plan for small data):

1. *Pseudo-label pre-training* (first half of the budget): batches mix the
   1600 pseudo-labelled slices (lesion-vs-rest only) with the labelled
   training slices.
2. *Fine-tuning* (second half): labelled training slices only, with the
   ground-glass / consolidation labels.

Augmentation, on the training device: random flips and quarter turns (the
slices come in several orientations), a random affine (rotation +-20 deg,
scale 0.8-1.25, shift +-8 %, shear +-5 deg), and intensity changes (contrast
0.7-1.4, brightness +-0.1, gamma 0.7-1.5, Gaussian noise) so the model does
not depend on one rendering window.

Loss: binary cross-entropy + soft Dice on the lesion probability (GGO +
consolidation) for every slice, plus cross-entropy over the three classes for
slices that have class labels.

A validation split (``--val-fraction``, default 0.2, chosen by ``--seed``) of
the labelled slices is held out and scored with the ``ctscreen evaluate``
protocol. Ctrl-C stops cleanly and saves the weights so far.
"""

from __future__ import annotations

import json
import math
import re
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ctscreen import __version__
from ctscreen.inference import nets
from ctscreen.inference.data import SliceSet, load_labelled, load_pseudo
from ctscreen.inference.device import resolve_device
from ctscreen.inference.metrics import binary_scores, mean_scores
from ctscreen.inference.models import ARCH_LABELS, save_model
from ctscreen.inference.preprocess import HU_HIGH, HU_LOW, MODEL_SIZE


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        sha = out.stdout.strip()
        return sha if re.fullmatch(r"[0-9a-f]{40}", sha) else "unknown"
    except Exception:  # noqa: BLE001
        return "unknown"


# ---------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, y: torch.Tensor, mode: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch on its device.

    Parameters
    ----------
    x : (B, 1, S, S) float in [0, 1]
    y : (B, S, S) long, labels 0/1/2 (or 255 = ignore)
    mode : "full", "geometric" or "none"
    """
    if mode == "none":
        return x, y
    b = x.shape[0]
    dev = x.device

    def rnd(*shape):
        return torch.rand(*shape, generator=gen, device="cpu").to(dev)

    # flips and quarter turns, per sample, as part of the affine matrix
    k = (rnd(b) * 4).floor()
    ang = k * (math.pi / 2) + (rnd(b) * 2 - 1) * math.radians(20)
    scale = torch.exp((rnd(b) * 2 - 1) * math.log(1.25))
    shear = (rnd(b) * 2 - 1) * math.radians(5)
    fx = torch.where(rnd(b) < 0.5, -1.0, 1.0)
    tx, ty = (rnd(b) * 2 - 1) * 0.08, (rnd(b) * 2 - 1) * 0.08
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = cos * fx / scale
    theta[:, 0, 1] = (-sin + shear) / scale
    theta[:, 1, 0] = sin * fx / scale
    theta[:, 1, 1] = cos / scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    yf = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    y = yf[:, 0].long()
    if mode == "full":
        c = torch.exp((rnd(b, 1, 1, 1) * 2 - 1) * math.log(1.4))
        br = (rnd(b, 1, 1, 1) * 2 - 1) * 0.1
        m = x.mean(dim=(2, 3), keepdim=True)
        x = ((x - m) * c + m + br).clamp(0, 1)
        g = torch.exp((rnd(b, 1, 1, 1) * 2 - 1) * math.log(1.5))
        x = x.clamp_min(1e-6) ** g
        sigma = rnd(b, 1, 1, 1) * 0.03
        noise = torch.randn(x.shape, generator=gen, device="cpu").to(dev)
        x = (x + noise * sigma).clamp(0, 1)
    return x, y


# ---------------------------------------------------------------- loss
def seg_loss(logits: torch.Tensor, y: torch.Tensor, has_classes: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the lesion probability, plus 3-class CE where labelled."""
    logits = logits.float()
    logp = F.log_softmax(logits, dim=1)
    p = logp.exp()
    lesion_p = (p[:, 1] + p[:, 2]).clamp(1e-6, 1 - 1e-6)
    t = (y > 0).float()
    bce = F.binary_cross_entropy(lesion_p, t)
    inter = (lesion_p * t).sum(dim=(1, 2))
    denom = lesion_p.sum(dim=(1, 2)) + t.sum(dim=(1, 2))
    dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    loss = bce + dice
    if has_classes.any():
        ce = F.nll_loss(logp[has_classes], y[has_classes])
        loss = loss + 0.5 * ce
    return loss


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_lesion_prob(net: torch.nn.Module, images: np.ndarray, device: torch.device, tta: bool = True,
                        batch: int = 16) -> np.ndarray:
    """Lesion probability (n, S, S) for model-size inputs (n, S, S)."""
    net.eval()
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch, None]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            p = torch.softmax(net(x).float(), 1)
            if tta:
                pf = torch.softmax(net(torch.flip(x, dims=[2])).float(), 1)
                p = 0.5 * (p + torch.flip(pf, dims=[2]))
        out.append((p[:, 1] + p[:, 2]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, MODEL_SIZE, MODEL_SIZE), np.float32)


def score_set(net: torch.nn.Module, s: SliceSet, device: torch.device, tta: bool = True) -> dict[str, float]:
    """Mean Dice/IoU/sensitivity/specificity at each original mask's resolution, threshold 0.5."""
    import cv2

    if len(s) == 0:
        return {}
    prob = predict_lesion_prob(net, s.images, device, tta=tta)
    rows = []
    for p, (img, truth) in zip(prob, s.originals):
        up = cv2.resize(p, (truth.shape[1], truth.shape[0]), interpolation=cv2.INTER_LINEAR)
        rows.append(binary_scores(up >= 0.5, truth > 0))
    m = mean_scores(rows)
    m["images"] = len(rows)
    return m


# ---------------------------------------------------------------- training
class _Bar:
    def __init__(self, label: str, enabled: bool = True):
        self.label, self.enabled, self.t0 = label, enabled, time.time()

    def update(self, frac: float, text: str) -> None:
        if not self.enabled:
            return
        frac = min(max(frac, 0.0), 1.0)
        n = int(frac * 30)
        el = time.time() - self.t0
        eta = el / frac - el if frac > 0.01 else float("nan")
        sys.stderr.write(f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {frac * 100:5.1f}% {text} ETA {eta:5.0f}s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def train(data: Path, arch: str, out: Path, minutes: float | None = None, epochs: int | None = None,
          device: str = "auto", seed: int = 0, val_fraction: float = 0.2, use_pseudo: bool = True,
          aug: str = "full", batch_size: int | None = None, progress: bool = True,
          command: str = "") -> dict[str, Any]:
    """Train one model and write its weights and model card. Returns the card."""
    t_start = time.time()
    torch.manual_seed(seed)
    np.random.seed(seed)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    labelled = load_labelled(data)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labelled))
    n_val = int(round(len(labelled) * val_fraction))
    val = labelled.subset(sorted(order[:n_val]))
    tr = labelled.subset(sorted(order[n_val:]))
    pseudo = load_pseudo(data) if use_pseudo else SliceSet.empty()
    bs = batch_size or (32 if dev.type == "cuda" else 8)

    def to_t(s: SliceSet):
        y = np.where(s.has_classes[:, None, None], s.classes, s.lesion).astype(np.int64)
        return (torch.from_numpy(s.images[:, None]).to(dev), torch.from_numpy(y).to(dev),
                torch.from_numpy(s.has_classes).to(dev))

    tr_x, tr_y, tr_h = to_t(tr)
    ps_x, ps_y, ps_h = to_t(pseudo) if len(pseudo) else (None, None, None)

    net = nets.build(arch).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    pre_frac = 0.5 if ps_x is not None else 0.0
    steps_per_epoch = max(1, math.ceil(len(tr) / bs))
    total_steps = None if minutes else (epochs or 200) * steps_per_epoch * (2 if pre_frac else 1)
    budget_s = minutes * 60 if minutes else None
    bar = _Bar(f"train {arch}", progress)
    step, t0, interrupted = 0, time.time(), False
    last_loss: float | None = None

    def frac_done() -> float:
        if budget_s:
            return (time.time() - t0) / budget_s
        return step / total_steps

    try:
        while frac_done() < 1.0:
            f = frac_done()
            pretrain = f < pre_frac
            phase_f = f / pre_frac if pretrain else (f - pre_frac) / (1 - pre_frac)
            lr = (2e-3 if pretrain else 1e-3) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(phase_f, 1.0))))
            warm = min(1.0, (step + 1) / 50)
            for g in opt.param_groups:
                g["lr"] = lr * warm
            if pretrain:
                nl = max(1, bs // 4)
                i_l = torch.randint(0, len(tr), (nl,), generator=gen).to(dev)
                i_p = torch.randint(0, len(pseudo), (bs - nl,), generator=gen).to(dev)
                x = torch.cat([tr_x[i_l], ps_x[i_p]])
                y = torch.cat([tr_y[i_l], ps_y[i_p]])
                h = torch.cat([tr_h[i_l], ps_h[i_p]])
            else:
                i_l = torch.randint(0, len(tr), (bs,), generator=gen).to(dev)
                x, y, h = tr_x[i_l], tr_y[i_l], tr_h[i_l]
            x, y = augment(x, y, aug, gen)
            net.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = net(x.contiguous(memory_format=torch.channels_last))
            loss = seg_loss(logits, y, h)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 10 == 0:  # reading the loss synchronises the GPU: only now and then
                last_loss = float(loss.detach())
                bar.update(frac_done(), f"step {step} {'pre' if pretrain else 'fine'} loss {last_loss:.3f}")
    except KeyboardInterrupt:
        interrupted = True
    bar.close()
    train_s = time.time() - t0
    val_scores = score_set(net, val, dev) if len(val) else {}
    val_scores_no_tta = score_set(net, val, dev, tta=False) if len(val) else {}
    hw = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads)")
    card = {
        "name": out.stem,
        "architecture": ARCH_LABELS[arch],
        "arch": arch,
        "version": f"{arch}-{time.strftime('%Y%m%d')}-{git_commit()[:8]}",
        "ctscreen_version": __version__,
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "input_size": MODEL_SIZE,
        "intensity": f"HU window [{HU_LOW:.0f}, {HU_HIGH:.0f}] -> [0, 1] (ctscreen.inference.preprocess)",
        "classes": ["background", "ground-glass opacity", "consolidation"],
        "data": {
            "root": str(data),
            "labelled_train": tr.names,
            "labelled_val": val.names,
            "pseudo_slices": len(pseudo),
        },
        "recipe": {"pseudo_pretraining": bool(len(pseudo)), "augmentation": aug, "batch_size": bs,
                   "optimizer": "AdamW", "seed": seed, "val_fraction": val_fraction,
                   "minutes": minutes, "epochs": epochs, "steps": step},
        "command": command,
        "git_commit": git_commit(),
        "hardware": hw,
        "training_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "interrupted": interrupted,
        "validation": {"protocol": "threshold 0.5 at mask resolution, mean over images, flip TTA",
                       **val_scores},
        "validation_without_tta": val_scores_no_tta,
        "final_loss": last_loss,
    }
    save_model(net, arch, out, card)
    out.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return card


def run_train(args) -> int:
    out = Path(args.out)
    cmd = "ctscreen " + " ".join(sys.argv[1:]) if sys.argv and "ctscreen" in sys.argv[0] else " ".join(sys.argv)
    card = train(Path(args.data), args.arch, out, minutes=args.minutes, epochs=args.epochs, device=args.device,
                 seed=args.seed, val_fraction=args.val_fraction, use_pseudo=not args.no_pseudo, aug=args.aug,
                 command=cmd)
    v = card.get("validation", {})
    msg = f"wrote {out} ({card['parameters']} parameters, {card['training_seconds']} s on {card['hardware']})"
    if "dice" in v:
        msg += f"; validation Dice {v['dice']:.3f} sensitivity {v['sensitivity']:.3f} specificity {v['specificity']:.3f} on {v['images']} slices"
    if card["interrupted"]:
        msg += " (interrupted: weights so far saved)"
    print(msg)
    return 0
