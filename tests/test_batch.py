"""``ctscreen batch``: discovery, local workers, Dask, resumable reruns, failures, interruption.

Studies are small: 10 middle slices of the shared COVID-CT-MD series P001 and
normal001, copied into ``tmp_path`` (the sources are never touched), analysed
with ``--cam none --png none``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from ctscreen import RESEARCH_NOTICE
from ctscreen.batch import BatchOptions, discover_studies, run_batch
from ctscreen.batch.study import BATCH_JSON, screening_columns
from ctscreen.cli import main

from conftest import DICOM_DATA

CTMD = DICOM_DATA / "covid-ct-md"
N_SLICES = 10
FAST = ["--png", "none", "--cam", "none"]

pytestmark = [
    pytest.mark.skipif(not (CTMD / "P001").is_dir(), reason="shared COVID-CT-MD series not available"),
    pytest.mark.slow,
    # the corrupt study's cut-short files make pydicom warn while their headers are scanned
    pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning"),
]


def _middle(series: str, n: int) -> list[Path]:
    """The ``n`` middle slices (by InstanceNumber) of a shared series: chest with lung."""
    files = sorted((CTMD / series).glob("*.dcm"))
    ranked = sorted(files, key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber))
    mid = len(ranked) // 2
    return ranked[mid - n // 2: mid - n // 2 + n]


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, folder / f.name)
    return folder


def _second_series(files: list[Path], folder: Path) -> Path:
    """A copy of ``files`` as another series of the same study (new Series/SOP UIDs)."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "second series"
        ds.save_as(folder / f.name)
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Two studies: P001 (its series in P001/, a smaller second series in P001_b/) and normal001."""
    root = tmp_path_factory.mktemp("archive")
    p001 = _middle("P001", N_SLICES)
    _copy(p001, root / "P001")
    _second_series(p001[:8], root / "P001_b")
    _copy(_middle("normal001", N_SLICES), root / "normal001")
    (root / "notes").mkdir()
    (root / "notes" / "README.txt").write_text("not a study\n")
    return root


def _patient_ids(root: Path) -> set[str]:
    ids = set()
    for f in root.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ids |= {str(ds.get("PatientID") or ""), str(ds.get("PatientName") or "")} - {""}
    return ids


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _rows(out: Path) -> dict[str, dict]:
    return {r["study_id"]: r for r in _summary(out)["studies"]}


def _no_staging(out: Path) -> None:
    left = [p.name for p in out.iterdir() if p.name.startswith(".ctscreen-")]
    assert not left, left


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A small random UNet: fast reruns where the numbers do not matter."""
    import torch

    from ctscreen.inference.models import save_model
    from ctscreen.inference.nets import UNet

    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", path, {"version": "test-1", "input_size": 64})
    return str(path)


def test_discovery_one_study_per_study_uid(archive):
    d = discover_studies(archive)
    assert len(d.studies) == 2 and d.ignored_folders == 1  # notes/ holds no DICOM
    p001 = next(s for s in d.studies if s.series["series_count"] == 2)
    normal = next(s for s in d.studies if s.series["series_count"] == 1)
    # P001's two series (two folders) are one study; the 14-slice one is analysed, the other named in a note
    assert p001.series["ct_series_count"] == 2 and len(p001.files) == N_SLICES
    assert all(Path(f).parent.name == "P001" for f in p001.files)
    assert "second series" in p001.notes[0]
    assert not p001.exclusive  # its folders' common parent holds normal001 too: the job scans its files only
    assert normal.exclusive and Path(normal.folder).name == "normal001"
    # folder names are patient-free hashes unless asked
    for s in d.studies:
        assert s.study_id.startswith("study-") and len(s.study_id) == len("study-") + 12
        assert not s.problem
    assert discover_studies(archive).studies == d.studies  # stable
    ids = _patient_ids(archive / "normal001")
    named = discover_studies(archive, include_patient=True)
    assert any(any(i in s.study_id for i in ids) for s in named.studies)
    # the input key follows the files: a rewritten file changes it
    f = Path(normal.files[0])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        again = {s.study_id: s.input_key for s in discover_studies(archive).studies}
        assert again[normal.study_id] != normal.input_key and again[p001.study_id] == p001.input_key
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def local_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    code = main(["batch", str(archive), "--out", str(out), "--workers", "2", *FAST])
    return code, out, _rows(out) if (out / "summary.json").is_file() else {}


def test_local_run_with_two_workers(archive, local_run):
    code, out, _ = local_run
    assert code == 0
    summary = _summary(out)
    assert summary["research_notice"] == RESEARCH_NOTICE and summary["workers"] == 2
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 0 and not summary["interrupted"]
    rows = _rows(out)
    for sid, row in rows.items():
        folder = out / sid
        assert {"report.json", "report.csv", BATCH_JSON} <= {p.name for p in folder.iterdir()}
        report = json.loads((folder / "report.json").read_text())
        assert row["lesion_volume_ml"] == pytest.approx(report["totals"]["lesion_volume_ml"])
        assert row["percent_involved"] == pytest.approx(report["totals"]["percent_involved"])
        assert row["status"] == "done" and row["reused"] is False and row["slice_count"] == N_SLICES
        assert row["lung_volume_ml"] > 200  # 10 mid-chest slices of 2 mm
        if report.get("screening"):  # the verdict columns come from the result's screening
            scr = report["screening"]
            assert row["screening_category"] == scr["category"]
            if scr.get("probabilities"):
                p = [row["p_covid19"], row["p_other_pneumonia"], row["p_no_pneumonia"]]
                assert sum(p) == pytest.approx(1.0, abs=1e-3)
                assert row["p_covid19"] == pytest.approx(scr["probabilities"]["covid19"])
    # the COVID-19 study has lesions; its second, smaller CT series is named in the notes, not analysed
    p001 = next(r for r in rows.values() if r["series_count"] == 2)
    assert p001["lesion_volume_ml"] > 0 and "second series" in p001["notes"]
    # no patient name/ID or source path in the summaries
    text = (out / "summary.csv").read_text() + (out / "summary.json").read_text()
    for ident in _patient_ids(archive):
        assert ident not in text
    assert str(archive) not in text
    with open(out / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert {"screening_category", "p_covid19", "p_other_pneumonia", "p_no_pneumonia", "severity_total"} <= set(header)
    _no_staging(out)


def test_rerun_skips_finished_and_reruns_after_a_change(archive, local_run, tiny_model, capsys):
    code, out, _ = local_run
    assert code == 0
    before = {p.name: p.stat().st_ino for p in out.iterdir() if p.is_dir()}
    assert main(["batch", str(archive), "--out", str(out), "--workers", "2", *FAST]) == 0
    s = _summary(out)
    assert s["counts"]["reused"] == 2 and s["counts"]["analysed_now"] == 0 and s["counts"]["done"] == 2
    assert {p.name: p.stat().st_ino for p in out.iterdir() if p.is_dir()} == before  # folders untouched
    assert all(r["reused"] for r in s["studies"])
    # another model: everything again (in this process, --workers 0)
    assert main(["batch", str(archive), "--out", str(out), "--workers", "0", "--model", tiny_model, *FAST]) == 0
    s = _summary(out)
    assert s["counts"]["analysed_now"] == 2 and all(r["model_version"] == "test-1" for r in s["studies"])
    # other options: again, and the new export is there
    argv = ["batch", str(archive), "--out", str(out), "--workers", "0", "--model", tiny_model, "--png", "montage",
            "--cam", "none"]
    assert main(argv) == 0
    assert _summary(out)["counts"]["analysed_now"] == 2
    assert all((out / sid / "montage.png").is_file() for sid in _rows(out))
    # one input file touched: only that study again
    normal = next(s for s in discover_studies(archive).studies if s.series["series_count"] == 1)
    f = Path(normal.files[3])
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert main(argv) == 0
        s = _summary(out)
        assert s["counts"]["analysed_now"] == 1 and _rows(out)[normal.study_id]["reused"] is False
    finally:
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    _no_staging(out)
    capsys.readouterr()


def test_corrupt_study_is_recorded_as_failed_and_the_others_finish(tmp_path, tiny_model, capsys):
    root = tmp_path / "root"
    _copy(_middle("normal001", N_SLICES), root / "normal001")
    bad = _copy(_middle("P001", N_SLICES), root / "P001")
    for f in bad.iterdir():  # pixel data cut short: the headers scan, the images do not decode
        data = f.read_bytes()
        f.write_bytes(data[: len(data) * 2 // 3])
    junk = root / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"x{i}.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(200))
    out = tmp_path / "out"
    argv = ["batch", str(root), "--out", str(out), "--workers", "0", "--model", tiny_model, *FAST]
    assert main(argv) == 1  # some studies failed
    err = capsys.readouterr().err
    rows = list(_rows(out).values())
    assert sorted(r["status"] for r in rows) == ["done", "failed", "failed"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert all(r["reason"] for r in failed)
    assert any("decode" in r["reason"].lower() or "pixel" in r["reason"].lower() or "truncat" in r["reason"].lower()
               or "cannot be" in r["reason"].lower() for r in failed), failed
    assert str(root) not in (out / "summary.json").read_text()  # reasons name no path
    assert "failed" in err
    for r in failed:  # recorded in its own folder, without any partial export
        assert sorted(p.name for p in (out / r["study_id"]).iterdir()) == [BATCH_JSON]
    # a rerun does not retry the failures ... unless asked
    main(argv)
    assert _summary(out)["counts"]["analysed_now"] == 0
    main([*argv, "--retry-failed"])
    assert _summary(out)["counts"]["analysed_now"] == 2
    _no_staging(out)


def test_interrupt_inside_a_study_leaves_no_half_written_folder(archive, tmp_path, tiny_model, monkeypatch):
    """A Ctrl-C while a study's exports are being written: nothing of that study is left."""
    from ctscreen.io import results_folder

    real = results_folder.export_staged
    calls = []

    def export_then_interrupt(result, out, *a, **k):
        real(result, out, *a, **k)  # the files are in the staging folder now
        calls.append(out)
        raise KeyboardInterrupt

    monkeypatch.setattr(results_folder, "export_staged", export_then_interrupt)
    out = tmp_path / "out"
    d = discover_studies(archive)
    gen = run_batch(d, out, BatchOptions(model=tiny_model, png="none", cam="none"), workers=0)
    events = []
    with pytest.raises(StopIteration) as stop:
        while True:
            events.append(next(gen))
    summary = stop.value.value
    assert calls and summary.interrupted
    assert summary.counts["not_run"] == 2 and summary.counts["done"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json"]


def test_ctrl_c_stops_workers_and_writes_the_summary(archive, tmp_path):
    """A real Ctrl-C (SIGINT to the process group, as a terminal sends it) during a local run."""
    out = tmp_path / "out"
    # A terminal's foreground process gets Ctrl-C as KeyboardInterrupt; a test run launched in the
    # background (nohup ... &) inherits SIGINT ignored, and Python then installs no handler: restore it.
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from ctscreen.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "batch", str(archive), "--out", str(out), "--workers", "1",
                             *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines: list[str] = []
    first_done = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "[1/2]" in line:
                first_done.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        # Signal right after the first study is reported: the worker is then inside the second one
        # (about a second of work), so the Ctrl-C always lands on a study in flight. Waiting for a
        # staging folder instead could catch the last study's export and race its end on a busy machine.
        assert first_done.wait(90), "".join(lines)
        assert proc.poll() is None, "".join(lines)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    stderr = "".join(lines)
    proc.stdout.read()
    assert proc.returncode == 130, stderr
    s = _summary(out)
    assert s["interrupted"] and s["counts"]["not_run"] >= 1
    _no_staging(out)
    for p in out.iterdir():  # what is there is complete
        if p.is_dir():
            assert (p / BATCH_JSON).is_file() and (p / "report.json").is_file()
    # the workers are gone: nothing of the run is still alive in its process group
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the interrupted run")


def test_dask_local_cluster_gives_the_same_summary_as_local(archive, local_run, tmp_path, capsys):
    code, _, local = local_run  # the rows as the local run wrote them (a later test reruns into its folder)
    assert code == 0
    out = tmp_path / "out"
    assert main(["batch", str(archive), "--out", str(out), "--engine", "dask", "--workers", "2", *FAST]) == 0
    capsys.readouterr()
    s = _summary(out)
    assert s["engine"] == "dask" and s["workers"] == 2 and s["counts"]["done"] == 2
    dask = _rows(out)
    assert local.keys() == dask.keys()
    for sid in local:
        a, b = local[sid], dask[sid]
        for col in ("status", "series_description", "slice_count", "severity_total", "model_version"):
            assert a[col] == b[col], col
        for col in ("lung_volume_ml", "lesion_volume_ml", "percent_involved"):
            assert b[col] == pytest.approx(a[col], rel=1e-3, abs=1e-3), col
        assert b["worker"].startswith("tcp://")
    assert len({r["worker"] for r in dask.values()}) >= 1
    _no_staging(out)


def test_screening_columns_from_the_result_or_the_report():
    class _S:
        def to_dict(self):
            return {"category": "typical", "category_label": "Typical appearance", "verdict": "covid19",
                    "probabilities": {"covid19": 0.9, "other_pneumonia": 0.06, "no_pneumonia": 0.04}}

    class _R:
        screening = _S()

    cols = screening_columns(_R())
    assert cols["screening_category"] == "typical" and cols["p_covid19"] == pytest.approx(0.9)
    assert cols["p_no_pneumonia"] == pytest.approx(0.04) and cols["screening_verdict"] == "covid19"
    from_report = screening_columns(None, {"screening": _S().to_dict()})
    assert from_report == cols
    assert screening_columns(type("R", (), {"screening": None})(), {}) == {}


def test_batch_package_loads_neither_torch_nor_qt():
    code = ("import sys, ctscreen.batch, ctscreen.cli.batch; "
            "print([m for m in ('torch', 'PySide6', 'pyqtgraph', 'distributed') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pacs_query_as_the_source(tmp_path, tiny_model, monkeypatch, capsys):
    """The studies a DICOMweb search finds on a real Orthanc are retrieved, analysed, and skipped on a rerun."""
    import orthanc_server

    if orthanc_server.available():
        pytest.skip(orthanc_server.available())
    from ctscreen.batch.discover import study_id_for

    slices = {name: _middle(name, 8) for name in ("P001", "normal001")}
    server = orthanc_server.OrthancServer(tmp_path / "orthanc").start()
    try:
        for files in slices.values():
            server.upload(files)
        monkeypatch.setenv("CTSCREEN_PACS_SECRET", orthanc_server.PASSWORD)
        out, cache = tmp_path / "out", tmp_path / "cache"
        argv = ["batch", "--dicomweb", server.url, "--user", orthanc_server.USER, "--modality", "CT",
                "--cache", str(cache), "--out", str(out), "--workers", "0", "--model", tiny_model, *FAST]
        assert main(argv) == 0
        rows = _rows(out)
        uids = {str(pydicom.dcmread(f[0], stop_before_pixels=True).StudyInstanceUID) for f in slices.values()}
        assert set(rows) == {study_id_for(u) for u in uids}
        assert all(r["status"] == "done" and r["slice_count"] == 8 for r in rows.values())
        assert main(argv) == 0  # a rerun finds everything cached and finished
        assert _summary(out)["counts"]["reused"] == 2
        # a PACS that does not answer: one line, no hang
        server.stop()
        assert main(argv) == 2
        assert "error" in capsys.readouterr().err.splitlines()[-1]
    finally:
        server.stop()


def test_a_killed_worker_is_replaced_and_its_study_retried(archive, tmp_path, tiny_model):
    """A worker process that dies (out of memory, killed) does not stop the batch."""
    import threading

    import psutil

    out = tmp_path / "out"
    killed = []

    def kill_first_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            if out.is_dir() and any(p.name.startswith(".ctscreen-staging-") for p in out.iterdir()):
                for child in psutil.Process().children(recursive=True):
                    if "resource_tracker" not in " ".join(child.cmdline()):
                        child.kill()
                        killed.append(child.pid)
                        return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_first_worker, daemon=True)
    watcher.start()
    gen = run_batch(discover_studies(archive), out, BatchOptions(model=tiny_model, png="none", cam="none"), workers=1)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    watcher.join()
    summary = stop.value.value
    assert killed, "no worker was seen inside a study"
    assert summary.counts["done"] == 2 and summary.extra["pool_restarts"] == 1
    _no_staging(out)


def test_a_result_caught_between_its_two_renames_is_restored(tmp_path):
    from ctscreen.batch.engine import clean_staging
    from ctscreen.batch.study import OLD, STAGING

    out = tmp_path / "out"
    (out / f"{OLD}study-abc-x1y2" / "r").mkdir(parents=True)  # the earlier result, moved aside ...
    (out / f"{OLD}study-abc-x1y2" / "r" / BATCH_JSON).write_text("{}")
    (out / f"{STAGING}study-abc-k3j4").mkdir()  # ... and the new one never moved in
    (out / f"{STAGING}study-abc-k3j4" / "report.json").write_text("{}")
    assert clean_staging(out) == 2
    assert sorted(p.name for p in out.iterdir()) == ["study-abc"]
    assert (out / "study-abc" / BATCH_JSON).is_file()
