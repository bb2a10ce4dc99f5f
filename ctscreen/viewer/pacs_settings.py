"""File -> PACS servers...: add, edit, test and remove the PACS servers the viewer and ``ctscreen pull`` use.

The servers are saved in ``pacs_servers.json`` (:mod:`ctscreen.io.pacs.config`) without
passwords or tokens: those go to the operating system's keyring when there is one, and
otherwise are kept in memory for this session only (the window says which).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QHBoxLayout,
                               QLabel, QLineEdit, QListWidget, QMessageBox, QPushButton, QSpinBox, QStackedWidget,
                               QVBoxLayout, QWidget)

from ctscreen import RESEARCH_NOTICE
from ctscreen.io.pacs.common import PacsError
from ctscreen.io.pacs.config import (ServerConfig, get_secret, keyring_available, load_servers, save_servers,
                                     servers_path, set_secret)

#: Secrets typed in this session where no keyring is available, by server name (never written to disk).
SESSION_SECRETS: dict[str, str] = {}


def secret_for(server: ServerConfig) -> str:
    """The secret of ``server``: typed this session, else keyring / environment."""
    return SESSION_SECRETS.get(server.name) or get_secret(server)


class PacsSettingsDialog(QDialog):
    """Edit the list of PACS servers.

    Parameters
    ----------
    folder : path, optional
        Settings folder (tests); default :func:`ctscreen.io.pacs.config.config_dir`.

    Signals
    -------
    saved()
        The servers were written.
    """

    saved = Signal()

    def __init__(self, parent: QWidget | None = None, folder: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("PACS servers \u2014 ctscreen")
        self.setObjectName("pacsSettingsDialog")
        self.folder = folder
        self._worker = None
        try:
            self.servers = load_servers(folder)
            load_error = ""
        except PacsError as exc:
            self.servers, load_error = [], str(exc)
        self._secrets: dict[str, str] = {s.name: secret_for(s) for s in self.servers if s.auth != "none"}
        self._current = -1

        self.list = QListWidget()
        self.list.setMinimumWidth(170)
        self.list.currentRowChanged.connect(self._select)
        add = QPushButton("Add")
        add.clicked.connect(self.add_server)
        remove = QPushButton("Remove")
        remove.clicked.connect(self.remove_server)
        left = QVBoxLayout()
        left.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(add)
        row.addWidget(remove)
        left.addLayout(row)

        self.name = QLineEdit()
        self.protocol = QComboBox()
        self.protocol.addItem("DICOMweb (QIDO-RS / WADO-RS / STOW-RS)", "dicomweb")
        self.protocol.addItem("DIMSE (C-FIND / C-GET or C-MOVE / C-STORE)", "dimse")
        self.timeout = QDoubleSpinBox()
        self.timeout.setRange(1, 600)
        self.timeout.setSuffix(" s")
        self.timeout.setDecimals(0)

        self.url = QLineEdit()
        self.url.setPlaceholderText("http://pacs.example:8042/dicom-web")
        self.auth = QComboBox()
        for label, value in (("none", "none"), ("user name and password", "basic"), ("bearer token", "token")):
            self.auth.addItem(label, value)
        self.username = QLineEdit()
        self.secret = QLineEdit()
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.secret_note = QLabel("kept in the system keyring" if keyring_available() else
                                  "no system keyring: kept for this session only, never written to disk")
        self.secret_note.setWordWrap(True)
        self.verify_tls = QCheckBox("Check the HTTPS certificate (turn off only for a test server)")
        web = QWidget()
        wf = QFormLayout(web)
        wf.addRow("DICOMweb URL", self.url)
        wf.addRow("Authentication", self.auth)
        wf.addRow("User name", self.username)
        wf.addRow("Password / token", self.secret)
        wf.addRow("", self.secret_note)
        wf.addRow("", self.verify_tls)

        self.host = QLineEdit()
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.called_ae = QLineEdit()
        self.called_ae.setMaxLength(16)
        self.calling_ae = QLineEdit()
        self.calling_ae.setMaxLength(16)
        self.retrieve = QComboBox()
        self.retrieve.addItem("C-GET (no incoming connection)", "get")
        self.retrieve.addItem("C-MOVE (PACS sends to ctscreen's port)", "move")
        self.move_port = QSpinBox()
        self.move_port.setRange(1, 65535)
        self.retrieve.currentIndexChanged.connect(
            lambda _i: self.move_port.setEnabled(self.retrieve.currentData() == "move"))
        dimse = QWidget()
        df = QFormLayout(dimse)
        df.addRow("Host", self.host)
        df.addRow("Port", self.port)
        df.addRow("PACS AE title", self.called_ae)
        df.addRow("ctscreen AE title", self.calling_ae)
        df.addRow("Retrieve by", self.retrieve)
        df.addRow("C-MOVE port", self.move_port)

        self.pages = QStackedWidget()
        self.pages.addWidget(web)
        self.pages.addWidget(dimse)
        self.protocol.currentIndexChanged.connect(self.pages.setCurrentIndex)

        form = QFormLayout()
        form.addRow("Name", self.name)
        form.addRow("Protocol", self.protocol)
        form.addRow("Timeout", self.timeout)
        self.test_button = QPushButton("Test connection")
        self.test_button.clicked.connect(self.test_connection)
        self.status = QLabel(load_error)
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        right = QVBoxLayout()
        right.addLayout(form)
        right.addWidget(self.pages)
        right.addWidget(self.test_button, 0, Qt.AlignmentFlag.AlignLeft)
        right.addWidget(self.status)
        right.addStretch(1)

        body = QHBoxLayout()
        body.addLayout(left)
        body.addLayout(right, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        notice = QLabel(f"<span style='color:#c0392b'><b>{RESEARCH_NOTICE}</b></span>  Settings file: "
                        f"{servers_path(folder)}")
        notice.setWordWrap(True)
        outer = QVBoxLayout(self)
        outer.addLayout(body, 1)
        outer.addWidget(notice)
        outer.addWidget(buttons)
        self.resize(760, 470)

        for s in self.servers:
            self.list.addItem(s.name)
        self._set_editing(bool(self.servers))
        if self.servers:
            self.list.setCurrentRow(0)

    # -- editing --------------------------------------------------------------------------------
    def _set_editing(self, enabled: bool) -> None:
        for w in (self.name, self.protocol, self.timeout, self.pages, self.test_button):
            w.setEnabled(enabled)

    def _show(self, s: ServerConfig) -> None:
        self.name.setText(s.name)
        self.protocol.setCurrentIndex(0 if s.protocol == "dicomweb" else 1)
        self.pages.setCurrentIndex(self.protocol.currentIndex())
        self.timeout.setValue(float(s.timeout_s))
        self.url.setText(s.url)
        self.auth.setCurrentIndex(max(0, self.auth.findData(s.auth)))
        self.username.setText(s.username)
        self.secret.setText(self._secrets.get(s.name, ""))
        self.host.setText(s.host)
        self.port.setValue(int(s.port))
        self.called_ae.setText(s.called_ae)
        self.calling_ae.setText(s.calling_ae)
        self.retrieve.setCurrentIndex(max(0, self.retrieve.findData(s.retrieve)))
        self.move_port.setValue(int(s.move_port))
        self.move_port.setEnabled(s.retrieve == "move")
        self.verify_tls.setChecked(bool(s.verify_tls))

    def _read(self) -> ServerConfig:
        return ServerConfig(
            name=self.name.text().strip(), protocol=self.protocol.currentData(), url=self.url.text().strip(),
            host=self.host.text().strip(), port=self.port.value(), called_ae=self.called_ae.text().strip(),
            calling_ae=self.calling_ae.text().strip() or "CTSCREEN", retrieve=self.retrieve.currentData(),
            move_port=self.move_port.value(), auth=self.auth.currentData(), username=self.username.text().strip(),
            timeout_s=float(self.timeout.value()), verify_tls=self.verify_tls.isChecked(), secret=self.secret.text())

    def _commit_current(self) -> None:
        if 0 <= self._current < len(self.servers):
            s = self._read()
            old = self.servers[self._current].name
            self._secrets.pop(old, None)
            if s.secret:
                self._secrets[s.name] = s.secret
            self.servers[self._current] = dataclasses.replace(s, secret="")
            item = self.list.item(self._current)
            if item is not None:
                item.setText(s.name or "(no name)")

    def _select(self, row: int) -> None:
        self._commit_current()
        self._current = row
        if 0 <= row < len(self.servers):
            self._show(self.servers[row])
            self.status.setText("")
        self._set_editing(0 <= row < len(self.servers))

    def add_server(self) -> None:
        self._commit_current()
        names = {s.name for s in self.servers}
        n = 1
        while f"PACS {n}" in names:
            n += 1
        self.servers.append(ServerConfig(name=f"PACS {n}", url="http://localhost:8042/dicom-web",
                                         host="localhost", port=4242, called_ae="ORTHANC"))
        self._current = -1
        self.list.addItem(f"PACS {n}")
        self.list.setCurrentRow(len(self.servers) - 1)

    def remove_server(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.servers):
            return
        self._current = -1
        removed = self.servers.pop(row)
        self._secrets.pop(removed.name, None)
        self.list.takeItem(row)
        if not self.servers:
            self._set_editing(False)

    # -- actions -----------------------------------------------------------------------------------
    def test_connection(self) -> None:
        """C-ECHO / a QIDO-RS search in the background; the answer goes to the status line."""
        from ctscreen.io.pacs import connect
        from ctscreen.viewer.worker import GeneratorWorker

        try:
            server = self._read().validate()
        except PacsError as exc:
            self.status.setText(str(exc))
            return

        def echo(server: ServerConfig, cancel: Any = None):
            with connect(server) as pacs:
                pacs.echo()
            yield from ()
            return server.describe()

        self.status.setText(f"Connecting to {server.describe()} \u2026")
        self.test_button.setEnabled(False)
        self._worker = GeneratorWorker(echo, server)
        self._worker.returned.connect(lambda where: self.status.setText(f"\u2714 {where} answered."))
        self._worker.errored.connect(lambda exc: self.status.setText(f"\u2716 {exc}"))
        self._worker.finished.connect(lambda: self.test_button.setEnabled(True))
        self._worker.start()

    def save(self) -> None:
        self._commit_current()
        try:
            save_servers(self.servers, self.folder)
        except PacsError as exc:
            self.status.setText(str(exc))
            if self.isVisible() and self.parent() is not None:
                QMessageBox.warning(self, "PACS servers", str(exc))
            return
        for s in self.servers:
            secret = self._secrets.get(s.name, "") if s.auth != "none" else ""
            if not set_secret(s, secret):
                if secret:
                    SESSION_SECRETS[s.name] = secret
        self.saved.emit()
        self.accept()

    def done(self, result: int) -> None:  # noqa: D401 - Qt override
        if self._worker is not None and self._worker.is_running:
            self._worker.cancel()
        super().done(result)
