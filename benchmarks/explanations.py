"""Do the activation maps point at the lesions? Layers x methods, on real CT and on labelled slices.

Research use, not for diagnosis. Prints one JSON object.

For every candidate layer (``decoder4`` .. ``decoder1``, ``bottleneck``) and map method
(Grad-CAM, HiResCAM, Grad-CAM++; each either restricted to the predicted lesion region -
Seg-Grad-CAM, ``seg-`` - or over the lesion logits of the whole slice), on two sets:

* **P001** (the shared COVID-CT-MD series, real DICOM through the app's own pipeline):
  the slices the radiologists labelled infected (``P001.labels.csv``) on which the app
  predicts a lesion. There are no pixel labels, so **the reference region is the
  predicted lesion mask** (the analysis' final labels): the pointing game then asks
  whether the map peaks on what the app marks, not on the truth.
* **COVID-SemiSeg** ``train/`` slices with radiologists' pixel masks: the 10 slices the
  validation runs held out (``docs/training-runs/r2_unet_np_val_s1.json``, split seed 1)
  and all 50. **The shipped weights were trained on all 50** (model card), so these
  measure the maps where the network is right, not generalisation. The images are 8-bit
  lung-window renderings without HU; the lung mask is a plain threshold of the
  intensity back-projected to HU (< -500), outside air removed, closed and filled, united
  with the lesion mask. Their pixel size is unknown: 5 mm is taken as 7 px (0.7 mm pixels).

Metrics per set (means over slices):

* ``in_lung_mass``: share of the map's total mass (plain sum) inside the lung;
* ``flagged``: share of slices the app flags (salient part mostly outside the lung,
  :func:`ctscreen.inference.gradcam.outside_fraction` > 0.5);
* ``pointing``: share of slices whose map maximum lies in the reference lesion dilated by 5 mm;
* ``deletion_win``: share of slices where replacing the top-10 % map pixels of the network
  input by normal lung (-900 HU) lowers the mean lesion log-odds over the reference region
  more than replacing as many random pixels (mean of 3 draws); ``deletion_drop`` /
  ``random_drop``: the mean drops themselves. The deletion test costs a forward pass per
  configuration and slice, so it runs for a short list: the reference and the
  ``--shortlist`` configurations with the best in-lung mass + pointing - flagged on P001.

The reference measured in the same run is the previous default (``seg-gradcam`` at
``decoder4``); every row has its ratio to it.

Usage: python benchmarks/explanations.py [--model unet|FILE] [--p001-every N] [--semiseg all|val|none]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctscreen.inference.gradcam import (  # noqa: E402
    CAM_METHODS, LESION_CHANNELS, _first_tensor, _frozen_parameters, _net, cam_from_activations, outside_fraction,
    region_to_input, target_region)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
P001 = SHARED / "dicom" / "covid-ct-md" / "P001"
SEMISEG = SHARED / "covid-semiseg"
VAL_RUN = Path(__file__).resolve().parents[1] / "docs" / "training-runs" / "r2_unet_np_val_s1.json"
REFERENCE = ("decoder4", "seg-gradcam")
NORMAL_LUNG_HU = -900.0
TOP_FRACTION = 0.10
RANDOM_DRAWS = 3


def record_all(model, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass with every candidate layer's output kept for autograd.

    The earliest candidate (``bottleneck``) is made a leaf, so the encoder runs as plain
    inference and one backward pass gives the gradients at all candidates.
    """
    layers = dict(model.cam_layers())
    acts: dict[str, torch.Tensor] = {}
    handles = []
    first = "bottleneck"

    def hook_for(name):
        def hook(_m, _i, out):
            if name == first:
                leaf = out.detach().requires_grad_(True)
                acts[name] = leaf
                return leaf * 1.0
            acts[name] = out
            return None
        return hook

    for name, mod in layers.items():
        handles.append(mod.register_forward_hook(hook_for(name)))
    try:
        with torch.enable_grad(), _frozen_parameters(_net(model)):
            logits = _first_tensor(_net(model)(x))
    finally:
        for h in handles:
            h.remove()
    return logits, acts


def lesion_log_odds(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean lesion log-odds ``log(p_ggo + p_cons) - log(p_background)`` over ``weights``, per slice."""
    logp = torch.log_softmax(logits.float(), dim=1)
    lesion = torch.logsumexp(logp[:, list(LESION_CHANNELS)], dim=1, keepdim=True)
    odds = lesion - logp[:, :1]
    return (odds * weights).flatten(1).sum(1) / weights.flatten(1).sum(1).clamp_min(1e-6)


def dilate(mask: np.ndarray, radius_px: float) -> np.ndarray:
    r = max(1, int(round(radius_px)))
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


def slice_metrics(maps: np.ndarray, lung: np.ndarray, lesion_dil: np.ndarray) -> dict[str, np.ndarray]:
    n = len(maps)
    flat = maps.reshape(n, -1)
    total = flat.sum(1)
    inside = np.where(lung.reshape(n, -1) > 0, flat, 0).sum(1)
    peak = flat.argmax(1)
    hit = lesion_dil.reshape(n, -1)[np.arange(n), peak] & (total > 0)
    return {"in_lung_mass": np.where(total > 0, inside / np.where(total > 0, total, 1), 0.0),
            "flagged": outside_fraction(maps.copy(), lung) > 0.5,
            "pointing": hit}


def evaluate_batch(model, x: torch.Tensor, region_in: torch.Tensor, to_slice, lung: np.ndarray,
                   lesion_dil: np.ndarray, acc: dict, keep: list) -> None:
    """All layers x methods for one batch: the cheap metrics now, the deletion inputs for later.

    Appends per-slice values to ``acc[(layer, method)]``; ``keep`` gets ``(x, region_in, top_k)``
    with each configuration's top-10 % input pixels, for :func:`deletion_pass`.
    """
    logits, acts = record_all(model, x)
    names = list(acts)
    n = x.shape[0]
    k = int(TOP_FRACTION * x[0, 0].numel())
    grads = {}
    for restrict in (True, False):
        w = region_in if restrict else torch.ones_like(region_in)
        target = (logits[:, list(LESION_CHANNELS)] * w).sum()
        g = torch.autograd.grad(target, [acts[nm] for nm in names], retain_graph=restrict)
        grads[restrict] = dict(zip(names, g))
    tops = {}
    for layer in names:
        A = acts[layer].detach()
        for method, (kind, restrict) in CAM_METHODS.items():
            with torch.no_grad():
                cam = cam_from_activations(A, grads[restrict][layer], kind)
                cam_in = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
                tops[(layer, method)] = cam_in.flatten(1).topk(k, dim=1).indices
            maps = to_slice(cam_in)
            peak = maps.reshape(n, -1).max(1)
            maps = maps / np.where(peak > 0, peak, 1)[:, None, None]
            m = slice_metrics(maps, lung, lesion_dil)
            d = acc.setdefault((layer, method), {"in_lung_mass": [], "flagged": [], "pointing": []})
            for key in ("in_lung_mass", "flagged", "pointing"):
                d[key].extend(m[key].tolist())
    keep.append((x.detach(), region_in.detach(), tops))


def deletion_pass(model, keep: list, configs: list, acc: dict, rng: np.random.Generator) -> None:
    """Deletion test for ``configs``: top-10 % map pixels vs as many random pixels -> normal lung."""
    removed_value = float((NORMAL_LUNG_HU + 1080.0) / 1335.0)
    with torch.no_grad():
        for x, region_in, tops in keep:
            n = x.shape[0]
            base = lesion_log_odds(model.net(x), region_in)
            k = next(iter(tops.values())).shape[1]
            rand_drop = torch.zeros(n)
            for _ in range(RANDOM_DRAWS):
                xr = x.clone().flatten(1)
                for i in range(n):
                    xr[i, torch.from_numpy(rng.choice(xr.shape[1], k, replace=False))] = removed_value
                rand_drop += base - lesion_log_odds(model.net(xr.view_as(x)), region_in)
            rand_drop /= RANDOM_DRAWS
            for cfg in configs:
                xd = x.clone().flatten(1)
                xd.scatter_(1, tops[cfg], removed_value)
                drop = base - lesion_log_odds(model.net(xd.view_as(x)), region_in)
                d = acc[cfg]
                d.setdefault("deletion_win", []).extend((drop > rand_drop).tolist())
                d.setdefault("deletion_drop", []).extend(drop.tolist())
                d.setdefault("random_drop", []).extend(rand_drop.tolist())


def shortlist(acc: dict, size: int) -> list:
    """The reference and the ``size`` configurations with the best in-lung mass + pointing + (1 - flagged)."""
    score = {cfg: np.mean(d["in_lung_mass"]) + np.mean(d["pointing"]) - np.mean(d["flagged"])
             for cfg, d in acc.items()}
    best = sorted(score, key=score.get, reverse=True)[:size]
    return list(dict.fromkeys([REFERENCE, *best]))


def p001_set(model, every: int, batch: int = 6) -> tuple[dict, dict, list]:
    from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis
    from ctscreen.io.dicom import load_series

    vol = load_series(P001)
    res = run_analysis(vol, AnalyzeOptions(model=model, cam="none", tta=1))  # the CPU default since issue 9
    with open(P001.parent / "P001.labels.csv", newline="") as fh:
        lab = {r["sop_instance_uid"]: int(r["infection"]) for r in csv.DictReader(fh)}
    infected = [k for k, u in enumerate(vol.sop_instance_uids) if lab.get(u) == 1]
    with_lesion = [k for k in infected if res.lesion[k].any()]
    chosen = with_lesion[::max(1, every)]
    box = tuple(res.thorax_box)
    hu = np.asarray(vol.hu)
    px_mm = float(vol.spacing_mm[1])
    acc: dict = {}
    keep: list = []
    from ctscreen.inference.segment import prepare_input

    for s in range(0, len(chosen), batch):
        idx = chosen[s:s + batch]
        x = prepare_input(model, hu[idx], box)
        region_in = region_to_input(res.lesion[idx], box, tuple(x.shape[-2:]))

        def to_slice(cam_in, _idx=idx):
            return model.restore(cam_in, box, hu.shape[-2:])[:, 0]

        dil = np.stack([dilate(res.lesion[k] > 0, 5.0 / px_mm) for k in idx])
        evaluate_batch(model, x, region_in, to_slice, res.lung[idx], dil, acc, keep)
    info = {"series": "COVID-CT-MD P001", "infected_slices": len(infected),
            "infected_with_predicted_lesion": len(with_lesion), "slices_used": len(chosen),
            "reference_region": "predicted lesion mask (no pixel labels)", "pixel_mm": round(px_mm, 3)}
    return info, acc, keep


def semiseg_lung(img: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    hu = img.astype(np.float32) / 255.0 * 1335.0 - 1080.0
    dark = (hu < -500).astype(np.uint8)
    n, lab = cv2.connectedComponents(dark)
    border = set(np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])).tolist())
    keep = np.zeros_like(dark)
    for c in range(1, n):
        comp = lab == c
        if c not in border and comp.sum() > 0.005 * dark.size:
            keep[comp] = 1
    keep = cv2.morphologyEx(keep, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15)))
    cnts, _ = cv2.findContours(keep, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(keep)
    cv2.drawContours(filled, cnts, -1, 1, thickness=-1)
    return ((filled > 0) | (lesion > 0)).astype(np.uint8)


def semiseg_set(model, names: list[str], batch: int = 6) -> tuple[dict, dict, list]:
    from ctscreen.inference.data import read_gray, read_mask
    from ctscreen.inference.preprocess import image_to_model_input

    acc: dict = {}
    keep: list = []
    used = 0
    for s in range(0, len(names), batch):
        group = names[s:s + batch]
        imgs = [read_gray(SEMISEG / "train" / "Imgs" / f"{n}.jpg") for n in group]
        masks = [read_mask(SEMISEG / "train" / "GT" / f"{n}.png") > 0 for n in group]
        todo = [i for i, m in enumerate(masks) if m.any()]
        if not todo:
            continue
        # one shape per batch: each slice is resized back to its own size, so go one by one within the group
        for i in todo:
            img, m = imgs[i], masks[i]
            x = torch.from_numpy(image_to_model_input(img, int(model.input_size))[None]).to(model.device)
            with torch.no_grad():
                pred_region = target_region(model.net(x))

            def to_slice(cam_in, _shape=img.shape):
                return F.interpolate(cam_in, size=_shape, mode="bilinear", align_corners=False)[:, 0].numpy()

            gt_in = F.interpolate(torch.from_numpy(m[None, None].astype(np.float32)), size=x.shape[-2:],
                                  mode="area")
            region_in = gt_in if float(gt_in.sum()) > 0 else pred_region
            del pred_region
            lung = semiseg_lung(img, m)[None]
            evaluate_batch(model, x, region_in, to_slice, lung, dilate(m, 7)[None], acc, keep)
            used += 1
    return {"slices_used": used, "reference_region": "radiologists' lesion mask (deletion target too)"}, acc, keep


def summarise(acc: dict) -> dict:
    out = {}
    ref = None
    for (layer, method), d in acc.items():
        row = {k: round(float(np.mean(v)), 3) for k, v in d.items()}
        out[f"{layer}/{method}"] = row
        if (layer, method) == REFERENCE:
            ref = row
    if ref:
        for row in out.values():
            row["ratio_to_reference"] = {k: (round(row[k] / ref[k], 2) if ref.get(k) else None)
                                         for k in ("in_lung_mass", "pointing", "deletion_win") if k in row}
    return out


def pick(p001: dict, semiseg: dict) -> dict:
    """The configuration meeting the targets on P001 with the best mean of the other figures."""
    rows = []
    for key, r in p001.items():
        s = semiseg.get(key, {})
        ok = r["in_lung_mass"] >= 0.70 and r["pointing"] >= 0.90 and r["flagged"] <= 0.10
        if "deletion_win" not in r:
            continue  # not short-listed: no deletion test
        score = np.mean([r["in_lung_mass"], r["pointing"], r["deletion_win"],
                         s.get("pointing", 0.0), s.get("in_lung_mass", 0.0), s.get("deletion_win", 0.0)])
        rows.append((ok, round(float(score), 4), key))
    rows.sort(reverse=True)
    return {"winner": rows[0][2], "meets_p001_targets": rows[0][0], "score": rows[0][1],
            "ranking": [{"config": k, "meets_p001_targets": ok, "score": sc} for ok, sc, k in rows[:10]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--p001-every", type=int, default=2, help="use every N-th P001 lesion slice (1: all)")
    ap.add_argument("--semiseg", default="all", choices=("all", "val", "none"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shortlist", type=int, default=6,
                    help="configurations (besides the reference) that get the deletion test, best on P001 first")
    a = ap.parse_args()
    from ctscreen.inference.models import load_model

    t0 = time.perf_counter()
    model = load_model(a.model, "cpu")
    rng = np.random.default_rng(a.seed)
    report = {"benchmark": "explanations", "model": f"{model.name} {model.version}",
              "targets_p001": {"in_lung_mass": ">= 0.70", "pointing": ">= 0.90", "flagged": "<= 0.10"},
              "reference": f"{REFERENCE[0]}/{REFERENCE[1]} (the previous default)",
              "removed_pixels": f"top {int(TOP_FRACTION * 100)} % of the map at the network input -> "
                                f"{NORMAL_LUNG_HU:.0f} HU; random: the same count, {RANDOM_DRAWS} draws"}
    info, acc, keep = p001_set(model, a.p001_every)
    configs = shortlist(acc, a.shortlist)
    deletion_pass(model, keep, configs, acc, rng)
    del keep
    report["shortlist"] = [f"{lay}/{met}" for lay, met in configs]
    report["p001"] = {"info": info, "results": summarise(acc)}
    sem = {}
    if a.semiseg != "none":
        val = json.loads(VAL_RUN.read_text())["data"]["labelled_val"]
        names = [n for n in sorted((p.stem for p in (SEMISEG / "train" / "Imgs").glob("*.jpg")), key=int)
                 if _has_lesion(n) and (a.semiseg == "all" or n in set(val))]
        info_s, acc_s, keep_s = semiseg_set(model, names)
        deletion_pass(model, keep_s, configs, acc_s, rng)
        del keep_s
        report["semiseg_all50"] = {"info": info_s | {"note": "training slices of the shipped weights"},
                                   "results": summarise(acc_s)}
        # the validation split is a subset: its means from the same per-slice values
        pos = [i for i, n in enumerate(names) if n in set(val)]
        acc_v = {k: {m: [v[i] for i in pos] for m, v in d.items()} for k, d in acc_s.items()}
        report["semiseg_val10"] = {"info": {"slices_used": len(pos), "names": [names[i] for i in pos],
                                            "note": "held out by the validation runs, not by the shipped weights"},
                                   "results": summarise(acc_v)}
        sem = report["semiseg_all50"]["results"]
    report["choice"] = pick(report["p001"]["results"], sem)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))
    return 0


def _has_lesion(name: str) -> bool:
    from ctscreen.inference.data import read_mask

    return bool((read_mask(SEMISEG / "train" / "GT" / f"{name}.png") > 0).any())


if __name__ == "__main__":
    sys.exit(main())
