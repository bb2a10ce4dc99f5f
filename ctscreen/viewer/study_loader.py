"""Opening a folder: scan it, pick a series, load it, off the GUI thread.

One :class:`StudyLoader` per window. Starting a new open cancels the one in
progress; results of a superseded request are dropped (a generation
counter, as napari's layer slicer does), so a slow old load can never replace
the study the user has just asked for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from typing import Any

from PySide6.QtCore import QObject, Signal

from ctscreen.errors import Cancelled, NotADicomSeries
from ctscreen.io import dicom
from ctscreen.viewer.worker import GeneratorWorker


def series_uid(info: Any) -> str:
    """The identity of a scanned series: its ``key`` (the UID, or ``UID#n`` when one UID was split)."""
    return str(getattr(info, "key", "") or getattr(info, "series_instance_uid", ""))


def series_slice_count(info: Any) -> int:
    return int(getattr(info, "slice_count", 0) or len(getattr(info, "files", ()) or ()))


def pick_series(scan: Any, uid: str | None = None) -> Any:
    """The series to open: ``uid`` (key or SeriesInstanceUID) if given, else the scan's first,
    which :func:`~ctscreen.io.dicom.scan_folder` sorts largest analysable CT first.

    Raises
    ------
    NotADicomSeries
        When ``uid`` is given but not in the scan.
    """
    if uid:
        return dicom.find_series(scan, uid)
    return scan.series[0]


def _scan(path: str, cancel: threading.Event) -> Generator[None, None, Any]:
    # scan_folder is one call (it checks ``cancel`` between files); the generator shape lets it
    # share the worker.
    yield None
    if cancel.is_set():
        raise Cancelled("opening cancelled by the user")
    return dicom.scan_folder(path, cancel=cancel)


def _load(source: Any, cancel: threading.Event) -> Generator[Any, None, Any]:
    return (yield from dicom.iter_load_series(source, cancel=cancel))


class StudyLoader(QObject):
    """Scan, choose and load, reporting through signals on the GUI thread.

    Signals
    -------
    scanned(object, object)
        The folder's ``ScanResult`` and the series chosen to load.
    progress(object)
        A ``LoadProgress`` from the loader.
    loaded(object)
        The :class:`~ctscreen.imaging.volume.Volume`.
    failed(object)
        The exception (a ``CtscreenError`` for expected problems); not emitted on cancel.
    cancelled()
    busyChanged(bool)
    """

    scanned = Signal(object, object)
    progress = Signal(object)
    loaded = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    busyChanged = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._generation = 0
        self._worker: GeneratorWorker | None = None
        self._path = ""
        self._series_uid: str | None = None
        self.scan_result: Any = None
        #: The SeriesInfo being (or last) loaded.
        self.current_series: Any = None

    @property
    def busy(self) -> bool:
        return self._worker is not None

    @property
    def path(self) -> str:
        return self._path

    def open(self, path: str | os.PathLike, series_uid_: str | None = None) -> None:
        """Scan ``path`` and load its main series (or ``series_uid_``)."""
        self.cancel()
        self._generation += 1
        self._path = os.fspath(path)
        self._series_uid = series_uid_
        self.scan_result = None
        self._start(GeneratorWorker(_scan, self._path), self._on_scanned)

    def load_series(self, info: Any) -> None:
        """Load one series of the last scan (from the series browser)."""
        self.cancel()
        self._generation += 1
        self.current_series = info
        self._start(GeneratorWorker(_load, info), self._on_loaded, self.progress.emit)

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Cancel and join the running worker (window closing)."""
        worker = self._worker
        if worker is not None:
            worker.cancel()
            worker.wait(timeout_s)
            worker.blockSignals(True)  # its queued outcome must not reach a closing window

    # -- plumbing ---------------------------------------------------------------------
    def _start(self, worker: GeneratorWorker, on_return, on_yield=None) -> None:
        generation = self._generation
        self._worker = worker

        def current() -> bool:
            return generation == self._generation

        if on_yield is not None:
            worker.yielded.connect(lambda item: current() and on_yield(item))
        worker.returned.connect(lambda value: current() and on_return(value))
        worker.errored.connect(lambda exc: current() and self._on_error(exc))
        worker.finished.connect(lambda: self._on_finished(worker))
        worker.start()
        self.busyChanged.emit(True)

    def _on_finished(self, worker: GeneratorWorker) -> None:
        if self._worker is worker:
            self._worker = None
            self.busyChanged.emit(False)
        worker.deleteLater()

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.cancelled.emit()
        else:
            self.failed.emit(exc)

    def _on_scanned(self, result: Any) -> None:
        self.scan_result = result
        if not result.series:
            self.failed.emit(dicom.no_series_error(self._path, result))
            return
        try:
            chosen = pick_series(result, self._series_uid)
        except NotADicomSeries as exc:
            self.scanned.emit(result, None)
            self.failed.emit(exc)
            return
        self.current_series = chosen
        self.scanned.emit(result, chosen)
        # Chain the load in the same generation: a newer open() still wins.
        self._start(GeneratorWorker(_load, chosen), self._on_loaded, self.progress.emit)

    def _on_loaded(self, volume: Any) -> None:
        self.loaded.emit(volume)
