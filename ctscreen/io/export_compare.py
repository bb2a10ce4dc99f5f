"""Exports of a follow-up comparison: ``comparison.json``, ``comparison.csv`` and a side-by-side PNG.

Research use, not for diagnosis.

The PNG shows matched slices of the prior (left) and the current study (right):
the current slices with the most lesion, the prior's worst level, and the middle of
the lungs, each beside the prior slice that :class:`ctscreen.imaging.compare.Comparison`
maps it to (by anatomy, not slice number). No patient name, ID or path is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import ExportError
from ctscreen.io.files import atomic_write

COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
COMPARISON_PNG = "comparison.png"
COMPARISON_NAMES = (COMPARISON_JSON, COMPARISON_CSV, COMPARISON_PNG)


def write_comparison_json(cmp: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """``comparison.json`` (UTF-8, indented, NaN as null), atomically."""
    text = json.dumps(cmp.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
    return atomic_write(path, text + "\n", force=force)


def write_comparison_csv(cmp: Any, path: str | os.PathLike, force: bool = False) -> Path:
    """``comparison.csv``: one row per region, prior/current/change of every metric."""
    rows = cmp.csv_rows()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else (f"{v:.4g}" if isinstance(v, float) else v)) for k, v in r.items()})
    return atomic_write(path, buf.getvalue(), force=force)


def matched_slices(cmp: Any, count: int = 3) -> list[tuple[int, int]]:
    """(prior index, current index) pairs to show: the current's worst slice, the prior's worst level,
    the middle of the current lungs; distinct current slices, in craniocaudal order."""
    cur, pri = cmp.current, cmp.prior
    area_c = np.asarray(cur.lesion).reshape(cur.lesion.shape[0], -1).astype(bool).sum(axis=1)
    area_p = np.asarray(pri.lesion).reshape(pri.lesion.shape[0], -1).astype(bool).sum(axis=1)
    lung_c = np.flatnonzero(np.asarray(cur.lung).reshape(cur.lung.shape[0], -1).any(axis=1))
    picks: list[int] = []
    if area_c.any():
        picks.append(int(np.argmax(area_c)))
    if area_p.any():
        picks.append(int(cmp.map_prior_to_current(int(np.argmax(area_p)))))
    if lung_c.size:
        picks.append(int(lung_c[lung_c.size // 2]))
        picks += [int(lung_c[lung_c.size // 4]), int(lung_c[3 * lung_c.size // 4])]
    else:
        picks.append(cur.lesion.shape[0] // 2)
    out: list[int] = []
    for k in picks:
        if all(abs(k - o) >= 3 for o in out):
            out.append(k)
        if len(out) == count:
            break
    return [(int(cmp.map_current_to_prior(k)), k) for k in sorted(out)]


def _label(img: np.ndarray, text: str) -> np.ndarray:
    band = np.full((34, img.shape[1], 3), 18, np.uint8)
    cv2.putText(band, text, (10, 23), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (235, 235, 235), 1, cv2.LINE_AA)
    return np.vstack([band, img])


def render_comparison(cmp: Any, pairs: list[tuple[int, int]] | None = None, scale: float = 0.75) -> np.ndarray:
    """RGB image: matched slice pairs (prior left, current right) with overlays, the offset and the notice."""
    from ctscreen.io.export_png import render_slice_png

    pairs = pairs or matched_slices(cmp)
    rows = []
    for kp, kc in pairs:
        left = _label(render_slice_png(cmp.prior, kp), f"PRIOR  slice {kp + 1}")
        right = _label(render_slice_png(cmp.current, kc), f"CURRENT  slice {kc + 1}")
        h = max(left.shape[0], right.shape[0])
        left = np.pad(left, ((0, h - left.shape[0]), (0, 0), (0, 0)), constant_values=18)
        right = np.pad(right, ((0, h - right.shape[0]), (0, 0), (0, 0)), constant_values=18)
        rows.append(np.hstack([left, np.full((h, 8, 3), 60, np.uint8), right]))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=18) for r in rows]
    reg = cmp.registration
    both = cmp.row("both")
    head = np.full((70, width, 3), 18, np.uint8)
    ox, oy, oz = reg.offset_mm
    cv2.putText(head, f"Follow-up comparison: lesions {both.prior['lesion_ml']:.1f} -> {both.current['lesion_ml']:.1f} mL"
                f" ({round(both.change['lesion_ml'], 1) + 0.0:+.1f} mL, {both.direction})", (10, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.7,
                (235, 235, 235), 1, cv2.LINE_AA)
    cv2.putText(head, f"Aligned by lung masks ({reg.method}): prior = current + ({ox:+.1f}, {oy:+.1f}, {oz:+.1f}) mm LPS",
                (10, 56), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (200, 200, 200), 1, cv2.LINE_AA)
    foot = np.full((40, width, 3), 18, np.uint8)
    cv2.putText(foot, RESEARCH_NOTICE.encode("ascii", "replace").decode("ascii").replace("?", "-"), (10, 27),
                cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 170, 60), 2, cv2.LINE_AA)
    out = np.vstack([head, *rows, foot])
    if scale != 1.0:
        out = cv2.resize(out, (int(out.shape[1] * scale), int(out.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(out)


def write_comparison_png(cmp: Any, path: str | os.PathLike, force: bool = False) -> Path:
    img = render_comparison(cmp)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ExportError("PNG encoding failed \u2014 report this as a bug")
    return atomic_write(path, buf.tobytes(), force=force)


def write_comparison(cmp: Any, out_dir: str | os.PathLike, force: bool = False) -> list[Path]:
    """Write the three comparison files into ``out_dir`` (created if missing); all or none.

    Refuses before writing when any exists and not ``force``; a failure part-way removes
    what this call had written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder \u2014 choose a folder for the comparison")
    if not force:
        clash = [out / n for n in COMPARISON_NAMES if (out / n).exists()]
        if clash:
            raise ExportError(f"{clash[0]} exists \u2014 use --force to overwrite or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out}: {exc.strerror or exc} \u2014 check the path and permissions") from exc
    written: list[Path] = []
    try:
        written.append(write_comparison_json(cmp, out / COMPARISON_JSON, force=force))
        written.append(write_comparison_csv(cmp, out / COMPARISON_CSV, force=force))
        written.append(write_comparison_png(cmp, out / COMPARISON_PNG, force=force))
    except BaseException:
        if not force:
            for p in written:
                p.unlink(missing_ok=True)
        raise
    return written
