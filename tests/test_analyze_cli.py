"""``ctscreen analyze``: exit codes, one-line reasons, outputs, nothing half-written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctscreen import RESEARCH_NOTICE
from ctscreen.cli import main
from ctscreen.cli import analyze as analyze_cli
from ctscreen.io import results_folder
from ctscreen.inference.models import LoadedModel, available_models, save_model
from ctscreen.inference.nets import UNet

from conftest import EDGE_CASES, P001, synthetic_series

N = 96


def _chest_pixels(k: int, rows: int, cols: int) -> np.ndarray:
    """Stored values (HU + 1024) of a synthetic chest: body, two lungs, a dense patch."""
    yy, xx = np.mgrid[:rows, :cols]
    hu = np.full((rows, cols), -1000, np.int16)
    hu[((yy - rows / 2) / (0.42 * rows)) ** 2 + ((xx - cols / 2) / (0.46 * cols)) ** 2 < 1] = 40
    for cx in (0.3 * cols, 0.7 * cols):
        hu[((yy - rows / 2) / (0.28 * rows)) ** 2 + ((xx - cx) / (0.15 * cols)) ** 2 < 1] = -850
    if k in (2, 3):
        hu[int(0.45 * rows):int(0.55 * rows), int(0.25 * cols):int(0.33 * cols)] = -300
    return (hu + 1024).astype(np.uint16)


@pytest.fixture(scope="module")
def chest_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chest")
    s = synthetic_series(root, n=6, name="chest", rows=N, cols=N, pixel_spacing=(3.0, 3.0), spacing_z=5.0,
                         pixels=_chest_pixels)
    return s.folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A random UNet whose head makes every lung voxel ground-glass, so every export has content."""
    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 4.0, -4.0]))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", path, {"version": "test-1", "input_size": 64})
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["analyze", *argv])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ctscreen analyze: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_success_writes_reports_pngs_and_seg(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu")
    assert code == 0, stderr
    names = sorted(p.name for p in out.iterdir())
    assert {"report.json", "report.csv", "lesions_seg.dcm"} <= set(names)
    assert any(n.startswith("slice_") and n.endswith(".png") for n in names)
    assert not any(n.startswith(analyze_cli.STAGING_PREFIX) for n in names)
    report = json.loads((out / "report.json").read_text())
    assert report  # content is the export module's contract; here: it parses
    assert len(stdout.strip().splitlines()) == 1  # one paragraph
    assert RESEARCH_NOTICE in stdout and str(out) in stdout
    assert "segmentation" in stderr and "%" in stderr  # the progress bar went to stderr


def test_existing_output_needs_force_and_is_left_intact(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("old")
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu", "--png", "none", "--no-seg")
    assert code == 2
    assert "report.json" in _error_line(stderr) and "--force" in stderr
    assert (out / "report.json").read_text() == "old" and stdout == ""
    code, _, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                           "--device", "cpu", "--png", "none", "--no-seg", "--force", "--cam", "none")
    assert code == 0, stderr
    assert (out / "report.json").read_text() != "old"
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "report.json"]
    # --force replaces a whole earlier run: a slice PNG this run does not write does not survive it
    (out / "slice_0099.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    code, _, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                           "--device", "cpu", "--no-seg", "--force", "--cam", "none")
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert "slice_0099.png" not in names and "notes.txt" in names and "slice_0003.png" in names


@pytest.mark.parametrize("case", ["empty", "missing", "mr", "model", "cuda"])
def test_bad_inputs_exit_2_with_one_line(capsys, case, chest_folder, tiny_model, tmp_path):
    folder, model, extra = chest_folder, tiny_model, []
    expect = {"empty": "contains no DICOM images", "missing": "does not exist", "mr": "no CT series",
              "model": "model weights not found", "cuda": "cuda"}[case]
    if case == "empty":
        folder = tmp_path / "empty"
        folder.mkdir()
    elif case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "mr":
        folder = tmp_path / "mr"
        folder.mkdir()
        shutil.copy(EDGE_CASES / "MR_Implicit_Little.dcm", folder)
    elif case == "model":
        model = str(tmp_path / "no_such_model.pt")
    elif case == "cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra = ["--device", "cuda"]
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(folder), "--out", str(out), "--model", model, *extra)
    assert code == 2
    assert expect in _error_line(stderr)
    assert stdout == "" and not out.exists()


@pytest.mark.parametrize("model,layer,valid", [
    (None, "decoder9", "decoder1, decoder2, decoder3, decoder4, bottleneck"),
    ("deeplab", "decoder4", "aspp, decoder, layer3, layer2"),
])
def test_unknown_cam_layer_exits_2_before_any_work(capsys, monkeypatch, chest_folder, tmp_path, model, layer, valid):
    def no_work(*a, **k):
        raise AssertionError("the model was loaded for a layer that could be refused before")

    monkeypatch.setattr("ctscreen.inference.models.load_model", no_work)
    out = tmp_path / "out"
    argv = [str(chest_folder), "--out", str(out), "--cam-layer", layer] + (["--model", model] if model else [])
    code, stdout, stderr = _run(capsys, *argv)
    assert code == 2
    line = _error_line(stderr)
    assert f"'{layer}'" in line and line.endswith(f"choose one of: {valid}")
    assert stdout == "" and not out.exists()


def test_cam_layer_of_a_weights_file_is_checked_against_its_layers(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu", "--cam-layer", "decoder4")  # the tiny UNet has 3 levels
    assert code == 2
    assert _error_line(stderr).endswith("choose one of: decoder1, decoder2, bottleneck")
    assert stdout == "" and not out.exists()


def test_cam_layer_is_used(capsys, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu", "--png", "none", "--no-seg", "--cam-layer", "decoder1")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert report["gradcam"]["layer"] == "decoder1" and report["gradcam"]["computed_slices"]
    assert "at layer decoder1" in stdout


def test_interrupt_during_analysis_or_export_leaves_nothing(capsys, monkeypatch, chest_folder, tiny_model, tmp_path):
    out = tmp_path / "out"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(LoadedModel, "prepare", interrupted)  # Ctrl-C in the middle of the segmentation
        code, stdout, _ = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model, "--device", "cpu")
    assert code == 130 and stdout == "" and not out.exists()

    real = results_folder.write_exports

    def write_some_then_interrupt(result, folder, png, seg, include_patient=False):
        real(result, folder, "none", False)  # report.json/csv written to staging ...
        raise KeyboardInterrupt  # ... then Ctrl-C before the rest

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        m.setattr(results_folder, "write_exports", write_some_then_interrupt)
        code, _, _ = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model, "--device", "cpu",
                          "--cam", "none")
    assert code == 130
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # the user's file stays, nothing of ours


@pytest.mark.slow
def test_p001_end_to_end_with_the_shipped_model(capsys, tmp_path):
    if not available_models():
        pytest.skip("no shipped model weights in ctscreen/resources/models yet")
    if not P001.exists():
        pytest.skip(f"{P001} not found")
    out = tmp_path / "p001"
    code, stdout, stderr = _run(capsys, str(P001), "--out", str(out), "--device", "cpu", "--png", "montage")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.csv").exists() and (out / "montage.png").exists()
    assert (out / "lesions_seg.dcm").exists()  # P001 is a COVID-19 case: lesions are expected
    assert "148 slices" in stdout and RESEARCH_NOTICE in stdout
    assert report


@pytest.mark.parametrize("png, expect", [("all", 6), ("montage", 0), ("none", 0)])
def test_png_choices(capsys, chest_folder, tiny_model, tmp_path, png, expect):
    out = tmp_path / png
    code, _, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model, "--device", "cpu",
                           "--png", png, "--no-seg", "--cam", "none")
    assert code == 0, stderr
    names = {p.name for p in out.iterdir()}
    assert len([n for n in names if n.startswith("slice_")]) == expect
    assert ("montage.png" in names) == (png == "montage")
    assert "lesions_seg.dcm" not in names  # --no-seg


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


def test_progress_bar_on_a_terminal_and_in_a_log():
    from ctscreen.progress import ProgressBar, format_eta

    assert format_eta(None) == "" and format_eta(65) == "ETA 1:05" and format_eta(3725) == "ETA 1:02:05"
    tty = _Stream(True)
    bar = ProgressBar(stream=tty, min_interval_s=0)
    bar.update("segmentation", 0.42, 31, "segmentation 40/139")
    bar.update("segmentation", 1.0, 0)
    bar.close()
    assert tty.text.startswith("\r") and " 42%" in tty.text and "ETA 0:31" in tty.text
    assert tty.text.endswith("\n") and tty.text.count("\n") == 1  # one line, redrawn in place
    log = _Stream(False)
    bar = ProgressBar(stream=log)
    for i in range(101):
        bar.update("segmentation", i / 100)
    bar.close()
    lines = log.text.splitlines()
    assert len(lines) == 11 and "\r" not in log.text  # one line per 10 %, no carriage returns


def test_patient_identity_only_with_include_patient(capsys, chest_folder, tiny_model, tmp_path):
    reports = {}
    for flag in ((), ("--include-patient",)):
        out = tmp_path / ("with" if flag else "without")
        code, _, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                               "--device", "cpu", "--png", "none", "--no-seg", *flag)
        assert code == 0, stderr
        reports[bool(flag)] = json.loads((out / "report.json").read_text())["series"]
    assert "patient_name" not in reports[False] and "patient_id" not in reports[False]
    assert "patient_name" in reports[True] and "patient_id" in reports[True]


def test_seg_is_written_while_the_pngs_are(capsys, monkeypatch, chest_folder, tiny_model, tmp_path):
    """The SEG (mostly Python) is built in a thread while the report and PNGs are written."""
    import threading

    from ctscreen.io import export_seg

    seg_started, pngs_started = threading.Event(), threading.Event()
    saw = {}
    real_seg, real_exports = export_seg.write_seg, results_folder.write_exports

    def seg_alongside(*a, **k):
        seg_started.set()
        saw["pngs while seg"] = pngs_started.wait(10)
        return real_seg(*a, **k)

    def pngs_alongside(*a, **k):
        pngs_started.set()
        saw["seg while pngs"] = seg_started.wait(10)
        return real_exports(*a, **k)

    monkeypatch.setattr(export_seg, "write_seg", seg_alongside)
    monkeypatch.setattr(results_folder, "write_exports", pngs_alongside)
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                                "--device", "cpu", "--cam", "none")
    assert code == 0, stderr
    assert saw == {"pngs while seg": True, "seg while pngs": True}
    names = sorted(p.name for p in out.iterdir())
    assert names[:3] == ["lesions_seg.dcm", "report.csv", "report.json"] and len(names) > 3
    assert all(n.startswith("slice_") for n in names[3:])  # no staging folder left
    assert "no DICOM SEG" not in stderr


def test_interrupt_or_failure_beside_the_seg_thread_leaves_nothing(capsys, monkeypatch, chest_folder, tiny_model,
                                                                   tmp_path):
    """Ctrl-C while the SEG is still being built: the export waits for it, then removes everything."""
    import time

    from ctscreen.io import export_seg

    real_seg, real_exports = export_seg.write_seg, results_folder.write_exports
    done = []

    def slow_seg(*a, **k):
        time.sleep(0.5)
        path = real_seg(*a, **k)  # writes into the staging folder after the interrupt
        done.append(path)
        return path

    def interrupted(result, folder, png, seg, include_patient=False):
        real_exports(result, folder, "none", False)
        raise KeyboardInterrupt

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        m.setattr(export_seg, "write_seg", slow_seg)
        m.setattr(results_folder, "write_exports", interrupted)
        code, stdout, _ = _run(capsys, str(chest_folder), "--out", str(out), "--model", tiny_model,
                               "--device", "cpu", "--cam", "none")
    assert code == 130 and stdout == ""
    assert done, "the SEG thread finished before the staging folder was removed"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    def disk_full(*a, **k):  # the SEG thread fails to write: the whole export fails, nothing half-written
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(export_seg, "write_seg", disk_full)
        code, stdout, stderr = _run(capsys, str(chest_folder), "--out", str(tmp_path / "new"), "--model",
                                    tiny_model, "--device", "cpu", "--cam", "none")
    assert code == 2 and stdout == "" and "No space left on device" in stderr
    assert not (tmp_path / "new").exists()


def test_folder_scan_notes_are_shown_before_the_analysis(capsys, chest_folder, tiny_model, tmp_path):
    import os

    folder = tmp_path / "study"
    shutil.copytree(chest_folder, folder)
    os.mkfifo(folder / "pipe.dcm")  # skipped by the scan, and said so
    (folder / "broken.dcm").write_bytes(b"DICM" * 3)
    code, _, stderr = _run(capsys, str(folder), "--out", str(tmp_path / "out"), "--model", tiny_model,
                           "--device", "cpu", "--png", "none", "--no-seg")
    assert code == 0, stderr
    notes = [ln for ln in stderr.splitlines() if ln.startswith("ctscreen analyze: note:")]
    assert any("pipe.dcm" in ln for ln in notes), stderr
