"""The main window: slice view in the middle, series and tags in docks, loading in the status bar."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (QDockWidget, QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar,
                               QStyle, QToolButton, QWidget)

from ctscreen import RESEARCH_NOTICE, __version__
from ctscreen.errors import CtscreenError
from ctscreen.imaging.volume import Volume
from ctscreen.viewer._qt_compat import collect_garbage_in_gui_thread
from ctscreen.viewer.analysis_ui import AnalysisUi
from ctscreen.viewer.display import PRESET_LABELS, PRESET_ORDER, Window
from ctscreen.viewer.reading import ReadingUi
from ctscreen.viewer.series_browser import SeriesBrowser, iter_thumbnails
from ctscreen.viewer.settings import ViewerSettings
from ctscreen.viewer.slice_view import CursorInfo, SliceView
from ctscreen.viewer.study_loader import StudyLoader, series_uid
from ctscreen.viewer.tag_panel import TagPanel
from ctscreen.viewer.worker import GeneratorWorker

log = logging.getLogger(__name__)

APP_TITLE = "ctscreen"
ICON_DIR = Path(__file__).resolve().parents[1] / "resources" / "icons"
HELP_TEXT = """<b>Mouse</b><br>
Wheel: next / previous slice<br>
Ctrl + wheel: zoom &nbsp;·&nbsp; left or middle drag: pan<br>
Right drag: window (left/right = width, up/down = level)<br><br>
<b>Keys</b><br>
Up / Down: one slice &nbsp;·&nbsp; Page Up / Page Down: 10 slices &nbsp;·&nbsp; Home / End: first / last<br>
1 lung &nbsp;·&nbsp; 2 mediastinum &nbsp;·&nbsp; 3 bone &nbsp;·&nbsp; 4 soft tissue &nbsp;·&nbsp; R: reset zoom and pan<br>
F5: analyze &nbsp;·&nbsp; O: lesion overlay &nbsp;·&nbsp; C: contours / filled &nbsp;·&nbsp; L: lung outline
&nbsp;·&nbsp; G: Grad-CAM &nbsp;·&nbsp; Esc: cancel<br>
Ctrl+1 axial &nbsp;·&nbsp; Ctrl+2 axial, coronal, sagittal &nbsp;·&nbsp; Ctrl+3 2×2 with z-profile
(click a pane: the others move there)<br>
V navigate &nbsp;·&nbsp; D ruler &nbsp;·&nbsp; E ellipse ROI &nbsp;·&nbsp; P probe &nbsp;·&nbsp;
N / Shift+N next / previous lesion &nbsp;·&nbsp; Ctrl+Shift+S save view as PNG<br><br>
Drop a DICOM folder or files on the window to open them."""


def app_icon() -> QIcon:
    return QIcon(str(ICON_DIR / "ctscreen.svg"))


def describe_error(exc: BaseException) -> str:
    """One line for the user: the core's own message, or what to do with an unexpected failure."""
    if isinstance(exc, CtscreenError):
        return str(exc)
    return (f"unexpected {type(exc).__name__}: {exc}. The viewer is still usable; "
            "please report this together with the folder you opened.")


class MainWindow(QMainWindow):
    """The ctscreen viewer window.

    Parameters
    ----------
    settings : ViewerSettings, optional
        Where to remember folders, window and geometry (tests pass an isolated one).
    interactive : bool
        False for ``--screenshot`` and tests that must never block: errors go to
        the status bar and :attr:`last_error`, no message box is opened.

    Signals
    -------
    volumeLoaded(object)
        A :class:`Volume` is now shown.
    loadFailed(str)
        Opening failed; the message shown to the user.
    """

    volumeLoaded = Signal(object)
    loadFailed = Signal(str)
    loadCancelled = Signal()

    def __init__(self, settings: ViewerSettings | None = None, interactive: bool = True) -> None:
        super().__init__()
        collect_garbage_in_gui_thread()  # workers must never free Qt objects (see _qt_compat)
        self.settings = settings or ViewerSettings()
        self.interactive = interactive
        self.last_error = ""
        self._pending_slice: int | None = None
        self._thumb_worker: GeneratorWorker | None = None
        self._error_box: QMessageBox | None = None
        self._shown: tuple[Volume, int | None] | None = None
        self._shown_index = 0
        self._scan_notes: list[str] = []
        self._tasks: dict[str, Any] = {}
        self.setObjectName("ctscreenMainWindow")
        self.setAcceptDrops(True)

        preset = self.settings.window_preset
        self.slice_view = SliceView(window=Window.preset(preset if preset in PRESET_ORDER else "lung"))
        self.setCentralWidget(self.slice_view)

        self.tag_panel = TagPanel()
        self.tags_dock = self._dock("DICOM tags", "tagsDock", self.tag_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.series_browser = SeriesBrowser()
        self.series_dock = self._dock("Series", "seriesDock", self.series_browser,
                                      Qt.DockWidgetArea.LeftDockWidgetArea)
        self.series_dock.hide()

        self._build_status_bar()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self.setWindowIcon(app_icon())

        self.loader = StudyLoader(self)
        self.loader.scanned.connect(self._on_scanned)
        self.loader.progress.connect(self._on_load_progress)
        self.loader.loaded.connect(self._on_loaded)
        self.loader.failed.connect(self._on_load_failed)
        self.loader.cancelled.connect(self._on_load_cancelled)
        self.loader.busyChanged.connect(self._loader_busy)
        self.series_browser.seriesActivated.connect(self._open_series)

        self.slice_view.sliceChanged.connect(self._on_slice_changed)
        self.slice_view.windowChanged.connect(self._on_window_changed)
        self.slice_view.cursorMoved.connect(self._on_cursor_moved)
        self._tag_timer = QTimer(self)
        self._tag_timer.setSingleShot(True)
        self._tag_timer.setInterval(120)  # refresh the tag tree when scrolling pauses, not per slice
        self._tag_timer.timeout.connect(self._refresh_tags)
        self.tags_dock.visibilityChanged.connect(lambda visible: visible and self._tag_timer.start())

        self.analysis_ui = AnalysisUi(self)
        #: The analysis controller (start/cancel, signals finished_ok/failed/cancelled).
        self.analysis = self.analysis_ui.controller
        #: Layouts (axial / 1x3 / 2x2), linked crosshair, measuring tools, lesion navigator.
        self.reading = ReadingUi(self, self.slice_view, self.analysis_ui.overlays, self.analysis, self.volumeLoaded,
                                 self.view_menu, self.file_menu, self.quit_action, self.analysis_ui.dock,
                                 self.settings)
        self.analysis_ui.exporter.reader_measurements = self.reading.tools.store.to_dicts  # into report.json
        self.addToolBar(self.analysis_ui.cam_toolbar)  # after the reading tools: the second toolbar row

        self.resize(1360, 860)
        self.resizeDocks([self.tags_dock], [450], Qt.Orientation.Horizontal)
        geometry, state = self.settings.geometry(), self.settings.state()
        if geometry is not None:
            self.restoreGeometry(geometry)
        if state is not None:
            self.restoreState(state)
            self.series_dock.hide()  # only shown when the open folder has several series
        self._update_title()
        self.slice_view.graphics.setFocus()

    # -- construction -----------------------------------------------------------------------
    def _dock(self, title: str, name: str, widget: QWidget, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setAllowedAreas(Qt.DockWidgetArea.LeftDockWidgetArea | Qt.DockWidgetArea.RightDockWidgetArea
                             | Qt.DockWidgetArea.BottomDockWidgetArea)
        self.addDockWidget(area, dock)
        return dock

    def _build_status_bar(self) -> None:
        bar = self.statusBar()
        self.cursor_label = QLabel("")
        self.cursor_label.setMinimumWidth(330)
        self.cursor_label.setToolTip("HU and patient position (DICOM LPS, mm) of the pixel under the mouse")
        self.warning_label = QLabel("")
        self.warning_label.setStyleSheet("color: #e0a000;")
        self.progress = QProgressBar()
        self.progress.setFixedWidth(220)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.cancel_button = QToolButton()
        self.cancel_button.setText("Cancel")
        self.cancel_button.setToolTip("Stop loading (Esc)")
        self.cancel_button.clicked.connect(self.cancel_work)
        self.cancel_button.hide()
        self.notice_label = QLabel(RESEARCH_NOTICE)
        self.notice_label.setObjectName("researchNotice")
        self.notice_label.setStyleSheet("color: #ff6b5e; font-weight: bold; padding: 0 6px;")
        self.notice_label.setToolTip("ctscreen is a research tool. Its output must not be used for diagnosis.")
        bar.addWidget(self.cursor_label)
        bar.addWidget(self.warning_label)
        bar.addPermanentWidget(self.progress)
        bar.addPermanentWidget(self.cancel_button)
        bar.addPermanentWidget(self.notice_label)

    def _build_actions(self) -> None:
        self.open_action = QAction("&Open folder…", self, shortcut=QKeySequence.StandardKey.Open,
                                   triggered=self.choose_folder)
        self.open_files_action = QAction("Open &files…", self, triggered=self.choose_files)
        self.quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close)
        self.cancel_action = QAction("Cancel", self, shortcut=QKeySequence(Qt.Key.Key_Escape),
                                     triggered=self.cancel_work)
        self.addAction(self.cancel_action)
        self.reset_view_action = QAction("&Reset view", self, shortcut=QKeySequence("R"),
                                         triggered=self.slice_view.reset_view)
        self.preset_group = QActionGroup(self)
        self.preset_group.setExclusive(True)
        self.preset_actions: dict[str, QAction] = {}
        for i, name in enumerate(PRESET_ORDER, start=1):
            width, level = Window.preset(name).width, Window.preset(name).level
            action = QAction(f"{PRESET_LABELS[name]}  (W {width:.0f} / L {level:.0f})", self,
                             shortcut=QKeySequence(str(i)), checkable=True)
            action.triggered.connect(lambda _=False, n=name: self.set_preset(n))
            self.preset_group.addAction(action)
            self.preset_actions[name] = action
        self._sync_preset_actions(self.slice_view.window)
        self.help_action = QAction("&Mouse and keys", self, shortcut=QKeySequence.StandardKey.HelpContents,
                                   triggered=self.show_help)
        self.about_action = QAction("&About ctscreen", self, triggered=self.show_about)

    def _build_menus(self) -> None:
        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        file_menu.addAction(self.open_action)
        file_menu.addAction(self.open_files_action)
        self.pacs_action = file_menu.addAction("Open from &PACS…", self.open_from_pacs)
        self.send_pacs_action = file_menu.addAction("Send results to PACS…", self.send_to_pacs)
        self.compare_action = file_menu.addAction("&Compare with…", self.compare_with)
        self.compare_action.setToolTip("Open a prior study beside this one, synchronised by anatomy, with the change "
                                       "per lung and zone")
        self.recent_menu = file_menu.addMenu("Open &recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self._fill_recent_menu()
        file_menu.addSeparator()
        self.file_menu = file_menu
        file_menu.addAction(self.quit_action)

        view_menu = menu.addMenu("&View")
        window_menu = view_menu.addMenu("&Window preset")
        for action in self.preset_actions.values():
            window_menu.addAction(action)
        view_menu.addAction(self.reset_view_action)
        view_menu.addSeparator()
        view_menu.addAction(self.tags_dock.toggleViewAction())
        view_menu.addAction(self.series_dock.toggleViewAction())
        self.view_menu = view_menu

        help_menu = menu.addMenu("&Help")
        help_menu.addAction(self.help_action)
        help_menu.addAction(self.about_action)
        self.help_menu = help_menu

    def _build_toolbar(self) -> None:
        bar = self.addToolBar("Main")
        bar.setObjectName("mainToolBar")
        bar.setMovable(False)
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.open_action.setIcon(self.style().standardIcon(QStyle.StandardPixmap.SP_DirOpenIcon))
        bar.addAction(self.open_action)
        bar.addSeparator()
        for name, action in self.preset_actions.items():
            button_action = QAction(PRESET_LABELS[name], self, checkable=True)
            button_action.setToolTip(f"{action.text()}  [{action.shortcut().toString()}]")
            # Mirror the menu action (which owns the shortcut) so both stay in step.
            button_action.triggered.connect(action.trigger)
            action.toggled.connect(button_action.setChecked)
            button_action.setChecked(action.isChecked())
            bar.addAction(button_action)
        bar.addAction(self.reset_view_action)
        self.toolbar = bar

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_folders()
        for folder in recent:
            action = self.recent_menu.addAction(folder)
            action.triggered.connect(lambda _=False, f=folder: self.open_path(f))
        if recent:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self.settings.clear_recent_folders)
        self.recent_menu.setEnabled(bool(recent))

    # -- opening ----------------------------------------------------------------------------------
    def open_path(self, path: str | os.PathLike, series_uid_: str | None = None,
                  slice_index: int | None = None) -> None:
        """Open a DICOM folder or file: scan, pick the series, load in the background."""
        path = os.fspath(path)
        if hasattr(self, "analysis"):
            self.analysis.cancel()  # a new study: the old one's analysis is no longer wanted
        self._pending_slice = slice_index
        self._scan_notes = []
        self._stop_thumbnails()
        self.last_error = ""
        self.warning_label.setText("")
        self.statusBar().showMessage(f"Opening {path} …")
        self.loader.open(path, series_uid_)

    def choose_folder(self) -> None:
        start = self.settings.last_folder or str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Open DICOM folder", start)
        if folder:
            self.open_path(folder)

    def open_from_pacs(self) -> None:
        """File → Open from PACS…: search, retrieve a series into the cache, open it as if dropped."""
        from ctscreen.viewer.pacs_dialog import open_from_pacs

        open_from_pacs(self)

    def send_to_pacs(self) -> None:
        """File → Send results to PACS…: the result's DICOM SEG and key images, beside the study."""
        from ctscreen.viewer.pacs_dialog import send_to_pacs

        send_to_pacs(self)

    def compare_with(self) -> None:
        """File → Compare with…: a prior study beside this one (:mod:`ctscreen.viewer.compare_window`)."""
        from ctscreen.viewer.compare_window import compare_with

        compare_with(self)

    def choose_files(self) -> None:
        start = self.settings.last_folder or str(Path.home())
        files, _ = QFileDialog.getOpenFileNames(self, "Open DICOM files", start, "DICOM (*.dcm *);;All files (*)")
        if files:
            self.open_path(files[0] if len(files) == 1 else os.path.commonpath(files))

    def cancel_work(self) -> None:
        """Cancel every running background task (Cancel button, Esc)."""
        if self._tasks:
            for cancel in list(self._tasks.values()):
                cancel()
            self.statusBar().showMessage("Cancelling…")

    def _open_series(self, info: Any) -> None:
        self._pending_slice = None
        self.statusBar().showMessage(f"Loading series {series_uid(info)} …")
        self.loader.load_series(info)

    def _on_scanned(self, result: Any, chosen: Any) -> None:
        series = list(getattr(result, "series", []) or [])
        self._scan_notes = list(getattr(result, "warnings", ()) or ())
        for note in self._scan_notes:
            log.info("%s", note)
        if len(series) > 1:
            self.series_browser.set_series(series, series_uid(chosen) if chosen is not None else "",
                                           int(getattr(result, "ignored_count", 0) or 0))
            self.series_dock.show()
        else:
            self.series_dock.hide()

    def _on_load_progress(self, progress: Any) -> None:
        done, total = int(getattr(progress, "done", 0) or 0), int(getattr(progress, "total", 0) or 0)
        self.task_progress(done, max(total, 1), "Loading %v / %m", str(getattr(progress, "message", "") or ""))
        first = getattr(progress, "first_slice", None)
        if first is not None:  # show the first slice at once, the rest follows
            spacing = getattr(progress, "spacing_yx_mm", None) or self._scan_spacing_yx()
            self.slice_view.show_preview(first, spacing)

    def _scan_spacing_yx(self) -> tuple[float, float]:
        # PixelSpacing is (row spacing, column spacing) = (y, x); the loader only
        # transposes non-axial series, whose preview may then be briefly stretched.
        spacing = getattr(self.loader.current_series, "pixel_spacing", None)
        return (float(spacing[0]), float(spacing[1])) if spacing else (1.0, 1.0)

    def _on_loaded(self, volume: Volume) -> None:
        self.settings.add_recent_folder(self.loader.path)
        self.show_volume(volume, self._pending_slice)
        self._pending_slice = None

    def show_volume(self, volume: Volume, slice_index: int | None = None) -> None:
        """Show an already loaded volume (the loader's result, or one built in memory)."""
        self._shown = (volume, slice_index)
        self.slice_view.set_volume(volume, slice_index)
        current = self.loader.current_series
        self.series_browser.set_current(series_uid(current) if current is not None else volume.series_instance_uid)
        warnings = list(volume.warnings) + [n for n in self._scan_notes if n not in volume.warnings]
        if warnings:
            self.warning_label.setText(f"⚠ {len(warnings)} warning{'s' if len(warnings) > 1 else ''}")
            self.warning_label.setToolTip("\n".join(warnings))
        else:
            self.warning_label.setText("")
            self.warning_label.setToolTip("")
        z, y, x = volume.spacing_mm
        self.statusBar().showMessage(
            f"{volume.shape[0]} slices {volume.shape[2]}×{volume.shape[1]}, {x:.2f}×{y:.2f}×{z:.2f} mm"
            + (f" — {volume.not_analysable_reason}" if volume.not_analysable_reason else ""), 10000)
        self._update_title()
        self._refresh_tags()
        self.slice_view.graphics.setFocus()
        self._start_thumbnails()
        self.volumeLoaded.emit(volume)

    def _on_load_failed(self, exc: BaseException) -> None:
        if not isinstance(exc, CtscreenError):
            log.error("loading failed", exc_info=exc)
        self._restore_shown_volume()
        self.show_error("Cannot open", describe_error(exc))
        self.loadFailed.emit(self.last_error)

    def _on_load_cancelled(self) -> None:
        self._restore_shown_volume()
        self.statusBar().showMessage("Loading cancelled.", 5000)
        self.loadCancelled.emit()

    def _restore_shown_volume(self) -> None:
        """After a failed or cancelled open, go back to the study shown before (the preview replaced it)."""
        if self.slice_view.volume is not None:
            return
        if self._shown is None:
            self.slice_view.clear()
        else:
            volume, _ = self._shown
            self.slice_view.set_volume(volume, self._shown_index)

    def _loader_busy(self, busy: bool) -> None:
        if busy:
            self.begin_task("Loading", self.loader.cancel)
            self.task_progress(0, 0, "Scanning…")  # busy indicator until the loader reports a total
        else:
            self.end_task("Loading")

    # -- background tasks in the status bar ------------------------------------------------------------
    def begin_task(self, name: str, cancel) -> None:
        """Show the progress bar and Cancel for a background task (loading, analysis)."""
        self._tasks[name] = cancel
        self.progress.setVisible(True)
        self.cancel_button.setVisible(True)
        self.cancel_button.setToolTip(f"Stop {' and '.join(t.lower() for t in self._tasks)} (Esc)")

    def task_progress(self, value: int, maximum: int, bar_format: str, message: str = "") -> None:
        self.progress.setRange(0, maximum)
        self.progress.setValue(value)
        self.progress.setFormat(bar_format)
        if message:
            self.statusBar().showMessage(message)

    def end_task(self, name: str) -> None:
        self._tasks.pop(name, None)
        if not self._tasks:
            self.progress.hide()
            self.cancel_button.hide()

    def configure_analysis(self, model: str | None = None, device: str | None = None) -> None:
        self.analysis_ui.configure(model=model, device=device)

    # -- thumbnails of the series browser ---------------------------------------------------------
    def _start_thumbnails(self) -> None:
        series = self.series_browser.series
        if len(series) < 2 or self._thumb_worker is not None:
            return
        worker = GeneratorWorker(iter_thumbnails, series)
        worker.yielded.connect(lambda item: self.series_browser.set_thumbnail(*item))
        worker.finished.connect(self._thumbnails_finished)
        self._thumb_worker = worker.start()

    def _thumbnails_finished(self) -> None:
        if self._thumb_worker is not None:
            self._thumb_worker.deleteLater()
        self._thumb_worker = None

    def _stop_thumbnails(self) -> None:
        if self._thumb_worker is not None:
            self._thumb_worker.cancel()

    # -- view state -------------------------------------------------------------------------------
    def set_preset(self, name: str) -> None:
        self.slice_view.set_preset(name)

    def _on_window_changed(self, window: Window) -> None:
        self._sync_preset_actions(window)
        if window.name in PRESET_ORDER:
            self.settings.window_preset = window.name

    def _sync_preset_actions(self, window: Window) -> None:
        for name, action in self.preset_actions.items():
            action.setChecked(name == window.name)
        if window.name not in self.preset_actions:
            checked = self.preset_group.checkedAction()
            if checked is not None:
                self.preset_group.setExclusive(False)
                checked.setChecked(False)
                self.preset_group.setExclusive(True)

    def _on_slice_changed(self, index: int) -> None:
        if self.slice_view.volume is not None:
            self._shown_index = index
        if self.tags_dock.isVisible():
            self._tag_timer.start()

    def _refresh_tags(self) -> None:
        volume = self.slice_view.volume
        if volume is None or not volume.headers:
            self.tag_panel.set_dataset(None)
            return
        k = min(self.slice_view.slice_index, len(volume.headers) - 1)
        self.tag_panel.set_dataset(volume.headers[k])

    def _on_cursor_moved(self, info: CursorInfo | None) -> None:
        self.cursor_label.setText(info.text if info is not None else "")

    def _update_title(self) -> None:
        volume = self.slice_view.volume
        parts = [APP_TITLE]
        if volume is not None:
            name = volume.patient_name or volume.patient_id or Path(self.loader.path).name
            parts.append(" ".join(p for p in (name, volume.series_description) if p))
        parts.append(RESEARCH_NOTICE)
        self.setWindowTitle(" — ".join(parts))

    # -- messages ----------------------------------------------------------------------------------
    def show_error(self, title: str, message: str) -> None:
        """Show ``message`` once: status bar always, a non-blocking message box when interactive."""
        self.last_error = message
        self.statusBar().showMessage(f"{title}: {message}")
        if not self.interactive:
            return
        if self._error_box is not None:
            self._error_box.close()
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(lambda _=0: setattr(self, "_error_box", None))
        self._error_box = box
        box.open()  # window-modal sheet; the event loop keeps running

    def show_help(self) -> None:
        QMessageBox.information(self, "Mouse and keys", HELP_TEXT)

    def show_about(self) -> None:
        QMessageBox.about(self, "About ctscreen",
                          f"<b>ctscreen {__version__}</b><br>Chest CT screening for COVID-19 pneumonia lesions."
                          f"<br><br><b>{RESEARCH_NOTICE}</b>")

    # -- drag and drop -------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        urls = event.mimeData().urls()
        if urls and all(u.isLocalFile() for u in urls):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_path(paths[0] if len(paths) == 1 else os.path.commonpath(paths))

    # -- closing -----------------------------------------------------------------------------------------
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.settings.save_window(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self.loader.shutdown()
        self.analysis.shutdown()
        if self._thumb_worker is not None:
            self._thumb_worker.cancel()
            self._thumb_worker.wait()
            self._thumb_worker.blockSignals(True)
        super().closeEvent(event)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt override
        return QSize(1360, 860)
