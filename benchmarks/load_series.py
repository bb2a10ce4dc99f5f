"""Time loading a DICOM series: ctscreen vs SimpleITK vs a plain serial pydicom loop.

Usage::

    python benchmarks/load_series.py FOLDER [--repeat N] [--workers W]

Prints one JSON object. Each timing is the median of N cold-in-process runs
(the OS file cache is warm after the first). ``ratio`` is ctscreen / SimpleITK
(the target is <= 1.0). All three include finding and ordering the files.

:func:`time_ctscreen_load` also reports the time until the first slice was
ready (the first :class:`LoadProgress` with ``first_slice``), for the viewer's
own benchmark to build on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def time_ctscreen_load(folder: str, workers: int | None = None) -> dict:
    """One ctscreen load: total seconds, seconds to the first displayable slice, shape."""
    from ctscreen.io.dicom import iter_load_series

    t0 = time.perf_counter()
    first_s = None
    gen = iter_load_series(folder, workers=workers)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            vol = stop.value
            break
        if p.first_slice is not None and first_s is None:
            first_s = time.perf_counter() - t0
    return {"seconds": time.perf_counter() - t0, "first_slice_s": first_s, "shape": list(vol.shape),
            "volume": vol}


def time_simpleitk(folder: str) -> tuple[float, tuple[int, ...]] | None:
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    t0 = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder))
    arr = sitk.GetArrayFromImage(reader.Execute())
    return time.perf_counter() - t0, arr.shape


def time_serial_pydicom(folder: str) -> float:
    """What a first attempt looks like: read, sort by z, decode one file after another."""
    import pydicom

    t0 = time.perf_counter()
    items = []
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                ds = pydicom.dcmread(os.path.join(root, name))
            except Exception:
                continue
            if "PixelData" in ds and "ImagePositionPatient" in ds:
                items.append((float(ds.ImagePositionPatient[2]), ds))
    items.sort(key=lambda t: t[0])
    np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for _, ds in items])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-imagecodecs", action="store_true",
                    help="decode JPEG with pydicom's plugins only (the path without the optional accelerator)")
    args = ap.parse_args(argv)
    folder = str(Path(args.folder))

    from ctscreen.io import dicom
    if args.no_imagecodecs:
        dicom._jpeg8_decode = None

    ours, firsts, sitk_s, serial_s = [], [], [], []
    shape = sitk_shape = None
    time_ctscreen_load(folder, args.workers)  # warm the file cache and imports for everyone
    for _ in range(max(1, args.repeat)):  # interleaved, so load from other processes hits all alike
        r = time_ctscreen_load(folder, args.workers)
        ours.append(r["seconds"])
        firsts.append(r["first_slice_s"])
        shape = r["shape"]
        s = time_simpleitk(folder)
        if s is not None:
            sitk_s.append(s[0])
            sitk_shape = list(s[1])
    for _ in range(max(1, min(args.repeat, 3))):
        serial_s.append(time_serial_pydicom(folder))

    ours_med = statistics.median(ours)
    sitk_med = statistics.median(sitk_s) if sitk_s else None
    out = {
        "folder": folder,
        "repeat": args.repeat,
        "ctscreen_load_s": round(ours_med, 4),
        "ctscreen_first_slice_s": round(statistics.median(f for f in firsts if f is not None), 4),
        "simpleitk_series_reader_s": round(sitk_med, 4) if sitk_med else None,
        "ratio": round(ours_med / sitk_med, 3) if sitk_med else None,
        "serial_pydicom_s": round(statistics.median(serial_s), 4),
        "n_slices": shape[0],
        "shape": shape,
        "simpleitk_shape": sitk_shape,
        "workers": args.workers or "default",
        "fast_jpeg_decoder": "imagecodecs" if dicom._jpeg8_decode is not None else None,
        "cpu_count": os.cpu_count(),
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
