"""Time the RSNA screening rules (ctscreen.imaging.screening.assess) on a 512 x 512 x 150 chest.

Research use only - not for diagnosis. Not a test: prints one JSON object.

The chest is synthetic (two ellipsoid lungs, chest wall, bilateral subpleural GGO with
consolidating cores, a dorsal fluid crescent), so the run needs no data and no network.
The reference measured in the same run is :func:`ctscreen.imaging.measurements.measure`
on the same masks (the pipeline's measurement stage); ``ratio`` is rules / measurements.

    python benchmarks/screening_rules.py [--repeat 3] [--slices 150]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from ctscreen.imaging.measurements import measure
from ctscreen.imaging.screening import assess

SPACING = (2.0, 0.75, 0.75)


def chest(nz: int = 150, n: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU, lung and lesion arrays of a synthetic chest, built slice by slice (bounded memory)."""
    hu = np.full((nz, n, n), -1000, np.int16)
    lung = np.zeros((nz, n, n), np.uint8)
    lesion = np.zeros((nz, n, n), np.uint8)
    yy, xx = np.mgrid[:n, :n].astype(np.float32)
    body = ((yy - 256) / 190) ** 2 + ((xx - 256) / 240) ** 2 <= 1
    for k in range(nz):
        hu[k][body] = 45
        t = (k - nz * 0.45) / (nz * 0.42)  # lungs from about slice 5 to 130
        if abs(t) >= 1:
            continue
        for lab, cx in ((1, 170.0), (2, 342.0)):
            r = np.sqrt(((yy - 250) / (150 * np.sqrt(1 - t * t))) ** 2 + ((xx - cx) / (75 * np.sqrt(1 - t * t))) ** 2)
            inside = r <= 1
            lung[k][inside] = lab
            hu[k][inside] = -850
            lateral = (xx < cx) if lab == 1 else (xx > cx)
            ggo = inside & (r >= 0.8) & lateral & (np.sin(k / 6.0 + yy / 40.0) > 0.2)
            lesion[k][ggo] = 1
            hu[k][ggo] = -600
            core = ggo & (r >= 0.92) & (yy > 300)
            lesion[k][core] = 2
            hu[k][core] = 20
            fluid = (r > 1) & (r <= 1.08) & (yy > 330) & (t > 0.2) & body
            hu[k][fluid] = 8
    return hu, lung, lesion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--slices", type=int, default=150)
    args = ap.parse_args()
    hu, lung, lesion = chest(args.slices)
    rules_wall, rules_cpu, meas_wall = [], [], []
    s = None
    for _ in range(max(1, args.repeat)):
        t = time.perf_counter()
        m = measure(lesion, lung, SPACING)
        meas_wall.append(time.perf_counter() - t)
        t, c = time.perf_counter(), time.process_time()
        s = assess(hu, lung, lesion, SPACING, measurements=m)
        rules_wall.append(time.perf_counter() - t)
        rules_cpu.append(time.process_time() - c)
    best = min(rules_wall)
    print(json.dumps({
        "benchmark": "screening_rules",
        "shape": list(hu.shape), "spacing_mm": list(SPACING),
        "rules_wall_s_best": round(best, 3), "rules_wall_s_all": [round(v, 3) for v in rules_wall],
        "rules_cpu_s_best": round(min(rules_cpu), 3),
        "reference_measurements_wall_s_best": round(min(meas_wall), 3),
        "ratio_rules_to_measurements": round(best / min(meas_wall), 2),
        "category": s.category, "decided_by": [c.key for c in s.decisive],
        "effusion_ml": s.criterion("effusion").value,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }))


if __name__ == "__main__":
    main()
