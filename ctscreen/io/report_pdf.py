"""A one-page PDF report of an analysis that a clinician can file or print (A4, no Qt).

Research use, not for diagnosis.

The page holds: the study identification (series, slices, spacing, date of the
report; patient name and ID only with ``include_patient``), the screening verdict
when the analysis has one (``result.screening``: RSNA category, the reasons that
decided it, the classifier's probabilities), three key images with the lesion
overlays (the renderers of :mod:`ctscreen.io.export_png`), the totals, the severity
grid of the six zones (% involved and 0-5 score), the lesion profile along the
craniocaudal axis, the model versions and :data:`ctscreen.RESEARCH_NOTICE` at top
and bottom.

Drawn with matplotlib's object API (``Figure`` with the Agg/PDF canvases, never
pyplot), so it runs headless and leaves any GUI backend alone; written with
:func:`ctscreen.io.files.atomic_write`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.io.files import atomic_write

REPORT_PDF = "report.pdf"
A4_INCHES = (8.27, 11.69)
_GGO = "#ffc800"
_CONS = "#e600e6"
_NOTICE = "#c0392b"
_CLASS_NAMES = {"covid19": "COVID-19", "other_pneumonia": "Other pneumonia", "no_pneumonia": "No pneumonia",
                "non_covid": "Not COVID-19"}


def key_slices(result: Any, count: int = 3) -> list[int]:
    """The slices with the most lesion area, spread along the lungs (at least a sixth of the lung's
    craniocaudal extent, and 5 slices, apart), in craniocaudal order; the middle of the lungs
    when there is no lesion."""
    les = np.asarray(result.lesion)
    n = les.shape[0]
    area = les.reshape(n, -1).astype(bool).sum(axis=1)
    lung_z = np.flatnonzero(np.asarray(result.lung).reshape(n, -1).any(axis=1))
    gap = max(5, (int(lung_z[-1] - lung_z[0]) // 6) if lung_z.size else 0)
    picks: list[int] = []
    for k in np.argsort(-area, kind="stable"):
        if area[k] == 0 or len(picks) == count:
            break
        if all(abs(int(k) - p) >= gap for p in picks):
            picks.append(int(k))
    if not picks:
        picks = [int(lung_z[lung_z.size // 2])] if lung_z.size else [n // 2]
    return sorted(picks)


def _f(v: Any, digits: int = 1, unit: str = "") -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(x):
        return "–"
    return f"{x:.{digits}f}{unit}"


def _text_block(ax: Any, lines: list[tuple[str, dict]], top: float = 0.98, step: float = 0.13) -> None:
    ax.set_axis_off()
    y = top
    for text, kw in lines:
        ax.text(0.0, y, text, va="top", ha="left", transform=ax.transAxes, **{"fontsize": 8, **kw})
        y -= kw.get("_step", step) if "_step" in kw else step


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(str(text), width) or [""]


def build_report_figure(result: Any, include_patient: bool = False, created: _dt.datetime | None = None,
                        reader_measurements: list[dict[str, Any]] | None = None) -> Any:
    """The report page as a matplotlib ``Figure`` (A4 portrait); save it as PDF or PNG.

    Parameters
    ----------
    result : AnalysisResult
    include_patient : bool
        Print the patient name and ID. Off by default.
    created : datetime, optional
        Date printed on the report (default now, UTC).
    reader_measurements : list of dict, optional
        The reader's rulers, ROIs and probes (``ctscreen.imaging.annotations``'s ``to_dicts``
        records: ``kind``, ``plane``, ``index``, ``summary``), listed under the totals.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from ctscreen.io.export_png import _render_image, orientation_letters

    vol = result.volume
    m = result.measurements
    created = created or _dt.datetime.now(_dt.timezone.utc)
    fig = Figure(figsize=A4_INCHES, dpi=100)
    fig.patch.set_facecolor("white")

    # -- header ---------------------------------------------------------------------------
    fig.text(0.05, 0.972, "Chest CT lesion analysis", fontsize=15, weight="bold", va="top")
    fig.text(0.95, 0.972, f"ctscreen {__version__}", fontsize=9, ha="right", va="top", color="#444444")
    fig.text(0.05, 0.948, RESEARCH_NOTICE, fontsize=10, weight="bold", color=_NOTICE, va="top")

    # -- study identification -------------------------------------------------------------------
    ax = fig.add_axes((0.05, 0.835, 0.52, 0.095))
    ident: list[tuple[str, dict]] = []
    if include_patient:
        ident.append((f"Patient: {vol.patient_name or '–'}    ID: {vol.patient_id or '–'}", {"weight": "bold"}))
    sz, sy, sx = (float(s) for s in vol.spacing_mm)
    ident += [
        (f"Series: {vol.series_description or '–'}  ({vol.modality})", {}),
        (f"{vol.shape[0]} slices of {vol.shape[1]}×{vol.shape[2]}, voxel {sy:.2f}×{sx:.2f}×{sz:.2f} mm", {}),
        (f"Study UID: {vol.study_instance_uid or '–'}", {"fontsize": 6.5, "color": "#555555"}),
        (f"Report created {created.strftime('%Y-%m-%d %H:%M UTC')}", {"color": "#555555"}),
    ]
    if not include_patient:
        ident.append(("Patient name and ID left out (include them only when filing requires it)",
                      {"fontsize": 6.5, "color": "#555555"}))
    _text_block(ax, ident, step=0.2)

    # -- screening verdict ----------------------------------------------------------------------
    ax = fig.add_axes((0.60, 0.825, 0.35, 0.115))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_axis_off()
    ax.add_patch(Rectangle((0, 0), 1, 1, facecolor="#f4f4f4", edgecolor="#999999", lw=0.8))
    scr = getattr(result, "screening", None)
    if scr is not None:
        ax.text(0.04, 0.94, "Screening (RSNA category)", fontsize=7.5, color="#555555", va="top")
        ax.text(0.04, 0.80, str(getattr(scr, "category_label", "") or getattr(scr, "category", "")), fontsize=11,
                weight="bold", va="top")
        probs = dict(getattr(scr, "probabilities", {}) or {})
        y = 0.60
        if probs:
            txt = "  ".join(f"{_CLASS_NAMES.get(k, k)} {float(v):.2f}" for k, v in
                            sorted(probs.items(), key=lambda kv: -float(kv[1])))
            ax.text(0.04, y, "Classifier:", fontsize=6.5, va="top", color="#555555")
            ax.text(0.04, y - 0.11, txt, fontsize=6.4, va="top")
            y -= 0.25
        lines = [line for reason in list(getattr(scr, "reasons", ()) or ()) for line in _wrap(reason, 66)]
        room = max(1, int((y + 0.02) / 0.105))
        if len(lines) > room:
            lines = lines[:room]
            lines[-1] = lines[-1].rstrip(" -") + " …"
        for line in lines:
            ax.text(0.04, y, line, fontsize=6.2, va="top", color="#333333")
            y -= 0.105
    else:
        ax.text(0.04, 0.90, "Screening verdict", fontsize=7.5, color="#555555", va="top")
        ax.text(0.04, 0.70, "not computed for this analysis", fontsize=9, va="top")

    # -- key images -------------------------------------------------------------------------------
    keys = key_slices(result)
    letters = orientation_letters(vol.direction)
    width = 0.90 / 3
    for n, k in enumerate(keys):
        img, pixel_mm, _ = _render_image(result, k, (1500.0, -600.0), True, 0.45, False, min_width=256)
        ax = fig.add_axes((0.05 + n * width + 0.005, 0.555, width - 0.01, 0.255))
        ax.imshow(img, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        h, w = img.shape[:2]
        for key, (x, yy, ha, va) in {"left": (4, h / 2, "left", "center"), "right": (w - 4, h / 2, "right", "center"),
                                     "top": (w / 2, 4, "center", "top"), "bottom": (w / 2, h - 4, "center", "bottom")}.items():
            ax.text(x, yy, letters[key], color="white", fontsize=7, ha=ha, va=va, weight="bold")
        bar_mm = 50.0
        bar_px = bar_mm / pixel_mm
        ax.plot([w - 10 - bar_px, w - 10], [h - 14, h - 14], color="white", lw=2)
        ax.text(w - 10 - bar_px / 2, h - 18, "5 cm", color="white", fontsize=6, ha="center", va="bottom")
        les = np.asarray(result.lesion[k])
        area_cm2 = float(np.count_nonzero(les)) * sy * sx / 100.0
        z = f", z {vol.z_mm[k]:.0f} mm" if k < len(vol.z_mm) else ""
        ax.set_title(f"Slice {k + 1}/{vol.shape[0]}{z} — lesion {area_cm2:.1f} cm²", fontsize=7)
    fig.text(0.05, 0.548, "Ground-glass opacity", fontsize=7, va="top", color="black",
             bbox={"facecolor": _GGO, "edgecolor": "none", "pad": 1.5})
    fig.text(0.22, 0.548, "Consolidation", fontsize=7, va="top", color="black",
             bbox={"facecolor": _CONS, "edgecolor": "none", "pad": 1.5})
    fig.text(0.35, 0.548, "Lung window W 1500 L −600; slices with the most lesion", fontsize=7, va="top",
             color="#555555")

    # -- totals -----------------------------------------------------------------------------------
    ax = fig.add_axes((0.05, 0.33, 0.40, 0.19))
    ax.set_axis_off()
    ax.set_title("Totals", fontsize=9, loc="left", weight="bold")
    totals = [
        ("Lesion volume", _f(getattr(m, "lesion_volume_ml", None), 1, " mL")),
        ("  ground-glass opacity", _f(getattr(m, "ggo_volume_ml", None), 1, " mL")),
        ("  consolidation", _f(getattr(m, "consolidation_volume_ml", None), 1, " mL")),
        ("Lung volume", _f(getattr(m, "lung_volume_ml", None), 0, " mL")),
        ("Lungs involved", _f(getattr(m, "percent_involved", None), 1, " %")),
        ("  right / left", f"{_f(getattr(m, 'percent_right', None), 1, ' %')} / "
                           f"{_f(getattr(m, 'percent_left', None), 1, ' %')}"),
        ("Severity score", f"{getattr(m, 'severity_total', '–')} / 30"),
        ("Lesions (3-D pieces)", str(getattr(m, "lesion_count", "–"))),
    ]
    table = ax.table(cellText=[[a, b] for a, b in totals], colWidths=[0.62, 0.38], loc="upper left",
                     cellLoc="left", edges="horizontal")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.25)

    if reader_measurements:
        items = list(reader_measurements)
        y = 0.370
        fig.text(0.05, y, "Reader measurements", fontsize=8, weight="bold", va="top")
        shown = items[:4] if len(items) <= 4 else items[:3]  # room for four lines above the profile
        for d in shown:
            y -= 0.0135
            where = f"{d.get('plane', '') or 'axial'} slice {int(d['index']) + 1}" if d.get("index") is not None else ""
            line = f"{d.get('kind', '')} {where}: {d.get('summary', '')}".strip()
            fig.text(0.06, y, line[:90], fontsize=6.5, va="top", color="#333333")
        if len(items) > len(shown):
            fig.text(0.06, y - 0.0135, f"… and {len(items) - len(shown)} more (listed in report.json)", fontsize=6.5,
                     va="top", color="#555555")

    # -- severity grid ------------------------------------------------------------------------------
    ax = fig.add_axes((0.52, 0.33, 0.43, 0.19))
    ax.set_axis_off()
    ax.set_title("Zones: % involved (score 0–5)", fontsize=9, loc="left", weight="bold")
    cells, colours = [], []
    cmap = ["#ffffff", "#fff3c4", "#ffe08a", "#ffc46b", "#ff9b5e", "#f0645a"]
    for third in ("upper", "middle", "lower"):
        row, crow = [third.capitalize()], ["#eeeeee"]
        for side in ("right", "left"):
            try:
                pct = m.zone_percent(side, third)
                sev = m.zone_severity(side, third)
            except AttributeError:
                pct, sev = float("nan"), 0
            row.append(f"{_f(pct, 1, ' %')}  ({sev})")
            crow.append(cmap[max(0, min(5, int(sev)))])
        cells.append(row)
        colours.append(crow)
    grid = ax.table(cellText=cells, colLabels=["Zone", "Right lung", "Left lung"], cellColours=colours,
                    colColours=["#dddddd"] * 3, loc="upper left", cellLoc="center", colWidths=[0.26, 0.37, 0.37])
    grid.auto_set_font_size(False)
    grid.set_fontsize(8.5)
    grid.scale(1, 1.9)
    ax.text(0.0, 0.08, "Score per zone: 0 none, 1 <5 %, 2 5–25 %, 3 25–50 %, 4 50–75 %, 5 >75 %;\n"
            "zones are thirds of each lung's craniocaudal extent", fontsize=6.3, color="#555555",
            transform=ax.transAxes, va="top")

    # -- z profile ----------------------------------------------------------------------------------
    ax = fig.add_axes((0.10, 0.115, 0.85, 0.165))
    les = np.asarray(result.lesion)
    n = les.shape[0]
    px_cm2 = sy * sx / 100.0
    ggo = (les == 1).reshape(n, -1).sum(axis=1) * px_cm2
    cons = (les == 2).reshape(n, -1).sum(axis=1) * px_cm2
    lung_area = np.asarray(result.lung).astype(bool).reshape(n, -1).sum(axis=1) * px_cm2
    zpos = np.asarray(vol.z_mm, float) if len(vol.z_mm) == n else -np.arange(n) * sz
    order = np.argsort(-zpos)  # head on the left
    x = zpos[order]
    ax.fill_between(x, 0, ggo[order], color=_GGO, step="mid", label="Ground-glass opacity", lw=0)
    ax.fill_between(x, ggo[order], ggo[order] + cons[order], color=_CONS, step="mid", label="Consolidation", lw=0)
    ax.set_xlim(x[0], x[-1]) if n > 1 else None
    ax.set_ylabel("lesion area (cm²)", fontsize=7.5)
    ax.set_xlabel("slice position z (mm), head ← → feet", fontsize=7.5)
    ax.tick_params(labelsize=7)
    ax2 = ax.twinx()
    ax2.plot(x, lung_area[order], color="#3b6ea5", lw=0.9, label="lung area")
    ax2.set_ylabel("lung area (cm²)", fontsize=7.5, color="#3b6ea5")
    ax2.tick_params(labelsize=7, colors="#3b6ea5")
    ax2.set_ylim(bottom=0)
    ax.set_ylim(bottom=0, top=max(1.0, float((ggo + cons).max()) * 1.15))
    for k in keys:
        ax.axvline(zpos[k], color="#888888", lw=0.6, ls=":")
    ax.set_title("Lesion profile along the lungs (dotted: key images)", fontsize=9, loc="left", weight="bold")
    handles = ax.get_legend_handles_labels()
    h2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + h2[0], handles[1] + h2[1], fontsize=6.5, loc="upper right", frameon=False)

    # -- footer: models and notice -------------------------------------------------------------------
    models = f"Segmentation model: {result.model_name} {result.model_version} on {result.device}"
    if scr is not None and getattr(scr, "model_name", ""):
        models += f"   Classifier: {scr.model_name} {getattr(scr, 'model_version', '')}"
    fig.text(0.05, 0.062, models, fontsize=7, color="#333333")
    warn = list(getattr(result, "warnings", ()) or ()) + list(getattr(vol, "warnings", ()) or ())
    if warn and not include_patient:  # file and folder names can carry the patient's name
        from ctscreen.io.privacy import scrub_all

        warn = scrub_all(warn, getattr(vol, "source_files", ()) or ())
    if warn:
        fig.text(0.05, 0.047, f"{len(warn)} warning(s): " + "; ".join(str(w) for w in warn)[:150], fontsize=6.3,
                 color="#7a5a00")
    fig.text(0.5, 0.022, f"{RESEARCH_NOTICE} Automated measurements; review every image before relying on them.",
             fontsize=8.5, weight="bold", color=_NOTICE, ha="center")
    return fig


def render_report_png(result: Any, dpi: int = 100, **kw: Any) -> np.ndarray:
    """The report page as an RGB array (the same figure as the PDF), for previews and tests."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = build_report_figure(result, **kw)
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def write_report_pdf(result: Any, path: str | os.PathLike, force: bool = False, include_patient: bool = False,
                     created: _dt.datetime | None = None,
                     reader_measurements: list[dict[str, Any]] | None = None) -> Path:
    """Write the one-page report to ``path`` (normally ``report.pdf``) atomically; returns the path.

    ``reader_measurements`` (optional) lists the reader's measurements under the totals.
    """
    from matplotlib.backends.backend_pdf import FigureCanvasPdf

    fig = build_report_figure(result, include_patient=include_patient, created=created,
                              reader_measurements=reader_measurements)
    FigureCanvasPdf(fig)
    meta = {"Title": "ctscreen chest CT lesion analysis", "Creator": f"ctscreen {__version__}",
            "Subject": RESEARCH_NOTICE}
    return atomic_write(path, lambda fh: fig.savefig(fh, format="pdf", metadata=meta), force=force)
