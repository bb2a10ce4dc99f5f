"""PACS query/retrieve/send against a real Orthanc (DICOMweb and DIMSE), plus the error paths.

The Orthanc server is started by :mod:`tests.orthanc_server` on free localhost ports with a
temporary storage folder and stopped at the end of the module. 20 slices of the shared P001
series (JPEG Lossless) are uploaded through Orthanc's REST API, found by query, retrieved by
WADO-RS and by C-GET / C-MOVE, compared with the source files, analysed with a tiny model, and
the SEG and key images are sent back by STOW-RS and C-STORE and found again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import P001  # noqa: E402
from orthanc_server import AET, PASSWORD, USER, OrthancServer, available, free_port  # noqa: E402

from ctscreen.cli import main as cli_main  # noqa: E402
from ctscreen.errors import Cancelled  # noqa: E402
from ctscreen.io.pacs import (PacsError, ServerConfig, StudyQuery, connect, load_servers,  # noqa: E402
                              parse_date_range, parse_dimse_address, save_servers)
from ctscreen.io.pacs.cache import SeriesCache  # noqa: E402
from ctscreen.io.pacs.config import SERVERS_FILE, find_server  # noqa: E402

#: P001 slices (by InstanceNumber) uploaded: 20 contiguous slices of the middle lung, all with infection.
INSTANCES = range(81, 101)

pytestmark = pytest.mark.skipif(bool(available()), reason=available() or "ok")


@pytest.fixture(scope="module")
def source_files() -> dict[str, Path]:
    """SOP Instance UID -> P001 file, for the uploaded slices."""
    if not P001.exists():
        pytest.skip(f"shared series {P001} not found")
    out = {}
    for f in sorted(P001.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        if int(ds.InstanceNumber) in INSTANCES:
            out[str(ds.SOPInstanceUID)] = f
    assert len(out) == len(INSTANCES)
    return out


#: A second, synthetic study on the server: found by name and accession number.
SYNTHETIC = {"PatientName": "Synthetic^Patient", "PatientID": "SYN-001", "AccessionNumber": "ACC-PACS-1",
             "StudyDate": "20211111"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, source_files):
    from conftest import synthetic_series

    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    server.start()
    try:
        server.upload(list(source_files.values()))
        syn = synthetic_series(tmp_path_factory.mktemp("synthetic"), n=2)
        for path in syn.paths:
            ds = pydicom.dcmread(path)
            for kw, value in SYNTHETIC.items():
                setattr(ds, kw, value)
            ds.save_as(path, enforce_file_format=True)
        server.upload(syn.paths)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def study(source_files) -> tuple[str, str, str, str]:
    """(study UID, series UID, patient ID, study date) of the uploaded slices."""
    ds = pydicom.dcmread(next(iter(source_files.values())), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.PatientID), str(ds.StudyDate)


def web(orthanc: OrthancServer, **kw) -> ServerConfig:
    return ServerConfig(name="orthanc-web", protocol="dicomweb", url=orthanc.url, auth="basic", username=USER,
                        secret=PASSWORD, timeout_s=5, **kw)


def dimse(orthanc: OrthancServer, **kw) -> ServerConfig:
    return ServerConfig(name="orthanc-dimse", protocol="dimse", host="127.0.0.1", port=orthanc.dicom_port,
                        called_ae=AET, move_port=orthanc.move_port, timeout_s=5, **kw)


def _drain(gen):
    ticks = []
    while True:
        try:
            ticks.append(next(gen))
        except StopIteration as stop:
            return ticks, stop.value


# -- query ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_find_by_patient_date_modality_and_list_series(orthanc, study, kind):
    study_uid, series_uid, patient_id, date = study
    server = web(orthanc) if kind == "dicomweb" else dimse(orthanc)
    with connect(server) as pacs:
        pacs.echo()
        found = pacs.find_studies(StudyQuery(patient_id=patient_id))
        assert [s.study_instance_uid for s in found] == [study_uid]
        assert found[0].study_date == date and "CT" in found[0].modalities
        in_range = pacs.find_studies(StudyQuery.from_text(date_range=f"{date[:4]}-01-01-{date[:4]}-12-31",
                                                          modality="CT"))
        assert [s.study_instance_uid for s in in_range] == [study_uid]
        assert pacs.find_studies(StudyQuery.from_text(date_range="19990101-19991231")) == []
        assert pacs.find_studies(StudyQuery(patient_id="NOBODY-42")) == []
        assert pacs.find_studies(StudyQuery(accession_number="NO-SUCH-ACC")) == []
        by_name = pacs.find_studies(StudyQuery(patient_name="Synthetic"))  # "starts with"
        assert [(st.patient_id, st.accession_number, st.study_date) for st in by_name] == [
            ("SYN-001", "ACC-PACS-1", "20211111")]
        assert by_name[0].patient_name == "Synthetic^Patient"
        assert [st.patient_id for st in pacs.find_studies(StudyQuery(accession_number="ACC-PACS-1"))] == ["SYN-001"]
        assert [st.patient_id for st in pacs.find_studies(StudyQuery.from_text(date_range="20211111"))] == ["SYN-001"]
        assert pacs.find_studies(StudyQuery(patient_name="Nobody")) == []
        assert pacs.find_studies(StudyQuery(modality="MR")) == []
        series = pacs.find_series(study_uid)
        ct = [s for s in series if s.modality == "CT"]
        assert [s.series_instance_uid for s in ct] == [series_uid]
        assert ct[0].instance_count in (None, len(INSTANCES))
        assert sorted(pacs.find_instances(study_uid, series_uid)) == sorted(
            pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in
            sorted(P001.iterdir()) if int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) in INSTANCES)


# -- retrieve -------------------------------------------------------------------------------------
def _assert_same_as_source(files: list[str], source_files: dict[str, Path]) -> None:
    got = {}
    for f in files:
        ds = pydicom.dcmread(f)
        got[str(ds.SOPInstanceUID)] = ds
        assert Path(f).name == f"{ds.SOPInstanceUID}.dcm"
    assert set(got) == set(source_files)
    for uid, f in source_files.items():
        src = pydicom.dcmread(f)
        ds = got[uid]
        assert ds.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID  # sent as stored
        assert ds.PixelData == src.PixelData
        assert ds.ImagePositionPatient == src.ImagePositionPatient
        assert ds.PatientID == src.PatientID


@pytest.mark.parametrize("kind", ["dicomweb", "dimse-get", "dimse-move"])
def test_retrieve_series_matches_source_and_resumes(orthanc, study, source_files, tmp_path, kind):
    study_uid, series_uid, _, _ = study
    server = {"dicomweb": web(orthanc), "dimse-get": dimse(orthanc),
              "dimse-move": dimse(orthanc, retrieve="move")}[kind]
    with connect(server) as pacs:
        ticks, result = _drain(pacs.retrieve_series(study_uid, series_uid, str(tmp_path)))
        assert result.written == len(INSTANCES) and result.skipped == 0
        assert [t.done for t in ticks] == sorted(t.done for t in ticks) and ticks[-1].done == len(INSTANCES)
        assert Path(result.folder) == tmp_path / study_uid / series_uid
        _assert_same_as_source(result.files, source_files)

        # Resume: two files gone, one replaced by a different object of the same SOP UID.
        files = sorted(Path(result.folder).glob("*.dcm"))
        files[0].unlink()
        files[1].unlink()
        other = pydicom.dcmread(files[2])
        other.SeriesDescription = "edited locally"
        other.save_as(files[2], enforce_file_format=True)  # still a complete file of that SOP UID: kept
        edited_bytes = files[2].read_bytes()
        _, again = _drain(pacs.retrieve_series(study_uid, series_uid, str(tmp_path)))
        assert again.written == 2 and again.skipped == len(INSTANCES) - 2
        assert files[2].read_bytes() == edited_bytes  # never overwritten
        assert not list(Path(result.folder).glob(".*.tmp"))
        _, third = _drain(pacs.retrieve_series(study_uid, series_uid, str(tmp_path)))
        assert third.written == 0 and third.skipped == len(INSTANCES)


def test_cache_keeps_both_when_the_pacs_copy_differs(tmp_path, source_files):
    f = next(iter(source_files.values()))
    cache = SeriesCache(tmp_path / "s")
    damaged = cache.path_of(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    damaged.write_bytes(f.read_bytes()[:5000])  # a truncated copy: not complete, not ours to overwrite
    assert not cache.has(damaged.name[:-4])
    assert cache.put(f.read_bytes()) == "kept-both"
    assert damaged.read_bytes() == f.read_bytes()[:5000]
    alt = damaged.with_name(damaged.name[:-4] + ".2.dcm")
    assert alt.read_bytes() == f.read_bytes()
    assert "kept it" in cache.warnings[0]
    assert cache.put(f.read_bytes()) in ("same", "kept-both")


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_retrieve_cancel_keeps_complete_files_and_resumes(orthanc, study, tmp_path, kind):
    study_uid, series_uid, _, _ = study
    server = web(orthanc) if kind == "dicomweb" else dimse(orthanc)
    stop = threading.Event()
    with connect(server) as pacs:
        gen = pacs.retrieve_series(study_uid, series_uid, str(tmp_path), cancel=stop.is_set)
        with pytest.raises(Cancelled, match="resume"):
            for progress in gen:
                if progress.done >= 3:
                    stop.set()
        folder = tmp_path / study_uid / series_uid
        kept = sorted(folder.glob("*.dcm"))
        assert 3 <= len(kept) < len(INSTANCES)
        for f in kept:
            pydicom.dcmread(f).pixel_array  # every file left is complete
        assert not list(folder.glob(".*.tmp"))
        _, result = _drain(pacs.retrieve_series(study_uid, series_uid, str(tmp_path)))
        assert result.skipped == len(kept) and result.written == len(INSTANCES) - len(kept)


# -- analyse, push back, query again ---------------------------------------------------------------
@pytest.fixture(scope="module")
def analysed(orthanc, study, tmp_path_factory):
    """The series retrieved by WADO-RS, analysed with a tiny random model that marks lesions."""
    torch = pytest.importorskip("torch")
    from ctscreen.inference.models import save_model
    from ctscreen.inference.nets import UNet
    from ctscreen.inference.pipeline import AnalyzeOptions, run_analysis
    from ctscreen.io.dicom import load_series

    study_uid, series_uid, _, _ = study
    cache = tmp_path_factory.mktemp("cache")
    with connect(web(orthanc)) as pacs:
        _, got = _drain(pacs.retrieve_series(study_uid, series_uid, str(cache)))
    torch.manual_seed(0)
    net = UNet(channels=(4, 8, 16))
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 0.05, -2.0]))
    model = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(net, "unet", model, {"version": "test-1", "input_size": 64})
    vol = load_series(got.folder)
    result = run_analysis(vol, AnalyzeOptions(model=str(model), device="cpu", cam="none", tta=False))
    assert np.asarray(result.lesion).any()
    return result


def _series_by_modality(pacs, study_uid):
    out = {}
    for s in pacs.find_series(study_uid):
        out.setdefault(s.modality, []).append(s)
    return out


def test_push_seg_and_key_images_by_stow_then_query(orthanc, study, analysed, tmp_path):
    from ctscreen.io.pacs.send import result_datasets

    study_uid, _, patient_id, _ = study
    datasets, notes = result_datasets(analysed, max_key_images=2, report=True)
    assert not notes
    assert [str(d.Modality) for d in datasets] == ["SEG", "OT", "OT", "OT", "DOC"]
    assert datasets[-1].EncapsulatedDocument.startswith(b"%PDF") and datasets[-1].PatientID == patient_id
    for sc in datasets[1:4]:
        assert sc.StudyInstanceUID == study_uid and sc.PatientID == patient_id
        assert sc.BurnedInAnnotation == "NO" and "Research use only" in sc.ImageComments
    exe = shutil.which("dciodvfy")
    if exe:  # valid Secondary Capture and Encapsulated PDF (dicom3tools, installed by tools/install.sh)
        for ds in (datasets[1], datasets[-1]):
            path = tmp_path / f"{ds.Modality}.dcm"
            ds.save_as(path, enforce_file_format=True)
            report = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
            errors = [ln for ln in (report.stdout + report.stderr).splitlines() if ln.startswith("Error")]
            assert not errors, (ds.Modality, errors)
    with connect(web(orthanc)) as pacs:
        stored = pacs.store(datasets)
        assert not stored.failed and len(stored.stored) == 5
        by_mod = _series_by_modality(pacs, study_uid)
        assert {"SEG", "OT", "DOC", "CT"} <= set(by_mod)
        seg_uid = str(datasets[0].SOPInstanceUID)
        mine = [se for se in by_mod["SEG"] if pacs.find_instances(study_uid, se.series_instance_uid) == [seg_uid]]
        assert len(mine) == 1  # the SEG came back as its own series with just our instance
        seg_series = mine[0]
    with connect(dimse(orthanc)) as pacs:  # and DIMSE sees it too
        assert "SEG" in _series_by_modality(pacs, study_uid)
    # The SEG that came back is the one we sent, frames and all.
    with connect(web(orthanc)) as pacs:
        back = pacs._client.retrieve_instance(study_uid, seg_series.series_instance_uid,
                                              str(datasets[0].SOPInstanceUID))
    assert back.SegmentSequence[0].SegmentLabel == datasets[0].SegmentSequence[0].SegmentLabel
    assert back.PixelData == datasets[0].PixelData


def test_cli_pull_list_retrieve_and_push_result_dir_by_cstore(orthanc, study, analysed, tmp_path, capsys,
                                                               monkeypatch):
    from ctscreen.io.export import export_all
    from ctscreen.io.export_png import write_montage_png

    study_uid, series_uid, patient_id, _ = study
    monkeypatch.setenv("CTSCREEN_PACS_SECRET", PASSWORD)
    assert cli_main(["pull", "--dicomweb", orthanc.url, "--user", USER, "--patient-id", patient_id, "--list"]) == 0
    listing = capsys.readouterr().out
    assert study_uid in listing and series_uid in listing and "CT" in listing

    cache = tmp_path / "cache"
    code = cli_main(["pull", "--dimse", f"{AET}@127.0.0.1:{orthanc.dicom_port}", "--patient-id", patient_id,
                     "--modality", "CT", "--out", str(cache), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    folders = captured.out.split()
    assert str(cache / study_uid / series_uid) in folders
    assert len(list((cache / study_uid / series_uid).glob("*.dcm"))) == len(INSTANCES)

    out_dir = tmp_path / "result"
    out_dir.mkdir()
    export_all(analysed, out_dir, pdf=True)
    write_montage_png(analysed, out_dir / "montage.png")
    with connect(dimse(orthanc)) as pacs:
        docs_before = {s.series_instance_uid for s in pacs.find_series(study_uid) if s.modality == "DOC"}
    code = cli_main(["push", str(out_dir), "--dimse", f"{AET}@127.0.0.1:{orthanc.dicom_port}",
                     "--max-key-images", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "sent 4 of 4 objects" in captured.out and "1 SEG" in captured.out and "1 report" in captured.out
    with connect(dimse(orthanc)) as pacs:  # the report sits beside the study as a document
        docs = [s for s in pacs.find_series(study_uid) if s.modality == "DOC"
                and s.series_instance_uid not in docs_before]
    assert len(docs) == 1 and docs[0].description.startswith("ctscreen report")
    # Pushing the same folder again gives the same UIDs: the PACS does not grow a second copy.
    with connect(web(orthanc)) as pacs:
        n_before = sum(len(pacs.find_instances(study_uid, s.series_instance_uid))
                       for s in pacs.find_series(study_uid) if s.modality == "OT")
    assert cli_main(["push", str(out_dir), "--dimse", f"{AET}@127.0.0.1:{orthanc.dicom_port}",
                     "--max-key-images", "1"]) == 0
    with connect(web(orthanc)) as pacs:
        n_after = sum(len(pacs.find_instances(study_uid, s.series_instance_uid))
                      for s in pacs.find_series(study_uid) if s.modality == "OT")
    assert n_after == n_before


# -- errors -------------------------------------------------------------------------------------------
def _silent_server():
    """A socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    return srv, stop, conns


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_server_down_gives_a_clear_message_quickly(kind):
    port = free_port()  # nothing listens there
    server = (ServerConfig(name="down", protocol="dicomweb", url=f"http://127.0.0.1:{port}/dicom-web", timeout_s=3)
              if kind == "dicomweb" else
              ServerConfig(name="down", protocol="dimse", host="127.0.0.1", port=port, called_ae="X", timeout_s=3))
    import ctscreen.io.pacs.dicomweb  # noqa: F401 - imports are not what is timed
    import ctscreen.io.pacs.dimse  # noqa: F401
    import dicomweb_client.api  # noqa: F401
    import pynetdicom  # noqa: F401

    t0 = time.monotonic()
    with pytest.raises(PacsError) as info:
        with connect(server) as pacs:
            pacs.find_studies(StudyQuery(patient_id="X"))
    assert time.monotonic() - t0 < 3
    msg = str(info.value)
    assert "down" in msg and "check that the server is running" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_silent_server_times_out_instead_of_hanging(kind):
    srv, stop, conns = _silent_server()
    port = srv.getsockname()[1]
    server = (ServerConfig(name="silent", protocol="dicomweb", url=f"http://127.0.0.1:{port}/dicom-web",
                           timeout_s=1)
              if kind == "dicomweb" else
              ServerConfig(name="silent", protocol="dimse", host="127.0.0.1", port=port, called_ae="X", timeout_s=1))
    try:
        t0 = time.monotonic()
        with pytest.raises(PacsError) as info:
            with connect(server) as pacs:
                pacs.echo()
        assert time.monotonic() - t0 < 5
        assert "silent" in str(info.value) and "1 s" in str(info.value)
    finally:
        stop.set()
        for c in conns:
            c.close()
        srv.close()


def test_server_errors_give_clear_messages(orthanc, study):
    wrong_path = dataclasses.replace(web(orthanc), url=orthanc.url.replace("/dicom-web", "/no-such-root"))
    with pytest.raises(PacsError, match=r"HTTP 404.*check the URL path"):
        with connect(wrong_path) as pacs:
            pacs.find_studies(StudyQuery(patient_id="X"))
    rest_root = dataclasses.replace(web(orthanc), url=orthanc.rest)  # Orthanc's own REST API, not DICOMweb
    with pytest.raises(PacsError, match=r"not DICOM JSON.*DICOMweb root"):
        with connect(rest_root) as pacs:
            pacs.find_studies(StudyQuery(patient_id="X"))
    wrong_password = web(orthanc).with_secret("wrong")
    with pytest.raises(PacsError, match=r"HTTP 401.*check the user name and password"):
        with connect(wrong_password) as pacs:
            pacs.find_studies(StudyQuery(patient_id="X"))
    wrong_ae = dataclasses.replace(dimse(orthanc), called_ae="NOT-ORTHANC")
    with pytest.raises(PacsError, match=r"rejected the association.*'NOT-ORTHANC'"):
        with connect(wrong_ae) as pacs:
            pacs.find_studies(StudyQuery(patient_id="X"))
    # the CLI turns them into one line on stderr and exit code 2
    assert cli_main(["pull", "--dicomweb", wrong_path.url, "--patient-id", "X", "--list"]) == 2


# -- settings -----------------------------------------------------------------------------------------
def test_settings_round_trip_without_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("CTSCREEN_CONFIG_DIR", str(tmp_path))
    a = ServerConfig(name="hospital", protocol="dicomweb", url="https://pacs.example/dicom-web", auth="basic",
                     username="radiology", secret="s3cret")
    b = parse_dimse_address("ORTHANC@pacs.example:4242", name="archive")
    save_servers([a, b])
    text = (tmp_path / SERVERS_FILE).read_text()
    assert "s3cret" not in text and json.loads(text)["servers"][0]["username"] == "radiology"
    assert [s.name for s in load_servers()] == ["hospital", "archive"]
    assert load_servers()[1].called_ae == "ORTHANC" and load_servers()[1].port == 4242
    from ctscreen.io.pacs import config

    monkeypatch.setattr(config, "_keyring", lambda: None)  # as on a machine without a keyring
    monkeypatch.delenv("CTSCREEN_PACS_SECRET", raising=False)
    assert find_server("hospital").secret == ""
    monkeypatch.setenv("CTSCREEN_PACS_SECRET_HOSPITAL", "from-env")
    assert find_server("hospital").secret == "from-env"
    with pytest.raises(PacsError, match="no PACS server called 'nope'"):
        find_server("nope")
    with pytest.raises(PacsError, match="AE@HOST:PORT"):
        parse_dimse_address("pacs.example")
    with pytest.raises(PacsError, match="must start with http"):
        ServerConfig(name="x", url="pacs.example").validate()


def test_date_ranges():
    assert parse_date_range("20200101-20201231") == ("20200101", "20201231")
    assert parse_date_range("2020-01-01-2020-12-31") == ("20200101", "20201231")
    assert parse_date_range("2020-01-01..2020-12-31") == ("20200101", "20201231")
    assert parse_date_range("20200101-") == ("20200101", "")
    assert parse_date_range("-20201231") == ("", "20201231")
    assert parse_date_range("2020-03-05") == ("20200305", "20200305")
    assert parse_date_range("") == ("", "")
    assert StudyQuery.from_text(date_range="20200101-").date_matcher() == "20200101-"
    assert StudyQuery(patient_name="Doe").filters()["PatientName"] == "Doe*"
    for bad in ("yesterday", "20201231-20200101", "2020-13"):
        with pytest.raises(ValueError):
            parse_date_range(bad)


# -- viewer ------------------------------------------------------------------------------------------------
@pytest.mark.gui
def test_viewer_open_from_pacs_retrieves_and_opens_the_series(orthanc, study, tmp_path, qtbot, monkeypatch):
    from ctscreen.viewer import pacs_settings
    from ctscreen.viewer.main_window import MainWindow
    from ctscreen.viewer.settings import ViewerSettings

    study_uid, series_uid, patient_id, _ = study
    monkeypatch.setenv("CTSCREEN_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("CTSCREEN_PACS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(pacs_settings.SESSION_SECRETS, "orthanc", PASSWORD)
    save_servers([ServerConfig(name="orthanc", url=orthanc.url, auth="basic", username=USER)])
    window = MainWindow(ViewerSettings(tmp_path / "viewer"), interactive=False)
    qtbot.addWidget(window)
    window.pacs_action.trigger()
    dialog = window._pacs_dialog
    assert dialog.isVisible() and dialog.server_box.currentText() == "orthanc"
    dialog.patient_id.setText(patient_id)
    dialog.search()
    qtbot.waitUntil(lambda: dialog.tree.topLevelItemCount() == 1 and dialog.tree.topLevelItem(0).childCount() >= 1
                    and not dialog._busy(), timeout=20000)
    assert dialog.selected_series().series_instance_uid == series_uid  # the CT series is preselected
    retrieved = []
    dialog.seriesRetrieved.connect(retrieved.append)
    dialog.retrieve_selected()
    assert dialog.cancel_button.isEnabled()
    dialog.cancel_button.click()  # Cancel: nothing is opened, complete files stay for the next try
    qtbot.waitUntil(lambda: not dialog._busy(), timeout=20000)
    assert retrieved == [] and "Cancelled" in dialog.status.text()
    assert not dialog.cancel_button.isEnabled() and dialog.retrieve_button.isEnabled()
    with qtbot.waitSignal(window.volumeLoaded, timeout=30000) as loaded:
        dialog.retrieve_selected()
    volume = loaded.args[0]
    assert volume.series_instance_uid == series_uid and volume.shape[0] == len(INSTANCES)
    assert Path(volume.source_files[0]).parent == tmp_path / "cache" / study_uid / series_uid
    assert not dialog.isVisible()


@pytest.mark.gui
def test_viewer_pacs_settings_saves_servers_without_secrets(tmp_path, qtbot, monkeypatch):
    from ctscreen.viewer import pacs_settings
    from ctscreen.viewer.pacs_settings import PacsSettingsDialog

    monkeypatch.setattr(pacs_settings, "SESSION_SECRETS", {})
    monkeypatch.setattr(pacs_settings, "set_secret", lambda server, secret: False)  # as with no keyring
    dlg = PacsSettingsDialog(folder=tmp_path)
    qtbot.addWidget(dlg)
    dlg.add_server()
    dlg.name.setText("hospital")
    dlg.url.setText("https://pacs.example/dicom-web")
    dlg.auth.setCurrentIndex(dlg.auth.findData("basic"))
    dlg.username.setText("radiology")
    dlg.secret.setText("top-secret")
    dlg.add_server()
    dlg.name.setText("archive")
    dlg.protocol.setCurrentIndex(1)
    dlg.host.setText("pacs.example")
    dlg.port.setValue(11112)
    dlg.called_ae.setText("ARCHIVE")
    with qtbot.waitSignal(dlg.saved, timeout=2000):
        dlg.save()
    text = (tmp_path / SERVERS_FILE).read_text()
    assert "top-secret" not in text
    servers = {s.name: s for s in load_servers(tmp_path)}
    assert servers["hospital"].username == "radiology" and servers["hospital"].auth == "basic"
    assert servers["archive"].protocol == "dimse" and servers["archive"].port == 11112
    assert pacs_settings.SESSION_SECRETS == {"hospital": "top-secret"}  # this session only


@pytest.mark.gui
def test_viewer_send_results_to_pacs(orthanc, study, analysed, tmp_path, qtbot, monkeypatch):
    from ctscreen.viewer import pacs_settings
    from ctscreen.viewer.pacs_dialog import SendToPacsDialog

    study_uid = study[0]
    save_servers([ServerConfig(name="orthanc-dimse", protocol="dimse", host="127.0.0.1", port=orthanc.dicom_port,
                               called_ae=AET)], tmp_path)
    monkeypatch.setattr(pacs_settings, "SESSION_SECRETS", {})
    with connect(web(orthanc)) as pacs:
        before = {s.series_instance_uid for s in pacs.find_series(study_uid)}
    dlg = SendToPacsDialog(analysed, config_folder=tmp_path, interactive=False)
    qtbot.addWidget(dlg)
    dlg.key_images.setValue(1)
    dlg.report.setChecked(False)
    with qtbot.waitSignal(dlg.sent, timeout=30000) as sent:
        dlg.send()
    stored = sent.args[0]
    assert not stored.failed and len(stored.stored) == 3  # SEG + montage + 1 slice
    assert "Sent 3 of 3" in dlg.status.text()
    with connect(web(orthanc)) as pacs:
        new = [s for s in pacs.find_series(study_uid) if s.series_instance_uid not in before]
    assert sorted(s.modality for s in new) == ["OT", "SEG"]


def test_secrets_go_to_the_keyring_when_there_is_one(tmp_path, monkeypatch):
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    from ctscreen.io.pacs.config import get_secret, keyring_available, set_secret

    class MemoryKeyring(KeyringBackend):
        priority = 1
        store: dict = {}

        def get_password(self, service, username):
            return self.store.get((service, username))

        def set_password(self, service, username, password):
            self.store[(service, username)] = password

        def delete_password(self, service, username):
            self.store.pop((service, username), None)

    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        monkeypatch.delenv("CTSCREEN_PACS_SECRET", raising=False)
        monkeypatch.setenv("CTSCREEN_CONFIG_DIR", str(tmp_path))
        assert keyring_available()
        server = ServerConfig(name="hospital", url="https://pacs.example/dicom-web", auth="basic", username="me")
        save_servers([server])
        assert set_secret(server, "in-the-keyring")
        assert MemoryKeyring.store == {("ctscreen-pacs", "hospital:me"): "in-the-keyring"}
        assert "in-the-keyring" not in (tmp_path / SERVERS_FILE).read_text()
        assert get_secret(server) == "in-the-keyring"
        assert find_server("hospital").secret == "in-the-keyring"
        assert set_secret(server, "") and get_secret(server) == ""
    finally:
        keyring.set_keyring(previous)


def test_cli_pull_by_configured_server_name(orthanc, study, tmp_path, capsys, monkeypatch):
    study_uid, series_uid, patient_id, _ = study
    monkeypatch.setenv("CTSCREEN_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("CTSCREEN_PACS_SECRET_ORTHANC", PASSWORD)
    save_servers([ServerConfig(name="orthanc", url=orthanc.url, auth="basic", username=USER),
                  ServerConfig(name="orthanc-dimse", protocol="dimse", host="127.0.0.1",
                               port=orthanc.dicom_port, called_ae=AET)])
    assert cli_main(["pull", "--server", "orthanc", "--date", "-20991231", "--modality", "CT", "--list"]) == 0
    assert series_uid in capsys.readouterr().out
    assert cli_main(["pull", "--server", "orthanc-dimse", "--study", study_uid, "--series", series_uid,
                     "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / study_uid / series_uid)
    assert cli_main(["pull", "--server", "nope", "--study", study_uid, "--list"]) == 2
    assert "no PACS server called 'nope'" in capsys.readouterr().err


def test_dicomweb_bearer_token_is_sent(tmp_path):
    """A bearer token goes in the Authorization header (Orthanc has no tokens: a tiny local QIDO server)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Qido(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            seen.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != "Bearer good-token":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["1.2.3"]},
                                "00100020": {"vr": "LO", "Value": ["PID-1"]}}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Qido)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
        good = ServerConfig(name="tokened", url=url, auth="token", secret="good-token", timeout_s=3)
        with connect(good) as pacs:
            found = pacs.find_studies(StudyQuery(patient_id="PID-1"))
        assert [(s.study_instance_uid, s.patient_id) for s in found] == [("1.2.3", "PID-1")]
        with pytest.raises(PacsError, match=r"HTTP 401.*password or token"):
            with connect(good.with_secret("stale")) as pacs:
                pacs.find_studies(StudyQuery(patient_id="PID-1"))
        assert seen == ["Bearer good-token", "Bearer stale"]
    finally:
        httpd.shutdown()
        httpd.server_close()
