"""atomic_write, existing_outputs and export_all's refusal to overwrite."""

from __future__ import annotations

import os
import stat

import pytest

from ctscreen.errors import ExportError
from ctscreen.io import export
from ctscreen.io.export import atomic_write, existing_outputs


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_writes_bytes_str_and_writer(tmp_path):
    assert atomic_write(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    atomic_write(tmp_path / "b.txt", "grüße")
    atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"xyz"))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text("utf-8") == "grüße"
    assert (tmp_path / "c.bin").read_bytes() == b"xyz"
    assert _leftovers(tmp_path) == []


def test_usual_permissions_not_0600(tmp_path):
    p = atomic_write(tmp_path / "perm.txt", "x")
    mode = stat.S_IMODE(os.stat(p).st_mode)
    if os.name != "nt":
        assert mode == 0o666 & ~export._UMASK


def test_refuses_overwrite_without_force(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(ExportError) as err:
        atomic_write(target, "new")
    assert str(target) in str(err.value) and "--force" in str(err.value)
    assert target.read_text() == "old"
    atomic_write(target, "new", force=True)
    assert target.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_exception_mid_write_leaves_nothing(tmp_path):
    target = tmp_path / "seg.dcm"

    def writer(fh):
        fh.write(b"half of it")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, writer)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_exception_mid_write_keeps_old_file(tmp_path):
    target = tmp_path / "report.csv"
    target.write_text("complete old content")

    def writer(fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(ExportError, match="No space left"):
        atomic_write(target, writer, force=True)
    assert target.read_text() == "complete old content"
    assert _leftovers(tmp_path) == []


def test_missing_folder_is_export_error(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        atomic_write(tmp_path / "nope" / "x.txt", "x")


def test_existing_outputs_names_and_patterns(tmp_path):
    assert existing_outputs(tmp_path / "absent", ["report.json"]) == []
    (tmp_path / "report.json").write_text("{}")
    (tmp_path / "slice_0042.png").write_bytes(b"")
    (tmp_path / "other.png").write_bytes(b"")
    names = export.planned_outputs(png="lesions", report=True, seg=True)
    assert existing_outputs(tmp_path, names) == [tmp_path / "report.json", tmp_path / "slice_0042.png"]
    assert existing_outputs(tmp_path, export.planned_outputs(png="montage", report=False, seg=True)) == []


def test_slice_png_name_is_one_based():
    assert export.slice_png_name(41) == "slice_0042.png"


def test_export_all_refuses_before_any_work(tmp_path):
    (tmp_path / export.SEG_NAME).write_bytes(b"old")

    class Boom:  # any access to the result would fail: nothing may be attempted
        def __getattr__(self, name):
            raise AssertionError(f"result.{name} touched before the overwrite check")

    with pytest.raises(ExportError, match="--force"):
        export.export_all(Boom(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [export.SEG_NAME]
