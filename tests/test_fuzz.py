"""The loader against damaged and hostile folders: nothing hangs, crashes, runs out of memory or
loads a broken geometry without a word (issue 12).

Three layers:

* targeted cases, one per finding of the issue, with the message they must give;
* a seeded mutation fuzz run in this process (every mutation kind of
  ``tests/dicom_mutations.py`` once, then random combinations), each case under a
  wall-clock alarm and a time check;
* a few cases in child processes with the benchmark's limits (20 s, 4 GB RLIMIT_AS),
  and ``ctscreen analyze`` end to end on mutated series (exit 2 with one line, no
  traceback, nothing written).

The long run is ``benchmarks/fuzz_loader.py``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

import dicom_mutations as dm
from ctscreen.errors import CtscreenError, NotAnalysable, SeriesGeometryError
from ctscreen.io import dicom
from ctscreen.io.dicom import load_series, scan_folder

pytestmark = pytest.mark.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
HAVE_SHARED = dm.P001.is_dir() and dm.LUNG_PET.is_dir()
BAD = ("hang", "crash", "oom", "silent_bad_geometry")
#: One case (a few 64 x 64 slices) must finish well within this, even on a busy 2-core machine.
CASE_LIMIT_S = 8.0


@contextlib.contextmanager
def deadline(seconds: float):
    """Raise TimeoutError in this (main) thread after ``seconds``: a hang fails the test, never blocks it."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"over {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def synthetic() -> dm.Base:
    return dm.synthetic_base(6, 64)


def write(folder: Path, base: dm.Base, changes: dict[int, dict] | None = None) -> list[Path]:
    """Write ``base`` into ``folder``; ``changes[k]`` sets header values of slice k (keyword: value,
    None deletes; values may be invalid on purpose). Returns the paths in z order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with dm.lenient_pydicom():
        for k, (name, ds) in enumerate(zip(base.names, base.datasets)):
            ds = copy.deepcopy(ds)
            change = dict((changes or {}).get(k, {}))
            ts = change.pop("TransferSyntaxUID", None)
            for kw, value in change.items():
                if value is None:
                    del ds[kw]
                else:
                    dm._set(ds, kw, pydicom.datadict.dictionary_VR(kw), value)
            data = dm._encode(ds)
            (folder / name).write_bytes(dm._with_transfer_syntax(data, ts) if ts else data)
            paths.append(folder / name)
    return paths


def timed_load(folder: Path, limit_s: float = CASE_LIMIT_S):
    with deadline(limit_s * 2):
        t = time.perf_counter()
        vol = load_series(folder)
        dt = time.perf_counter() - t
    assert dt < limit_s, f"{dt:.1f} s"
    return vol


def joined(vol) -> str:
    return " | ".join(vol.warnings)


# --------------------------------------------------------------------------- targeted


def test_the_fuzzer_covers_the_issue():
    assert len(dm.KINDS) >= 44
    named = {"fifo", "frames_negative", "frames_int32_max", "frames_1e12", "frames_100k", "per_frame_one_item_1e6",
             "sparse_dicm_256mib", "deflate_bomb", "transfer_syntax_unknown", "orientation_collinear",
             "orientation_zero", "orientation_huge", "pixel_spacing_zero_one", "pixel_spacing_negative",
             "pixel_spacing_zero", "pixel_spacing_huge", "spacing_between_slices_huge", "zero_length_end_slice",
             "truncate_end_slice", "slope_negative", "intercept_min", "bit_flips", "truncate_anywhere"}
    assert named <= set(dm.KINDS)


def test_fifo_is_skipped_with_a_note_and_never_opened(tmp_path, synthetic):
    write(tmp_path / "s", synthetic)
    os.mkfifo(tmp_path / "s" / "pipe.dcm")  # no writer: opening it for reading would block forever
    with deadline(10):
        scan = scan_folder(tmp_path / "s")
        vol = load_series(tmp_path / "s")
    assert any("pipe.dcm" in w and "named pipe (FIFO)" in w and "skipped" in w for w in scan.warnings)
    assert vol.shape[0] == 6


def test_sparse_256_mib_file_starting_with_dicm_does_not_stall(tmp_path, synthetic):
    write(tmp_path / "s", synthetic)
    for name, head in (("sparse.dcm", b"\x00" * 128 + b"DICM"),
                       ("sparse_header.dcm", (tmp_path / "s" / synthetic.names[0]).read_bytes()[:700])):
        with open(tmp_path / "s" / name, "wb") as fh:
            fh.write(head)
            fh.truncate(256 << 20)
    with deadline(20):
        t = time.perf_counter()
        scan = scan_folder(tmp_path / "s")
        assert time.perf_counter() - t < 3.0
    assert scan.series[0].slice_count == 6
    assert any("sparse_header.dcm" in w for w in scan.warnings)


@pytest.mark.parametrize("claim", ["-1", "0", str(2 ** 31 - 1), "1000000000000", "100000", "many"])
def test_number_of_frames_is_checked_against_the_pixel_data(tmp_path, synthetic, claim):
    paths = write(tmp_path / "s", synthetic, {0: {"NumberOfFrames": claim}})
    scan = scan_folder(tmp_path / "s")  # no IndexError, no loop over the claim
    assert len(scan.series) == 1 and scan.series[0].slice_count == 6
    vol = timed_load(tmp_path / "s")
    assert vol.shape == (6, 64, 64) and len(vol.z_mm) == 6
    assert any(paths[0].name in w and "NumberOfFrames" in w for w in vol.warnings), vol.warnings


def test_per_frame_group_with_one_item_and_a_million_frames(tmp_path, synthetic):
    base = copy.deepcopy(synthetic)
    ds = base.datasets[2]
    item, pos = pydicom.Dataset(), pydicom.Dataset()
    pos.ImagePositionPatient = list(ds.ImagePositionPatient)
    item.PlanePositionSequence = pydicom.Sequence([pos])
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([item])
    paths = write(tmp_path / "s", base, {2: {"NumberOfFrames": "1000000"}})
    with deadline(20):
        scan = scan_folder(tmp_path / "s")
    notes = " | ".join(w for s in scan.series for w in s.warnings)
    assert f"{paths[2]}: NumberOfFrames is 1000000 but its pixel data holds 1 frame(s): 1 read" in notes


def test_a_volume_that_cannot_fit_is_refused_before_allocating(tmp_path, synthetic, monkeypatch):
    write(tmp_path / "s", synthetic)
    monkeypatch.setattr(dicom, "_available_memory_bytes", lambda: 10_000)
    with pytest.raises(SeriesGeometryError, match=r"6 slices of 64x64 need 0\.0 GiB, more than this machine"):
        load_series(tmp_path / "s")


def test_deflate_bomb_is_bounded(tmp_path, synthetic):
    case = dm.build_case(tmp_path / "s", synthetic, 7, ("deflate_bomb",))
    with deadline(30):
        t = time.perf_counter()
        outcome, detail = dm.run_case(tmp_path / "s", case)
        assert time.perf_counter() - t < CASE_LIMIT_S
    assert outcome == "loaded_with_warning", detail
    vol = load_series(tmp_path / "s")
    assert vol.shape[0] == 5 and any("inflates to more than 4 MiB" in w for w in vol.warnings)


def test_slice_skipped_for_its_transfer_syntax_keeps_z_mm_in_step(tmp_path, synthetic):
    paths = write(tmp_path / "s", synthetic, {5: {"TransferSyntaxUID": "1.2.3.4.5"}})
    data = paths[5].read_bytes()
    vol = timed_load(tmp_path / "s")
    assert vol.shape[0] == len(vol.z_mm) == len(vol.sop_instance_uids) == 5
    assert any(f"skipped 1 slice(s) (s/{paths[5].name})" in w and "unknown transfer syntax 1.2.3.4.5" in w
               for w in vol.warnings), vol.warnings
    assert data == paths[5].read_bytes()  # the source is never modified


@pytest.mark.parametrize("iop", [["1", "0", "0", "1", "0", "0"], ["0"] * 6, ["1e308", "0", "0", "0", "1e308", "0"]])
def test_invalid_orientation_is_not_analysable_and_says_why(tmp_path, synthetic, iop):
    write(tmp_path / "s", synthetic, {k: {"ImageOrientationPatient": iop} for k in range(6)})
    vol = timed_load(tmp_path / "s")
    assert vol.shape[0] == 6  # not collapsed into one "duplicate" slice
    assert "slice orientation invalid" in vol.not_analysable_reason
    assert "ImageOrientationPatient of 6 of 6 slice(s) is invalid" in joined(vol)
    d = np.asarray(vol.direction)
    assert np.allclose(d.T @ d, np.eye(3)) and np.all(np.isfinite(vol.z_mm))


def test_one_slice_with_invalid_orientation_stays_in_its_series(tmp_path, synthetic):
    paths = write(tmp_path / "s", synthetic, {5: {"ImageOrientationPatient": ["0"] * 6}})
    scan = scan_folder(tmp_path / "s")
    assert len(scan.series) == 1 and scan.series[0].analysable
    vol = timed_load(tmp_path / "s")
    assert vol.shape[0] == 6 and not vol.not_analysable_reason
    assert any(paths[5].name in w and "ImageOrientationPatient" in w for w in vol.warnings)


@pytest.mark.parametrize("ps", [["0.7", "0"], ["-0.7", "-0.7"], ["0", "0"], ["1e30", "1e30"]])
def test_implausible_pixel_spacing_is_not_used(tmp_path, synthetic, ps):
    write(tmp_path / "s", synthetic, {k: {"PixelSpacing": ps} for k in range(6)})
    vol = timed_load(tmp_path / "s")
    assert "PixelSpacing of 6 of 6 slice(s) is invalid" in joined(vol)
    assert vol.spacing_mm[1:] == (1.0, 1.0) and "1 mm pixels assumed" in joined(vol)


def test_implausible_slice_spacing(tmp_path, synthetic):
    changes = {k: {"SpacingBetweenSlices": "1e30", "ImagePositionPatient": None} for k in range(6)}
    vol = timed_load(tmp_path / "s") if write(tmp_path / "s", synthetic, changes) else None
    assert vol.spacing_mm[0] == 1.0 and "SpacingBetweenSlices '1e30' mm is implausible" in joined(vol)
    stretched = {k: {"ImagePositionPatient": ["-100", "-100", str(50 - 80 * k)]} for k in range(6)}
    write(tmp_path / "t", synthetic, stretched)
    vol = timed_load(tmp_path / "t")
    assert "slice spacing 80 mm is implausible for CT" in vol.not_analysable_reason


def test_empty_or_cut_files_at_either_end_of_the_stack_are_named(tmp_path, synthetic):
    paths = write(tmp_path / "s", synthetic)
    paths[0].write_bytes(b"")                        # most superior slice: empty
    paths[-1].write_bytes(paths[-1].read_bytes()[:100])  # most inferior: cut inside the preamble
    vol = timed_load(tmp_path / "s")
    assert vol.shape[0] == 4
    text = joined(vol)
    assert f"{paths[0].name} (empty)" in text and f"{paths[-1].name} (100 bytes, too short to be DICOM)" in text
    assert "those slices are missing" in text


@pytest.mark.parametrize("change, reason", [
    ({"RescaleSlope": "-1"}, "RescaleSlope -1 is negative: CT densities would be inverted"),
    ({"RescaleIntercept": "-32768"}, "HU is far outside the CT range"),
    ({"RescaleSlope": "1e30"}, "far outside the CT range"),
])
def test_modality_lut_far_outside_ct_is_not_analysable(tmp_path, synthetic, change, reason):
    write(tmp_path / "s", synthetic, {k: dict(change) for k in range(6)})
    vol = timed_load(tmp_path / "s")
    assert reason in vol.not_analysable_reason


def test_scan_can_be_cancelled(tmp_path, synthetic):
    from threading import Event

    from ctscreen.errors import Cancelled

    write(tmp_path / "s", synthetic)
    flag = Event()
    flag.set()
    with pytest.raises(Cancelled):
        scan_folder(tmp_path / "s", cancel=flag)


# --------------------------------------------------------------------------- fuzz, in process


def _fuzz(bases: list[dm.Base], seeds, tmp_path: Path, kinds_for=None) -> Counter:
    counts: Counter = Counter()
    slowest = 0.0
    for i, seed in enumerate(seeds):
        folder = tmp_path / f"c{seed}"
        case = dm.build_case(folder, bases[i % len(bases)], seed, kinds_for(i) if kinds_for else None)
        t = time.perf_counter()
        try:
            with deadline(CASE_LIMIT_S * 2):
                outcome, detail = dm.run_case(folder, case)
        except TimeoutError:
            outcome, detail = "hang", f"over {CASE_LIMIT_S * 2} s"
        dt = time.perf_counter() - t
        slowest = max(slowest, dt)
        assert outcome not in BAD, f"seed {seed} on {case.base}, kinds {case.kinds}: {outcome}: {detail}"
        assert dt < CASE_LIMIT_S, f"seed {seed} {case.kinds}: {dt:.1f} s"
        counts[outcome] += 1
        for p in sorted(folder.rglob("*"), reverse=True):  # keep the tmp folder small
            if p.is_symlink() or p.is_file() or p.is_fifo():
                p.unlink()
    return counts


def test_fuzz_every_kind_alone(tmp_path, synthetic):
    names = sorted(dm.KINDS)
    counts = _fuzz([synthetic], range(len(names)), tmp_path, kinds_for=lambda i: (names[i],))
    assert counts["loaded_with_warning"] >= len(dm.KINDS) // 2


def test_fuzz_random_combinations(tmp_path, synthetic):
    bases = [synthetic]
    if HAVE_SHARED:
        bases.append(dm.real_base("lungpet", 6, downsample=8))
    counts = _fuzz(bases, range(1000, 1200), tmp_path)
    assert sum(counts.values()) == 200 and counts["loaded_with_warning"] > 100 and counts["refused_clear"] > 0


@pytest.mark.skipif(not HAVE_SHARED, reason="shared DICOM data not found")
def test_fuzz_real_jpeg_lossless_slices(tmp_path):
    counts = _fuzz([dm.real_base("p001", 4)], range(5000, 5024), tmp_path)
    assert sum(counts.values()) == 24


# --------------------------------------------------------------------------- child processes


@pytest.mark.skipif(not HAVE_SHARED, reason="shared DICOM data not found")
def test_fuzz_cases_in_child_processes_with_the_benchmark_limits():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import fuzz_loader

    out = fuzz_loader.run(6, 777, timeout_s=20.0, mem_gb=4.0, workers=2, n_slices=4, progress=None)
    assert out["cases_run"] == 6
    assert all(out["counts"][k] == 0 for k in BAD), out["bad_cases"]


# --------------------------------------------------------------------------- ctscreen analyze


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    import torch

    from ctscreen.inference.models import save_model
    from ctscreen.inference.nets import UNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(UNet(channels=(4, 8, 16)), "unet", path, {"version": "fuzz-1", "input_size": 64})
    return str(path)


@pytest.mark.parametrize("change, expect", [
    ({"RescaleSlope": "-1"}, "densities would be inverted"),
    ({"RescaleIntercept": "-32768"}, "far outside the CT range"),
    ({"ImageOrientationPatient": ["1", "0", "0", "1", "0", "0"]}, "slice orientation invalid"),
    ({"ImagePositionPatient": ["0", "0", "0"], "ImageOrientationPatient": None}, "slice orientation unknown"),
])
def test_analyze_mutated_series_exits_2_with_one_line(capsys, tmp_path, synthetic, tiny_model, change, expect):
    from ctscreen.cli import main

    write(tmp_path / "s", synthetic, {k: dict(change) for k in range(6)})
    out = tmp_path / "out"
    with deadline(120):
        code = main(["analyze", str(tmp_path / "s"), "--out", str(out), "--model", tiny_model])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("ctscreen analyze: error:")]
    assert code == 2 and len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_analyze_memory_error_or_unexpected_error_is_one_line(capsys, tmp_path, synthetic, tiny_model, monkeypatch):
    from ctscreen.cli import analyze as analyze_cli
    from ctscreen.cli import main

    write(tmp_path / "s", synthetic)
    for exc, expect in ((MemoryError(), "out of memory while analysing"),
                        (IndexError("list index out of range"), "unexpected error while analysing")):
        def boom(*a, exc=exc, **k):
            raise exc
        monkeypatch.setattr(analyze_cli, "analyze_folder", boom)
        code = main(["analyze", str(tmp_path / "s"), "--out", str(tmp_path / "out"), "--model", tiny_model])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expect in err and "Traceback" not in err


def test_analyze_in_a_fresh_process_on_the_old_hang_cases(tmp_path, synthetic, tiny_model):
    """The FIFO and NumberOfFrames 10^12 of the issue: a finished run, no traceback, within a minute."""
    paths = write(tmp_path / "s", synthetic, {0: {"NumberOfFrames": "1000000000000"}})
    os.mkfifo(tmp_path / "s" / "pipe.dcm")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cli = "import sys; from ctscreen.cli import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", cli, "analyze", str(tmp_path / "s"), "--out", str(out),
                           "--model", tiny_model, "--png", "none", "--no-seg", "--cam", "none"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.json").exists()
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("ctscreen analyze: warning:")]
    assert any("NumberOfFrames is 1000000000000" in ln and paths[0].name in ln for ln in notes), proc.stderr
    assert "UserWarning" not in proc.stderr  # the loader reports the damage itself, once


@pytest.mark.skipif(not HAVE_SHARED, reason="shared DICOM data not found")
def test_cut_jpeg_stream_is_not_decoded_silently(tmp_path):
    """Found by the long run (seed 21730): a JPEG Lossless file cut inside its stream, whose Pixel Data
    length says more than the file holds, decoded without a word (the decoder filled in the rest)."""
    base = dm.real_base("p001", 8)
    case = dm.build_case(tmp_path / "s", base, 21730)
    assert case.kinds == ("pixel_length_huge", "truncate_anywhere")
    vol = load_series(tmp_path / "s")
    assert vol.shape[0] == 7
    assert any("cut short (no end-of-image marker)" in w and "ASSH_119.dcm" in w for w in vol.warnings), vol.warnings
