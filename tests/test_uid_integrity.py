"""Series whose SOPInstanceUIDs are empty or malformed (a de-identification artefact), from real P001 slices.

The UIDs stay empty (never a file path: a path can carry the patient's name), rows are
keyed by instance number and z, the DICOM SEG step says why it cannot reference the
images (not that they were "not found"), and pydicom's "Invalid value for VR UI"
warnings stay off the terminal, reported once in the series warnings instead.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import config as pydicom_config

from conftest import P001
from ctscreen.errors import ExportError
from ctscreen.io import export
from ctscreen.io.dicom import load_series
from test_export_fixtures import result_for
from test_untidy import p001, slices, tiny_model, write  # noqa: F401

pytestmark = pytest.mark.skipif(not P001.is_dir(), reason="shared P001 series not found")

NAME = "Doe_Jane"  # what a file name can carry


def _series(p001, folder: Path, uid: str) -> Path:
    """Four P001 slices whose SOPInstanceUID is ``uid`` (+ the slice number when ``uid`` is not blank)."""
    cases = slices(p001, 4)
    old = pydicom_config.settings.writing_validation_mode
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE  # write what the anonymiser wrote
    try:
        dss = []
        for k, (ds, _) in enumerate(cases):
            value = uid + (str(k) if uid.strip() else "")
            ds.SOPInstanceUID = value
            ds.file_meta.MediaStorageSOPInstanceUID = value
            dss.append(ds)
        write(folder, dss, names=[f"{NAME}_{k:03d}.dcm" for k in range(len(dss))])
    finally:
        pydicom_config.settings.writing_validation_mode = old
    return folder


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # this process writes the blank-padded UIDs
@pytest.mark.parametrize("blank", ["", "  "])
def test_empty_uids_stay_empty_and_rows_are_keyed_by_instance_number_and_z(p001, tmp_path, blank):
    folder = _series(p001, tmp_path / "s", blank)
    vol = load_series(folder)
    assert vol.sop_instance_uids == ("",) * 4
    assert vol.instance_numbers == tuple(int(ds.InstanceNumber) for ds, _ in p001[:4])
    notes = [w for w in vol.warnings if "SOPInstanceUID is empty" in w]
    assert len(notes) == 1 and "4 of 4" in notes[0]
    assert not any("duplicate" in w for w in vol.warnings)  # four empty UIDs are not four copies of one image

    lesion = np.zeros(vol.shape, np.uint8)
    lesion[:, 200:220, 150:170] = 1
    res = result_for(vol, lesion=lesion, lung=np.ones(vol.shape, np.uint8),
                     cam={0: np.ones(vol.shape[1:], np.float32)}, cam_outside={0: 0.9})
    out = tmp_path / "out"
    out.mkdir()
    export.write_report_json(res, out / "report.json")
    export.write_report_csv(res, out / "report.csv")
    text = (out / "report.json").read_text() + (out / "report.csv").read_text()
    assert NAME not in text and str(folder) not in text and ".dcm" not in text
    rep = json.loads((out / "report.json").read_text())
    rows = rep["slices"]
    assert [r["sop_instance_uid"] for r in rows] == [""] * 4
    assert [r["instance_number"] for r in rows] == list(vol.instance_numbers)
    assert [r["z_mm"] for r in rows] == pytest.approx(list(vol.z_mm))
    flagged = rep["gradcam"]["flagged_slices"]
    assert flagged and flagged[0]["sop_instance_uid"] == "" and flagged[0]["instance_number"] == vol.instance_numbers[0]
    assert flagged[0]["z_mm"] == pytest.approx(vol.z_mm[0])

    with pytest.raises(ExportError) as err:
        export.write_seg(res, tmp_path / "seg.dcm")
    msg = str(err.value)
    assert "not found" not in msg and "SOPInstanceUID of 4 of 4 source images is empty" in msg
    assert NAME not in msg


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # this process writes the malformed files
def test_analyze_keeps_pydicom_uid_warnings_off_the_terminal(p001, tmp_path, tiny_model):
    """Malformed UIDs: no pydicom line on stderr (a fresh process, as a user runs it), one note in the report."""
    folder = _series(p001, tmp_path / "s", "1.2.03.ANON")
    out = tmp_path / "out"
    code = ("import sys; from ctscreen.cli import main; "
            f"sys.exit(main(['analyze', {str(folder)!r}, '--out', {str(out)!r}, '--model', {tiny_model!r}, "
            "'--device', 'cpu', '--cam', 'none', '--png', 'none']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Invalid value for VR" not in proc.stderr and "UserWarning" not in proc.stderr
    rep = json.loads((out / "report.json").read_text())
    notes = [w for w in rep["series"]["volume_warnings"] if "not a valid DICOM UID" in w]
    assert len(notes) == 1 and "4 image(s)" in notes[0]
    assert [r["sop_instance_uid"] for r in rep["slices"]] == [f"1.2.03.ANON{k}" for k in range(4)]
