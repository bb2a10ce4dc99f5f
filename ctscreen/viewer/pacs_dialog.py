"""File -> Open from PACS...: search a PACS, pick a series, retrieve it into the cache and open it.

The search, the series listing and the retrieval run in the background
(:class:`~ctscreen.viewer.worker.GeneratorWorker` around the same functions ``ctscreen pull``
uses); a progress bar and a Cancel button follow the retrieval. The retrieved series is
opened as if its folder had been dropped on the window (``seriesRetrieved(folder)``).
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout,
                               QHeaderView, QInputDialog, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from ctscreen import RESEARCH_NOTICE
from ctscreen.errors import Cancelled
from ctscreen.io.pacs.common import PacsError, SeriesRecord, StudyQuery, StudyRecord
from ctscreen.io.pacs.config import ServerConfig, default_cache_dir, load_servers
from ctscreen.viewer.pacs_settings import SESSION_SECRETS, PacsSettingsDialog, secret_for
from ctscreen.viewer.worker import GeneratorWorker

STUDY_COLUMNS = ("Date", "Patient ID", "Name", "Accession", "Modality", "Description", "Series / images")
_ROLE = Qt.ItemDataRole.UserRole


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def _search(server: ServerConfig, query: StudyQuery, cancel: Any = None):
    from ctscreen.io.pacs import connect

    with connect(server) as pacs:
        yield "searching"
        return pacs.find_studies(query)


def _list_series(server: ServerConfig, study_uid: str, cancel: Any = None):
    from ctscreen.io.pacs import connect

    with connect(server) as pacs:
        yield "listing"
        return pacs.find_series(study_uid)


def _retrieve(server: ServerConfig, series: SeriesRecord, cache_dir: str, cancel: Any = None):
    from ctscreen.io.pacs import connect

    with connect(server) as pacs:
        return (yield from pacs.retrieve_series(series.study_instance_uid, series.series_instance_uid, cache_dir,
                                                cancel=cancel.is_set if cancel is not None else None))


class PacsDialog(QDialog):
    """Search form, studies -> series table, progress bar and Cancel.

    Parameters
    ----------
    config_folder : path, optional
        Where ``pacs_servers.json`` is (tests); default the user's configuration folder.
    cache_dir : path, optional
        Where retrieved series go; default :func:`ctscreen.io.pacs.config.default_cache_dir`.
    interactive : bool
        False: never open a password prompt (tests, screenshots).

    Signals
    -------
    seriesRetrieved(str)
        The folder of a retrieved series, ready to open.
    """

    seriesRetrieved = Signal(str)

    def __init__(self, parent: QWidget | None = None, config_folder: Any = None, cache_dir: Any = None,
                 interactive: bool = True) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open from PACS \u2014 ctscreen")
        self.setObjectName("pacsDialog")
        self.config_folder = config_folder
        self.interactive = interactive
        self.servers: list[ServerConfig] = []
        self._worker: GeneratorWorker | None = None
        self._last_error = ""
        self._pending_expand: QTreeWidgetItem | None = None  # a study expanded while busy: list it after

        self.server_box = QComboBox()
        self.server_box.setMinimumWidth(260)
        settings = QPushButton("Servers\u2026")
        settings.clicked.connect(self.edit_servers)
        self.cache_edit = QLineEdit(str(cache_dir or default_cache_dir()))
        browse = QPushButton("\u2026")
        browse.setFixedWidth(32)
        browse.clicked.connect(self._choose_cache)
        top = QHBoxLayout()
        top.addWidget(QLabel("Server"))
        top.addWidget(self.server_box, 1)
        top.addWidget(settings)
        top.addSpacing(16)
        top.addWidget(QLabel("Cache"))
        top.addWidget(self.cache_edit, 1)
        top.addWidget(browse)

        self.patient_id = QLineEdit()
        self.patient_name = QLineEdit()
        self.patient_name.setPlaceholderText("starts with; * and ? allowed")
        self.dates = QLineEdit()
        self.dates.setPlaceholderText("YYYYMMDD-YYYYMMDD (either end optional)")
        self.accession = QLineEdit()
        self.modality = QComboBox()
        self.modality.setEditable(True)
        self.modality.addItems(["CT", "", "MR", "PT", "CR", "DX"])
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.search_button.clicked.connect(self.search)
        form = QGridLayout()
        left, right = QFormLayout(), QFormLayout()
        left.addRow("Patient ID", self.patient_id)
        left.addRow("Patient name", self.patient_name)
        left.addRow("Study date", self.dates)
        right.addRow("Accession", self.accession)
        right.addRow("Modality", self.modality)
        right.addRow("", self.search_button)
        form.addLayout(left, 0, 0)
        form.addLayout(right, 0, 1)

        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(list(STUDY_COLUMNS))
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.header().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setSectionResizeMode(5, QHeaderView.ResizeMode.Stretch)
        self.tree.itemExpanded.connect(self._expanded)
        self.tree.itemSelectionChanged.connect(self._selection_changed)
        self.tree.itemDoubleClicked.connect(lambda item, _col: self.retrieve_selected())

        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status = QLabel("Choose a server, fill in what you know, and press Search.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.retrieve_button = QPushButton("Retrieve and open")
        self.retrieve_button.setEnabled(False)
        self.retrieve_button.clicked.connect(self.retrieve_selected)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        bottom = QHBoxLayout()
        bottom.addWidget(self.progress, 1)
        bottom.addWidget(self.retrieve_button)
        bottom.addWidget(self.cancel_button)
        bottom.addWidget(close)
        notice = QLabel(f"<span style='color:#c0392b'><b>{RESEARCH_NOTICE}</b></span>")

        outer = QVBoxLayout(self)
        outer.addLayout(top)
        outer.addLayout(form)
        outer.addWidget(self.tree, 1)
        outer.addWidget(self.status)
        outer.addLayout(bottom)
        outer.addWidget(notice)
        self.resize(980, 600)
        self.reload_servers()

    # -- servers -----------------------------------------------------------------------------------
    def reload_servers(self) -> None:
        current = self.server_box.currentText()
        try:
            self.servers = load_servers(self.config_folder)
        except PacsError as exc:
            self.servers = []
            self.status.setText(str(exc))
        self.server_box.clear()
        for s in self.servers:
            self.server_box.addItem(s.name, s.name)
            self.server_box.setItemData(self.server_box.count() - 1, s.describe(), Qt.ItemDataRole.ToolTipRole)
        i = self.server_box.findText(current)
        if i >= 0:
            self.server_box.setCurrentIndex(i)
        if not self.servers:
            self.status.setText("No PACS server is configured yet \u2014 press Servers\u2026 to add one.")
        self.search_button.setEnabled(bool(self.servers))

    def edit_servers(self) -> None:
        dlg = PacsSettingsDialog(self, self.config_folder)
        dlg.saved.connect(self.reload_servers)
        dlg.exec()

    def current_server(self) -> ServerConfig | None:
        i = self.server_box.currentIndex()
        if not 0 <= i < len(self.servers):
            return None
        server = self.servers[i]
        if server.protocol == "dicomweb" and server.auth != "none":
            secret = secret_for(server)
            if not secret and self.interactive:
                label = "Password" if server.auth == "basic" else "Token"
                secret, ok = QInputDialog.getText(self, "PACS", f"{label} for {server.describe()}:",
                                                  QLineEdit.EchoMode.Password)
                if not ok:
                    return None
                SESSION_SECRETS[server.name] = secret
            server = server.with_secret(secret)
        return server

    def _choose_cache(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Cache folder for retrieved series", self.cache_edit.text())
        if folder:
            self.cache_edit.setText(folder)

    # -- background work ------------------------------------------------------------------------------
    def _busy(self) -> bool:
        return self._worker is not None and self._worker.is_running

    def _run(self, func, *args, on_result, on_progress=None, label: str = "") -> None:
        self._last_error = ""
        worker = GeneratorWorker(func, *args)
        worker.returned.connect(on_result)
        if on_progress is not None:
            worker.yielded.connect(on_progress)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self._worker = worker
        self.status.setText(label)
        self.search_button.setEnabled(False)
        self.retrieve_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first progress
        worker.start()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self._last_error = ""
            self.status.setText(f"Cancelled. {exc}" if "resume" in str(exc) else "Cancelled.")
        else:
            self._last_error = str(exc)
            self.status.setText(f"\u2716 {exc}")

    def _finished(self) -> None:
        self.cancel_button.setEnabled(False)
        self.search_button.setEnabled(bool(self.servers))
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
        self._selection_changed()
        pending, self._pending_expand = self._pending_expand, None
        if pending is not None and not self._last_error:
            self._expanded(pending)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self.status.setText("Cancelling\u2026")

    # -- search ------------------------------------------------------------------------------------------
    def query(self) -> StudyQuery:
        return StudyQuery.from_text(patient_id=self.patient_id.text(), patient_name=self.patient_name.text(),
                                    date_range=self.dates.text(), accession_number=self.accession.text(),
                                    modality=self.modality.currentText())

    def search(self) -> None:
        if self._busy():
            return
        try:
            query = self.query()
        except ValueError as exc:
            self.status.setText(f"\u2716 {exc}")
            return
        server = self.current_server()
        if server is None:
            return
        self.tree.clear()
        self._run(_search, server, query, on_result=lambda studies: self._show_studies(server, studies),
                  label=f"Searching {server.describe()} \u2026")

    def _show_studies(self, server: ServerConfig, studies: list[StudyRecord]) -> None:
        self.tree.clear()
        for st in studies:
            counts = f"{st.series_count if st.series_count is not None else '?'} / " \
                     f"{st.instance_count if st.instance_count is not None else '?'}"
            item = QTreeWidgetItem([_date(st.study_date), st.patient_id, st.patient_name, st.accession_number,
                                    "/".join(st.modalities), st.description, counts])
            item.setData(0, _ROLE, ("study", st))
            item.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.ShowIndicator)
            self.tree.addTopLevelItem(item)
        self.status.setText(f"{len(studies)} {'study' if len(studies) == 1 else 'studies'} found on "
                            f"{server.describe()}." + (" Expand a study to see its series." if studies else ""))
        if len(studies) == 1:
            self.tree.topLevelItem(0).setExpanded(True)

    def _expanded(self, item: QTreeWidgetItem) -> None:
        kind, record = item.data(0, _ROLE) or (None, None)
        if kind != "study" or item.childCount():
            return
        if self._busy():
            self._pending_expand = item
            return
        server = self.current_server()
        if server is None:
            return
        self._run(_list_series, server, record.study_instance_uid,
                  on_result=lambda series: self._show_series(item, series),
                  label=f"Listing the series of study {record.study_instance_uid} \u2026")

    def _show_series(self, study_item: QTreeWidgetItem, series: list[SeriesRecord]) -> None:
        for se in series:
            n = "?" if se.instance_count is None else str(se.instance_count)
            number = se.series_number if se.series_number is not None else "?"
            child = QTreeWidgetItem([f"Series #{number}", "", "", "", se.modality,
                                     se.description or "(no description)", f"{n} images"])
            child.setToolTip(0, se.series_instance_uid)
            child.setData(0, _ROLE, ("series", se))
            study_item.addChild(child)
        study_item.setChildIndicatorPolicy(QTreeWidgetItem.ChildIndicatorPolicy.DontShowIndicatorWhenChildless)
        study_item.setExpanded(True)
        ct = [i for i in range(study_item.childCount())
              if study_item.child(i).data(0, _ROLE)[1].modality == "CT"]
        if ct:
            self.tree.setCurrentItem(study_item.child(ct[0]))
        self.status.setText(f"{len(series)} series. Select one and press Retrieve and open.")

    def selected_series(self) -> SeriesRecord | None:
        item = self.tree.currentItem()
        if item is None:
            return None
        kind, record = item.data(0, _ROLE) or (None, None)
        return record if kind == "series" else None

    def _selection_changed(self) -> None:
        self.retrieve_button.setEnabled(self.selected_series() is not None and not self._busy())

    # -- retrieve ----------------------------------------------------------------------------------------
    def retrieve_selected(self) -> None:
        series = self.selected_series()
        if series is None or self._busy():
            return
        server = self.current_server()
        if server is None:
            return
        cache = self.cache_edit.text().strip() or str(default_cache_dir())
        try:
            os.makedirs(cache, exist_ok=True)
        except OSError as exc:
            self.status.setText(f"\u2716 cannot create the cache folder {cache}: {exc.strerror or exc} \u2014 "
                                "choose another")
            return
        self._run(_retrieve, server, series, cache, on_result=self._retrieved, on_progress=self._progress,
                  label=f"Retrieving series {series.series_number or ''} {series.description} \u2026")

    def _progress(self, p: Any) -> None:
        self.progress.setFormat("%v / %m")
        self.progress.setRange(0, max(1, int(p.total)))
        self.progress.setValue(int(p.done))
        if p.message:
            self.status.setText(f"Retrieving: {p.message}")

    def _retrieved(self, result: Any) -> None:
        self.progress.setValue(self.progress.maximum())
        note = f" ({result.skipped} already cached)" if result.skipped else ""
        warn = f" \u26a0 {result.warnings[0]}" if result.warnings else ""
        self.status.setText(f"Retrieved {len(result.files)} files into {result.folder}{note}.{warn}")
        self.seriesRetrieved.emit(result.folder)

    def done(self, result: int) -> None:  # noqa: D401 - Qt override
        if self._worker is not None and self._worker.is_running:
            self._worker.cancel()
        super().done(result)


def open_from_pacs(window: Any) -> PacsDialog:
    """Show the dialog for ``window`` (a MainWindow); a retrieved series opens there as if dropped."""
    dlg = getattr(window, "_pacs_dialog", None)
    if dlg is None:
        dlg = PacsDialog(window, interactive=getattr(window, "interactive", True))
        dlg.seriesRetrieved.connect(window.open_path)
        dlg.seriesRetrieved.connect(lambda _folder: dlg.accept())
        window._pacs_dialog = dlg
    dlg.show()
    dlg.raise_()
    dlg.activateWindow()
    return dlg


def _send(server: ServerConfig, result: Any, seg: bool, key_images: int, include_patient: bool, report: bool,
          cancel: Any = None):
    from ctscreen.io.pacs import connect
    from ctscreen.io.pacs.send import result_datasets

    yield "building"
    datasets, notes = result_datasets(result, seg=seg, key_images=key_images > 0, include_patient=include_patient,
                                      max_key_images=key_images, report=report)
    if not datasets:
        raise PacsError("nothing to send: " + ("; ".join(notes) or "choose the SEG or key images"))
    yield "sending"
    with connect(server) as pacs:
        stored = pacs.store(datasets)
    return datasets, stored, notes


class SendToPacsDialog(QDialog):
    """Send the shown analysis result (DICOM SEG + key images as Secondary Capture) to a PACS.

    Signals
    -------
    sent(object)
        The :class:`~ctscreen.io.pacs.common.StoreResult` of a finished send.
    """

    sent = Signal(object)

    def __init__(self, result: Any, parent: QWidget | None = None, config_folder: Any = None,
                 interactive: bool = True) -> None:
        from PySide6.QtWidgets import QCheckBox, QSpinBox

        super().__init__(parent)
        self.setWindowTitle("Send results to PACS \u2014 ctscreen")
        self.setObjectName("sendToPacsDialog")
        self.result = result
        self.config_folder = config_folder
        self.interactive = interactive
        self._worker: GeneratorWorker | None = None
        load_error = ""
        try:
            self.servers = load_servers(config_folder)
        except PacsError as exc:
            self.servers, load_error = [], str(exc)
        self.server_box = QComboBox()
        for s in self.servers:
            self.server_box.addItem(s.name, s.name)
        self.seg = QCheckBox("DICOM SEG of the lesions (GGO, consolidation)")
        self.seg.setChecked(True)
        self.key_images = QSpinBox()
        self.key_images.setRange(0, 24)
        self.key_images.setValue(6)
        self.key_images.setSuffix(" lesion slices + montage")
        self.key_images.setSpecialValueText("none")
        self.report = QCheckBox("One-page report (DICOM Encapsulated PDF)")
        self.report.setChecked(True)
        self.include_patient = QCheckBox("Show patient name and ID in the key images and report")
        form = QFormLayout()
        form.addRow("Server", self.server_box)
        form.addRow("", self.seg)
        form.addRow("Key images (Secondary Capture)", self.key_images)
        form.addRow("", self.report)
        form.addRow("", self.include_patient)
        vol = getattr(result, "volume", None)
        about = QLabel(f"Study {getattr(vol, 'study_instance_uid', '?')}<br>The objects join this study on the PACS "
                       "(its identifiers are copied into their headers).")
        about.setWordWrap(True)
        self.status = QLabel(load_error if load_error or self.servers else
                             "No PACS server is configured yet \u2014 use File \u2192 Open from PACS\u2026 \u2192 "
                             "Servers\u2026")
        self.status.setWordWrap(True)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setEnabled(bool(self.servers))
        self.send_button.clicked.connect(self.send)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.send_button)
        row.addWidget(close)
        outer = QVBoxLayout(self)
        outer.addLayout(form)
        outer.addWidget(about)
        outer.addWidget(self.status)
        outer.addWidget(QLabel(f"<span style='color:#c0392b'><b>{RESEARCH_NOTICE}</b></span>"))
        outer.addLayout(row)
        self.resize(560, 280)

    def current_server(self) -> ServerConfig | None:
        i = self.server_box.currentIndex()
        if not 0 <= i < len(self.servers):
            return None
        server = self.servers[i]
        if server.protocol == "dicomweb" and server.auth != "none":
            secret = secret_for(server)
            if not secret and self.interactive:
                secret, ok = QInputDialog.getText(self, "PACS", f"Password or token for {server.describe()}:",
                                                  QLineEdit.EchoMode.Password)
                if not ok:
                    return None
                SESSION_SECRETS[server.name] = secret
            server = server.with_secret(secret)
        return server

    def send(self) -> None:
        if self._worker is not None and self._worker.is_running:
            return
        server = self.current_server()
        if server is None:
            return
        self.send_button.setEnabled(False)
        self.status.setText(f"Building and sending to {server.describe()} \u2026")
        worker = GeneratorWorker(_send, server, self.result, self.seg.isChecked(), self.key_images.value(),
                                 self.include_patient.isChecked(), self.report.isChecked())
        worker.returned.connect(lambda out: self._done(server, *out))
        worker.errored.connect(lambda exc: self.status.setText(f"\u2716 {exc}"))
        worker.finished.connect(lambda: self.send_button.setEnabled(True))
        self._worker = worker
        worker.start()

    def _done(self, server: ServerConfig, datasets: list, stored: Any, notes: list) -> None:
        n_seg = sum(1 for d in datasets if str(getattr(d, "Modality", "")) == "SEG"
                    and str(d.SOPInstanceUID) in stored.stored)
        n_sc = sum(1 for d in datasets if str(getattr(d, "Modality", "")) == "OT"
                   and str(d.SOPInstanceUID) in stored.stored)
        n_doc = sum(1 for d in datasets if str(getattr(d, "Modality", "")) == "DOC"
                    and str(d.SOPInstanceUID) in stored.stored)
        text = f"\u2714 Sent {len(stored.stored)} of {len(datasets)} objects to {server.describe()}: " \
               f"{n_seg} SEG, {n_sc} key images, {n_doc} report."
        if stored.failed:
            text = f"\u2716 {len(stored.failed)} refused: {stored.failed[0][1]}. " + text
        if notes:
            text += " " + " ".join(notes)
        self.status.setText(text)
        self.sent.emit(stored)

    def done(self, result: int) -> None:  # noqa: D401 - Qt override
        if self._worker is not None and self._worker.is_running:
            self._worker.cancel()
        super().done(result)


def send_to_pacs(window: Any) -> SendToPacsDialog | None:
    """File -> Send results to PACS...: the dialog for ``window``'s current result (None without one)."""
    result = getattr(getattr(window, "analysis", None), "result", None)
    if result is None:
        window.statusBar().showMessage("Analyze the series first \u2014 there is no result to send yet", 8000)
        return None
    dlg = SendToPacsDialog(result, window, interactive=getattr(window, "interactive", True))
    window._send_dialog = dlg
    dlg.show()
    return dlg
