"""Follow-up alignment on a real study: a study against a shifted, cropped copy of itself.

The copy is the same series seen with the patient moved by ``--shift`` (LPS mm) and the scan
cut by ``--crop-top``/``--crop-bottom`` slices and ``--crop-rows``/``--crop-cols`` pixels
(geometry kept true: origins follow the crop). Both are segmented by the model (the copy
afresh, on its cropped grid), then :func:`ctscreen.imaging.compare.compare` aligns them.

Prints JSON: the true and recovered offsets, the error of the lung-profile registration and,
as a reference in the same run, of the plain lung-centroid difference (ratio = profile error /
centroid error), the per-region lesion change (ideally 0: nothing changed but the framing),
and the seconds of each step. Research use, not for diagnosis.

Usage: python benchmarks/compare_shift.py [FOLDER] [--device cpu] [--shift 10 -5 30]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT = ROOT.parent / "shared" / "data" / "dicom" / "covid-ct-md" / "P001"


def shifted_cropped(vol, z0: int, z1: int, y0: int, x0: int, shift):
    """The volume seen with the patient moved by ``shift`` (LPS mm), cropped to [z0:z1, y0:, x0:]."""
    d = np.asarray(vol.direction, float)
    origin = np.asarray(vol.origin_mm, float) + d @ (np.array([z0, y0, x0]) * np.asarray(vol.spacing_mm)) + shift
    return dataclasses.replace(vol, hu=np.ascontiguousarray(vol.hu[z0:z1, y0:, x0:]), origin_mm=tuple(origin),
                               z_mm=tuple(np.asarray(vol.z_mm[z0:z1]) + shift[2]),
                               sop_instance_uids=vol.sop_instance_uids[z0:z1],
                               instance_numbers=vol.instance_numbers[z0:z1], headers=(), source_files=())


def run_pipeline(volume, options):
    from ctscreen.inference.pipeline import analyze

    gen = analyze(volume, options)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", default=str(DEFAULT))
    p.add_argument("--device", default="cpu")
    p.add_argument("--shift", type=float, nargs=3, default=(10.0, -5.0, 30.0), metavar=("X", "Y", "Z"))
    p.add_argument("--crop-top", type=int, default=15)
    p.add_argument("--crop-bottom", type=int, default=13)
    p.add_argument("--crop-rows", type=int, default=40)
    p.add_argument("--crop-cols", type=int, default=25)
    args = p.parse_args()

    from ctscreen.imaging.compare import compare
    from ctscreen.inference.models import load_model
    from ctscreen.inference.pipeline import AnalyzeOptions
    from ctscreen.io.dicom import load_series

    t = time.perf_counter()
    vol = load_series(args.folder)
    model = load_model(None, device=args.device)
    options = AnalyzeOptions(model=model, cam="none")
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    prior = run_pipeline(vol, options)
    t_prior = time.perf_counter() - t
    shift = np.asarray(args.shift, float)
    copy = shifted_cropped(vol, args.crop_top, vol.shape[0] - args.crop_bottom, args.crop_rows, args.crop_cols, shift)
    t = time.perf_counter()
    current = run_pipeline(copy, options)
    t_current = time.perf_counter() - t
    t = time.perf_counter()
    cmp = compare(prior, current)
    t_compare = time.perf_counter() - t

    want = -shift
    got = np.asarray(cmp.registration.offset_mm)
    centroid = np.asarray(cmp.registration.centroid_offset_mm)
    err = float(np.linalg.norm(got - want))
    err_centroid = float(np.linalg.norm(centroid - want))
    # slice mapping: every current slice should land on the prior slice it was cut from
    mapped = [cmp.map_current_to_prior(k) for k in range(copy.shape[0])]
    slice_errors = int(sum(m != k + args.crop_top for k, m in enumerate(mapped)))
    out = {
        "study": Path(args.folder).name,
        "shape_prior": list(vol.shape), "shape_current": list(copy.shape),
        "true_offset_mm": want.round(3).tolist(),
        "recovered_offset_mm": got.round(3).tolist(),
        "error_mm": round(err, 3),
        "reference_centroid_offset_mm": centroid.round(3).tolist(),
        "reference_centroid_error_mm": round(err_centroid, 3),
        "ratio_error_profile_vs_centroid": round(err / err_centroid, 4) if err_centroid > 0 else None,
        "residual_mm": round(cmp.registration.residual_mm, 3),
        "slices_mapped_wrong": slice_errors,
        "lesion_ml": {"prior": round(cmp.row("both").prior["lesion_ml"], 2),
                      "current": round(cmp.row("both").current["lesion_ml"], 2)},
        "max_abs_region_change_ml": round(max(abs(r.change["lesion_ml"]) for r in cmp.rows), 3),
        "directions": {r.region: r.direction for r in cmp.rows},
        "warnings": list(cmp.warnings),
        "seconds": {"load_and_model": round(t_load, 2), "analyse_prior": round(t_prior, 2),
                    "analyse_current": round(t_current, 2), "compare": round(t_compare, 3)},
        "device": str(getattr(model, "device", args.device)),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
