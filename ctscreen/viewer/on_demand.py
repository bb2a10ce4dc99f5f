"""One background computation at a time for the slice on screen: debounced, cached, cancellable.

The viewer computes some per-slice pictures only when the user looks at them: the
segmentation's Grad-CAM at another layer (:class:`~ctscreen.viewer.cam_on_demand.CamOnDemand`)
and the classifier's Grad-CAM (:class:`~ctscreen.viewer.screening_panel.ClassifierCamOnDemand`).
Both share the plumbing here: a single-shot timer that waits until scrolling pauses, one
:class:`~ctscreen.viewer.worker.GeneratorWorker` at a time, an LRU cache of what came back,
results of an older analysis dropped on return, a one-line reason on failure, and a clean
shutdown. A subclass says *what* to compute (:meth:`request_current`) and what to do with
the value (:meth:`_on_returned`, :meth:`_on_errored`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Generator, Hashable
from typing import Any

from PySide6.QtCore import QObject, QTimer, Slot

from ctscreen.errors import Cancelled, CtscreenError
from ctscreen.viewer.worker import GeneratorWorker


class OnDemandSlices(QObject):
    """Base of the on-demand per-slice computations (see the module docstring).

    Parameters
    ----------
    compute : generator function
        ``compute(job, cancel)``, run by the worker; its return value reaches :meth:`_on_returned`.
    debounce_ms : int
        Wait this long after the last slice change before starting.
    max_items : int
        Values kept in the cache; the oldest go first.
    """

    def __init__(self, compute: Callable[..., Generator[Any, None, Any]], debounce_ms: int, max_items: int,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.compute = compute
        self.result: Any = None
        self.max_items = int(max_items)
        self._maps: OrderedDict[Hashable, Any] = OrderedDict()
        self._worker: GeneratorWorker | None = None
        self._job: Any = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(int(debounce_ms))
        self._timer.timeout.connect(self.request_current)

    # -- for subclasses ------------------------------------------------------------------------------
    @Slot()
    def request_current(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _on_returned(self, value: Any) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _on_errored(self, exc: BaseException) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _idle(self) -> None:
        """Called when a job has finished, before the next one is considered."""

    # -- shared --------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _start(self, job: Any) -> None:
        """Run ``compute(job)`` in a background worker (the caller checked that none is running)."""
        worker = GeneratorWorker(self.compute, job, background=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self._worker, self._job = worker, job
        worker.start()

    def _forget(self) -> None:
        """A new result: cancel what runs (its value would be dropped anyway), stop the timer, empty the cache."""
        if self._worker is not None:
            self._worker.cancel()
        self._timer.stop()
        self._maps.clear()

    def _remember(self, key: Hashable, value: Any) -> None:
        self._maps[key] = value
        while len(self._maps) > self.max_items:
            self._maps.popitem(last=False)

    def _ignored(self, exc: BaseException | None = None, job: Any = None) -> bool:
        """True for a cancellation, or for a job of a result no longer shown."""
        job = self._job if job is None else job
        return isinstance(exc, Cancelled) or job is None or job.result is not self.result

    @staticmethod
    def reason(exc: BaseException) -> str:
        """One line: the message of a ctscreen error, else the exception's type and message."""
        text = str(exc) if isinstance(exc, CtscreenError) else f"{type(exc).__name__}: {exc}"
        return " ".join(text.split())

    @Slot()
    def _on_finished(self) -> None:
        worker, self._worker, self._job = self._worker, None, None
        if worker is not None:
            worker.deleteLater()
        self._idle()
        if not self._timer.isActive():
            self.request_current()  # the user may have moved on while this one ran

    def shutdown(self, timeout_s: float = 10.0) -> None:
        self._timer.stop()
        worker = self._worker
        if worker is not None and worker.is_running:
            worker.cancel()
            worker.wait(timeout_s)
            worker.blockSignals(True)
