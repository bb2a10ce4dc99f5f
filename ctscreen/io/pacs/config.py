"""PACS server settings, shared by the command line and the viewer.

Research use, not for diagnosis.

The servers live in one JSON file, ``pacs_servers.json``, in ctscreen's configuration
folder (``$CTSCREEN_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/ctscreen``, else
``~/.config/ctscreen``). The file holds names, addresses, AE titles, the DICOMweb URL and
a user name - never a password or token. Secrets go to the operating system's keyring
(the ``keyring`` package: macOS Keychain, Windows Credential Locker, Secret Service)
when one is available; otherwise they are read from the environment
(``CTSCREEN_PACS_SECRET_<NAME>`` or ``CTSCREEN_PACS_SECRET``) or kept in memory for the
session only (the viewer asks again next time).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ctscreen.io.files import atomic_write
from ctscreen.io.pacs.common import DEFAULT_CALLING_AE, DEFAULT_TIMEOUT_S, PacsError

CONFIG_DIR_ENV = "CTSCREEN_CONFIG_DIR"
CACHE_DIR_ENV = "CTSCREEN_PACS_CACHE"
SERVERS_FILE = "pacs_servers.json"
KEYRING_SERVICE = "ctscreen-pacs"
SECRET_ENV = "CTSCREEN_PACS_SECRET"
PROTOCOLS = ("dicomweb", "dimse")
AUTH_KINDS = ("none", "basic", "token")
RETRIEVE_METHODS = ("get", "move")

_AE_RE = re.compile(r"^[ -\[\]-~]{1,16}$")  # 16 printable characters, no backslash


def config_dir() -> Path:
    """ctscreen's configuration folder (not created)."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "ctscreen"


def default_cache_dir() -> Path:
    """Where the viewer caches retrieved series: ``$CTSCREEN_PACS_CACHE``, else ``$XDG_CACHE_HOME/ctscreen/pacs``
    or ``~/.cache/ctscreen/pacs``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ctscreen" / "pacs"


@dataclass
class ServerConfig:
    """One PACS.

    Attributes
    ----------
    name : str
        What the user calls it (``--server NAME``).
    protocol : {"dicomweb", "dimse"}
        Which interface query/retrieve/send use.
    url : str
        DICOMweb base URL (QIDO/WADO/STOW below it), e.g. ``http://pacs:8042/dicom-web``.
    host, port : str, int
        DIMSE address.
    called_ae : str
        The PACS's AE title.
    calling_ae : str
        ctscreen's own AE title (the PACS must know it for C-MOVE, often for C-FIND too).
    retrieve : {"get", "move"}
        DIMSE retrieval by C-GET (no inbound connection needed) or C-MOVE to ``calling_ae``
        (ctscreen listens on ``move_port``; the PACS must list this AE with that port).
    move_port : int
        Local port ctscreen's storage SCP listens on during a C-MOVE.
    auth : {"none", "basic", "token"}
        DICOMweb authentication. The password or token is never stored here.
    username : str
        For basic authentication.
    timeout_s : float
        Connection and answer timeout.
    verify_tls : bool
        Check the HTTPS certificate (turn off only for a test server).
    secret : str
        Password or token for this session; never written to the settings file.
    """

    name: str
    protocol: str = "dicomweb"
    url: str = ""
    host: str = ""
    port: int = 104
    called_ae: str = "ANY-SCP"
    calling_ae: str = DEFAULT_CALLING_AE
    retrieve: str = "get"
    move_port: int = 11113
    auth: str = "none"
    username: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_S
    verify_tls: bool = True
    secret: str = field(default="", repr=False, compare=False)

    def validate(self) -> "ServerConfig":
        """Check the values; returns self. Raises :class:`PacsError` naming the field."""
        where = f"PACS server {self.name!r}"
        if not self.name.strip():
            raise PacsError("a PACS server needs a name")
        if self.protocol not in PROTOCOLS:
            raise PacsError(f"{where}: protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.protocol == "dicomweb":
            if not re.match(r"^https?://[^/\s]+", self.url or ""):
                raise PacsError(f"{where}: DICOMweb URL {self.url!r} must start with http:// or https:// "
                                "(e.g. http://pacs:8042/dicom-web)")
        else:
            if not self.host.strip():
                raise PacsError(f"{where}: no host for DIMSE \u2014 set host, port and the PACS AE title")
            if not 0 < int(self.port) < 65536:
                raise PacsError(f"{where}: port {self.port} is not a TCP port")
            for label, ae in (("called AE title", self.called_ae), ("calling AE title", self.calling_ae)):
                if not _AE_RE.match(ae or "") or not ae.strip():
                    raise PacsError(f"{where}: {label} {ae!r} must be 1-16 characters without backslash")
            if self.retrieve not in RETRIEVE_METHODS:
                raise PacsError(f"{where}: retrieve {self.retrieve!r} is not 'get' or 'move'")
        if self.auth not in AUTH_KINDS:
            raise PacsError(f"{where}: auth {self.auth!r} is not one of {', '.join(AUTH_KINDS)}")
        if float(self.timeout_s) <= 0:
            raise PacsError(f"{where}: timeout must be positive")
        return self

    def describe(self) -> str:
        """``NAME (DICOMweb http://...)`` / ``NAME (DIMSE AE@host:port)`` for messages."""
        if self.protocol == "dicomweb":
            where = f"DICOMweb {self.url}"
            return where if self.name in (self.url, self.url.rstrip("/")) else f"{self.name} ({where})"
        where = f"DIMSE {self.called_ae}@{self.host}:{self.port}"
        return where if self.name == f"{self.called_ae}@{self.host}:{self.port}" else f"{self.name} ({where})"

    def to_dict(self) -> dict[str, Any]:
        """The settings-file form: everything but the secret."""
        d = asdict(self)
        d.pop("secret", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ServerConfig":
        known = {f.name for f in fields(cls)} - {"secret"}
        values = {k: v for k, v in dict(d).items() if k in known}
        if "port" in values:
            values["port"] = int(values["port"])
        if "move_port" in values:
            values["move_port"] = int(values["move_port"])
        if "timeout_s" in values:
            values["timeout_s"] = float(values["timeout_s"])
        return cls(**values)

    def with_secret(self, secret: str) -> "ServerConfig":
        return replace(self, secret=secret)


def parse_dimse_address(text: str, name: str | None = None) -> ServerConfig:
    """``AE@HOST:PORT`` (``HOST:PORT`` uses AE ``ANY-SCP``) -> a DIMSE :class:`ServerConfig`."""
    m = re.fullmatch(r"(?:(?P<ae>[^@]{1,16})@)?(?P<host>[^:@\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})", text.strip())
    if not m:
        raise PacsError(f"cannot read the DIMSE address {text!r} \u2014 write AE@HOST:PORT, e.g. ORTHANC@pacs:4242")
    host = m.group("host").strip("[]")
    return ServerConfig(name=name or text.strip(), protocol="dimse", host=host, port=int(m.group("port")),
                        called_ae=m.group("ae") or "ANY-SCP").validate()


def dicomweb_address(url: str, name: str | None = None) -> ServerConfig:
    """A DICOMweb :class:`ServerConfig` for a bare URL."""
    return ServerConfig(name=name or url, protocol="dicomweb", url=url.rstrip("/")).validate()


# -- the settings file -------------------------------------------------------------------------------
def servers_path(folder: str | os.PathLike | None = None) -> Path:
    return Path(folder) / SERVERS_FILE if folder else config_dir() / SERVERS_FILE


def load_servers(folder: str | os.PathLike | None = None) -> list[ServerConfig]:
    """The configured servers (empty when there is no settings file yet).

    Raises
    ------
    PacsError
        The file is not valid JSON or holds an invalid server.
    """
    path = servers_path(folder)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data.get("servers", []) if isinstance(data, dict) else []
        return [ServerConfig.from_dict(item) for item in items]
    except (OSError, ValueError, TypeError) as exc:
        raise PacsError(f"cannot read the PACS settings {path}: {exc} \u2014 fix or delete the file") from exc


def save_servers(servers: list[ServerConfig], folder: str | os.PathLike | None = None) -> Path:
    """Write the settings file atomically (no secrets in it)."""
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise PacsError("two PACS servers have the same name \u2014 names must be unique")
    for s in servers:
        s.validate()
    path = servers_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"servers": [s.to_dict() for s in servers]}, indent=2) + "\n"
    return atomic_write(path, text, force=True)


def find_server(name: str, folder: str | os.PathLike | None = None) -> ServerConfig:
    """The configured server called ``name``, with its secret filled in where one is stored."""
    servers = load_servers(folder)
    for s in servers:
        if s.name == name:
            return s.with_secret(get_secret(s)) if s.auth != "none" else s
    known = ", ".join(s.name for s in servers) or "none configured"
    raise PacsError(f"no PACS server called {name!r} in {servers_path(folder)} (known: {known}) \u2014 "
                    "add it in the viewer (File \u2192 PACS servers\u2026) or use --dicomweb URL / --dimse AE@HOST:PORT")


# -- secrets -------------------------------------------------------------------------------------------
def _keyring() -> Any | None:
    """The keyring module when a real backend (not the 'fail' or plaintext one) is available."""
    try:
        import keyring
        from keyring.backends import fail
    except Exception:  # noqa: BLE001 - not installed, or broken backend import
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(backend, fail.Keyring) or "plaintext" in type(backend).__module__.lower():
        return None
    try:
        if float(getattr(backend, "priority", 1)) <= 0:
            return None
    except Exception:  # noqa: BLE001
        return None
    return keyring


def keyring_available() -> bool:
    """Whether secrets can be kept in the OS keyring."""
    return _keyring() is not None


def _account(server: ServerConfig) -> str:
    return f"{server.name}:{server.username or server.auth}"


def _env_name(server_name: str) -> str:
    return SECRET_ENV + "_" + re.sub(r"[^A-Za-z0-9]", "_", server_name).upper()


def get_secret(server: ServerConfig) -> str:
    """The password or token of ``server``: in-memory value, keyring, then environment; ``""`` if none."""
    if server.secret:
        return server.secret
    kr = _keyring()
    if kr is not None:
        try:
            value = kr.get_password(KEYRING_SERVICE, _account(server))
            if value:
                return value
        except Exception:  # noqa: BLE001 - a locked keyring is "no secret", not a crash
            pass
    return os.environ.get(_env_name(server.name)) or os.environ.get(SECRET_ENV, "")


def set_secret(server: ServerConfig, secret: str) -> bool:
    """Keep ``secret`` in the OS keyring; returns False (nothing stored) when there is none."""
    kr = _keyring()
    if kr is None:
        return False
    try:
        if secret:
            kr.set_password(KEYRING_SERVICE, _account(server), secret)
        else:
            try:
                kr.delete_password(KEYRING_SERVICE, _account(server))
            except Exception:  # noqa: BLE001 - nothing stored
                pass
        return True
    except Exception:  # noqa: BLE001
        return False
