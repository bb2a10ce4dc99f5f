"""Join classifiers trained by ``ctscreen train-classifier`` into one ensemble file.

Small data is the limit of this classifier (the thesis' finding): independently
trained networks make partly independent errors, and averaging their
probabilities is the cheapest reliable gain. :func:`build_ensemble` checks that
the members agree (classes, input size), writes one weights file that
:func:`ctscreen.inference.classifier.load_classifier` loads like any other
(:class:`~ctscreen.inference.classifier.EnsembleClassifier`), scores the
ensemble and every member on the validation folders, and writes a model card
that lists each member's data, command and validation figures.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import CtscreenError
from ctscreen.inference import classifier as C


class EnsembleError(CtscreenError):
    """Members that cannot form an ensemble, or an output that may not be written."""


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parents[2]).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _read_member(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EnsembleError(f"{path}: no such classifier file - train one with 'ctscreen train-classifier'")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise EnsembleError(f"{path}: cannot read it ({exc.__class__.__name__}: {exc}) - retrain it") from exc
    if not isinstance(blob, dict) or blob.get("format") != C.FORMAT:
        raise EnsembleError(f"{path}: not a ctscreen classifier file (expected format {C.FORMAT})")
    if "ensemble" in (blob.get("config") or {}):
        raise EnsembleError(f"{path}: already an ensemble - give its member files instead")
    return blob


def build_ensemble(members: list[Path], out: Path, val_covid: Path | None = None,
                   val_non_covid: Path | None = None, force: bool = False, command: str = "",
                   tta: bool = True) -> dict[str, Any]:
    """Write ``out`` (.pt + .md/.json card): the members' probabilities averaged.

    Parameters
    ----------
    members : list of Path
        Two or more files written by ``ctscreen train-classifier`` with the same classes
        and input size.
    out : Path
        The ensemble's weights file; an existing one is replaced only with ``force``.
    val_covid, val_non_covid : Path, optional
        Image folders on which the ensemble and each member are scored (the card's
        validation figures, with bootstrap CIs).
    """
    from ctscreen.inference.train_classifier import evaluate_folders, write_card

    members = [Path(m) for m in members]
    out = Path(out)
    if len(members) < 2:
        raise EnsembleError("an ensemble needs at least two member files")
    if out.exists() and not force:
        raise EnsembleError(f"{out} exists - pass --force to replace it, or choose another --out")
    if out.resolve() in {m.resolve() for m in members}:
        raise EnsembleError(f"{out}: the output would overwrite one of its own members - choose another --out")
    blobs = [_read_member(m) for m in members]
    cards = [b.get("card") or {} for b in blobs]
    classes = {tuple(b.get("classes") or C.CLASSES_BINARY) for b in blobs}
    if len(classes) != 1:
        raise EnsembleError("the members have different classes: " + "; ".join(
            f"{m.name}: {', '.join(b.get('classes') or C.CLASSES_BINARY)}" for m, b in zip(members, blobs)))
    sizes = [int(c.get("input_size", C.INPUT_SIZE)) for c in cards]
    if max(sizes) > 2 * min(sizes):
        raise EnsembleError("the members' input sizes are too far apart: " + ", ".join(
            f"{m.name}: {s} px" for m, s in zip(members, sizes)) + " - train them with closer --size values")
    cls = next(iter(classes))
    net = C.EnsembleClassifier([b["config"] for b in blobs], sizes)
    size = net.input_size
    state = {}
    for i, b in enumerate(blobs):
        state.update({f"members.{i}.{k}": (v.float() if v.is_floating_point() else v) for k, v in b["state_dict"].items()})
    net.load_state_dict(state)
    t0 = time.time()
    commit = _git_commit()
    version = f"classifier-ens{len(members)}-{time.strftime('%Y%m%d')}-{commit[:8]}"
    c0 = cards[0]

    def union(key: str) -> list[str]:  # what any member trained on (a study in one member is seen)
        seen: list[str] = []
        for c in cards:
            for item in (c.get("data") or {}).get(key) or []:
                if item not in seen:
                    seen.append(item)
        return seen
    card: dict[str, Any] = {
        "name": out.stem, "version": version, "ctscreen_version": __version__, "classes": list(cls),
        "input_size": size,
        "architecture": f"ensemble of {len(members)} classifiers (mean of the members' softmax): "
                        + "; ".join(sorted({str(c.get('architecture', '?')) for c in cards})),
        "head": ", ".join(sorted({str(c.get("head", "?")) for c in cards})),
        "init": "members trained independently",
        "init_note": "members trained independently by ctscreen train-classifier: " + "; ".join(
            f"{c.get('version', m.name)} ({c.get('init_note', '?')})" for m, c in zip(members, cards)),
        "parameters": int(sum(p.numel() for p in net.parameters())),
        "intensity": c0.get("intensity", ""),
        "data": {"root": "?", "split": "?", "train_counts": {}, "val_counts": {}, **(c0.get("data") or {}),
                 "extra_covid_training": union("extra_covid_training"),
                 "extra_study_training": union("extra_study_training"),
                 "members_data": [{"version": c.get("version"), **(c.get("data") or {})} for c in cards]},
        "augmentation": "per member: " + " | ".join(sorted({str(c.get("augmentation", "?")) for c in cards})),
        "recipe": {"members": [{"version": c.get("version"), **(c.get("recipe") or {})} for c in cards]},
        "command": (command or "ctscreen ensemble-classifier " + " ".join(str(m) for m in members))
                   + " ; members: " + " ; ".join(str(c.get("command", "?")) for c in cards),
        "git_commit": commit,
        "hardware": "; ".join(sorted({str(c.get("hardware", "?")) for c in cards})),
        "training_seconds": round(sum(float(c.get("training_seconds") or 0.0) for c in cards), 1),
        "validation": {}, "validation_protocol": "", "notice": RESEARCH_NOTICE,
        "members": [{"file": m.name, "version": c.get("version"), "command": c.get("command"),
                     "lesion_crops": float(c.get("lesion_crops", 0) or 0),
                     "validation_training_time": c.get("validation")} for m, c in zip(members, cards)],
    }
    base = []
    if val_covid is not None and val_non_covid is not None:
        loaded = C.LoadedClassifier(name=out.stem, version=version, classes=cls, net=net.eval(),
                                    device=torch.device("cpu"), input_size=size, card=card)
        res = evaluate_folders(loaded, Path(val_covid), Path(val_non_covid), tta=tta)
        card["validation"] = {k: res[k] for k in ("accuracy", "f1", "precision", "recall", "auc", "ci95")} | {
            "n": res["images"]}
        if tta:  # the study verdict scores an ensemble without the flip: report that protocol too
            r1 = evaluate_folders(loaded, Path(val_covid), Path(val_non_covid), tta=False)
            card["validation_no_tta"] = {k: r1[k] for k in ("accuracy", "f1", "auc", "ci95")} | {"n": r1["images"]}
        card["validation_protocol"] = (
            f"{Path(val_covid).parent.name}/{{{Path(val_covid).name},{Path(val_non_covid).name}}}: "
            + ("whole image" if res["view"] == "whole" else "mean of the whole image and its lesion-focus view"
               if res["view"] == "both" else "lesion-focus view")
            + f" resized to {size} px{', left-right flip TTA' if tta else ''}, threshold 0.5; 95 % CIs: 2000 "
            "stratified bootstrap resamples. Float16 weights as shipped. Each member chose its epoch on this "
            "same validation set, so these figures are optimistic; a held-out test split is the unbiased measure.")
        for m, b, c in zip(members, blobs, cards):
            single = C.build(b["config"])
            single.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in b["state_dict"].items()})
            one = C.LoadedClassifier(name=m.stem, version=str(c.get("version", m.stem)), classes=cls,
                                     net=single.eval(), device=torch.device("cpu"),
                                     input_size=int(c.get("input_size", C.INPUT_SIZE)), card=c)
            r = evaluate_folders(one, Path(val_covid), Path(val_non_covid), tta=tta)
            v = {k: r[k] for k in ("accuracy", "f1", "precision", "recall", "auc", "ci95")} | {"n": r["images"]}
            base.append({"version": c.get("version"), "validation": v,
                         "note": f"member {m.name} alone (same protocol)"})
    card["base_model"] = base
    card["total_seconds"] = round(time.time() - t0, 1)
    C.save_classifier(net, cls, out, card)
    write_card(out, card, force=True)
    card["hardware_scoring"] = f"{platform.machine()}, torch threads {torch.get_num_threads()}"
    return card


def summary(card: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [f"ensemble {card['version']}: {len(card['members'])} members, {card['parameters']:,} parameters"]
    v = card.get("validation") or {}
    if "auc" in v:
        lines.append(f"validation: accuracy {v['accuracy']:.3f}, F1 {v['f1']:.3f}, AUC {v['auc']:.3f} "
                     f"on {v['n']} images")
        for b in card.get("base_model") or []:
            bv = b["validation"]
            lines.append(f"  {b['note']}: accuracy {bv['accuracy']:.3f}, F1 {bv['f1']:.3f}, AUC {bv['auc']:.3f}")
    return "\n".join(lines) + "\n" + json.dumps({"version": card["version"]})
