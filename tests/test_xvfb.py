"""The viewer on a real X server (Xvfb) with Qt's default xcb platform, not offscreen (issue 12).

Every other GUI test runs with ``QT_QPA_PLATFORM=offscreen``, which hid that Qt >= 6.5's
xcb plugin needs libxcb-cursor0, -icccm4, -keysyms1 and more (``tools/install.sh``
installs them, with Xvfb). Here a child process starts the app under ``xvfb-run``,
opens a real series, presses keys in the slice view, and grabs the X screen; the
test checks the platform, the slice the keys reached, and that the screenshot shows
the window (not a blank framebuffer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LUNG_PET = ROOT.parent / "shared" / "data" / "dicom" / "lung-pet-ct-dx-A0002"

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(shutil.which("xvfb-run") is None or shutil.which("Xvfb") is None,
                       reason="Xvfb not installed (tools/install.sh installs it)"),
]

DRIVER = r'''
import faulthandler, json, sys, time
faulthandler.enable()  # a crash shows its Python stack in the test's message
from pathlib import Path
from PySide6.QtCore import Qt, QTimer
from PySide6.QtTest import QTest
from ctscreen import RESEARCH_NOTICE
from ctscreen.viewer.app import _application, _wait_for
from ctscreen.viewer.main_window import MainWindow
from ctscreen.viewer.settings import ViewerSettings

folder, out_dir = sys.argv[1], Path(sys.argv[2])
app = _application()
win = MainWindow(settings=ViewerSettings(out_dir / "settings"), interactive=False)
win.resize(1280, 860)
win.show()
QTest.qWaitForWindowExposed(win, 10000)
t = time.perf_counter()
got = _wait_for({"loaded": win.volumeLoaded}, 120, trigger=lambda: win.open_path(folder))
load_s = time.perf_counter() - t
view = win.slice_view
canvas = view.graphics.viewport() if hasattr(view, "graphics") else view
canvas.setFocus()
steps = []
for key in (Qt.Key.Key_Down, Qt.Key.Key_Down, Qt.Key.Key_Down, Qt.Key.Key_PageDown, Qt.Key.Key_Up):
    QTest.keyClick(canvas, key)
    app.processEvents()
    steps.append(view.slice_index)
QTest.qWait(300)
shot = app.primaryScreen().grabWindow(0)  # the X server's framebuffer, as a user sees it
shot.save(str(out_dir / "xvfb_screen.png"))
win.grab().save(str(out_dir / "xvfb_window.png"))
print(json.dumps({
    "platform": app.platformName(), "loaded": got, "load_s": round(load_s, 2),
    "shape": list(view.volume.shape) if view.volume is not None else None,
    "steps": steps, "title": win.windowTitle(), "notice": RESEARCH_NOTICE,
    "screen": [shot.width(), shot.height()],
}))
win.close()  # joins the loader and analysis workers (MainWindow.closeEvent)
app.processEvents()
'''


def test_viewer_starts_on_a_real_x_server_opens_a_series_and_reads_keys(tmp_path):
    if LUNG_PET.is_dir():
        folder, n = LUNG_PET, 30
    else:  # a clean checkout without ../shared: a small synthetic series
        from conftest import synthetic_series
        folder, n = synthetic_series(tmp_path, 24, rows=64, cols=64).folder, 24
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(ROOT)
    env["CTSCREEN_SETTINGS_DIR"] = str(tmp_path / "settings")
    proc = subprocess.run(
        ["xvfb-run", "-a", "-s", "-screen 0 1280x900x24", sys.executable, "-c", DRIVER, str(folder), str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Could not load the Qt platform plugin" not in proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["platform"] == "xcb"  # the real desktop platform, not offscreen
    assert result["loaded"] == "loaded" and result["shape"][0] == n
    assert result["steps"] == [1, 2, 3, 13, 12]
    assert result["notice"] in result["title"]

    from PySide6.QtGui import QImage

    for name in ("xvfb_screen.png", "xvfb_window.png"):
        img = QImage(str(tmp_path / name)).convertToFormat(QImage.Format.Format_Grayscale8)
        assert not img.isNull() and img.width() >= 1000
        ptr = img.constBits()
        arr = np.frombuffer(ptr, np.uint8, img.sizeInBytes()).reshape(img.height(), img.bytesPerLine())
        assert arr.std() > 10  # the window with a CT slice, not an empty framebuffer
    keep = os.environ.get("CTSCREEN_XVFB_SCREENSHOT")
    if keep:  # for a person to look at
        shutil.copy(tmp_path / "xvfb_screen.png", keep)
