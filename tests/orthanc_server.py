"""A real Orthanc PACS for the tests, on free localhost ports with temporary storage.

Orthanc comes from the Debian packages ``orthanc`` and ``orthanc-dicomweb``
(``tools/install.sh`` installs them). :class:`OrthancServer` writes its own
``config.json`` (HTTP and DICOM ports picked free on 127.0.0.1, storage in a temporary
folder, only the DicomWeb plugin loaded, basic authentication on, C-FIND/C-GET/C-MOVE
allowed, ctscreen's AE registered as a C-MOVE destination), starts ``Orthanc``, waits
until it answers, and stops it afterwards. A system Orthanc service, if any, is left alone.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
USER, PASSWORD = "ctscreen", "test-secret"
AET = "ORTHANCTEST"


def dicomweb_plugin() -> str | None:
    for p in PLUGIN_CANDIDATES:
        if os.path.exists(p):
            return p
    lib = Path("/usr/lib/orthanc")
    found = sorted(lib.glob("libOrthancDicomWeb.so*")) if lib.is_dir() else []
    return str(found[0]) if found else None


def available() -> str:
    """``""`` when Orthanc and its DicomWeb plugin are installed, else why not."""
    if not os.path.exists(ORTHANC_BIN):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; see tools/install.sh)"
    if dicomweb_plugin() is None:
        return "the Orthanc DicomWeb plugin is not installed (apt-get install orthanc-dicomweb)"
    return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """Start/stop one Orthanc.

    Attributes
    ----------
    http_port, dicom_port, move_port : int
        Its REST/DICOMweb port, its DICOM port, and the port ctscreen's C-MOVE SCP is registered with.
    url : str
        DICOMweb root (``http://127.0.0.1:PORT/dicom-web``).
    """

    def __init__(self, workdir: Path, calling_ae: str = "CTSCREEN") -> None:
        self.workdir = Path(workdir)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.move_port = free_port()
        self.calling_ae = calling_ae
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        storage = self.workdir / "storage"
        return {
            "Name": "ctscreen-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [dicomweb_plugin()],
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "DicomCheckCalledAet": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalities": {"ctscreen": [self.calling_ae, "127.0.0.1", self.move_port]},
            "DicomScpTimeout": 10,
            "HttpTimeout": 10,
            "StableAge": 1,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }

    def start(self, timeout_s: float = 20.0) -> "OrthancServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.json"
        cfg.write_text(json.dumps(self.config(), indent=1))
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _request(self, path: str, data: bytes | None = None, method: str | None = None,
                 content_type: str = "application/dicom") -> bytes:
        req = urllib.request.Request(self.rest + path, data=data, method=method)
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.read()

    def get(self, path: str) -> object:
        return json.loads(self._request(path))

    def upload(self, paths: list[Path]) -> list[str]:
        """POST each file to /instances (REST); returns the Orthanc instance IDs."""
        ids = []
        for p in paths:
            answer = json.loads(self._request("/instances", Path(p).read_bytes(), "POST"))
            ids.append(answer["ID"])
        return ids

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None
        try:
            self._log.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "OrthancServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
