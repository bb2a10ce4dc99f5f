"""Run a plain generator function off the GUI thread (after superqt's ``GeneratorWorker``).

The core writes long work as a generator that yields progress objects, returns
its result and accepts ``cancel=threading.Event``. This module is the only Qt
wrapper around that contract: every ``yield`` becomes a ``yielded`` signal,
the generator's return value a ``returned`` signal, an exception an
``errored`` signal, and ``finished`` always comes last.

The generator runs in a ``QThread`` inside a private runner object; the
public :class:`GeneratorWorker` stays in the thread that created it (the GUI
thread) and re-emits the runner's signals there. So any slot, lambda included,
runs on the GUI thread, and the cancel check in :meth:`_on_returned` happens
on the GUI thread too: once :meth:`cancel` has been called, ``returned`` is
never emitted, and a half-finished result cannot reach the window.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from ctscreen.errors import Cancelled


def _lower_this_thread_priority(nice: int) -> None:
    """Give the calling thread (and the threads it starts, e.g. torch's pool) a higher nice value.

    Linux schedules threads individually and ignores ``QThread.setPriority``; a
    nice worker leaves the GUI thread a core when the machine is busy.
    """
    setpriority = getattr(os, "setpriority", None)
    if setpriority is None:
        return
    try:
        setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError:
        pass


class _Runner(QObject):
    """Lives in the worker thread and steps the generator."""

    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)
    done = Signal()

    def __init__(self, make_generator: Callable[[], Generator[Any, None, Any]], cancel: threading.Event,
                 nice: int = 0) -> None:
        super().__init__()
        self._make_generator = make_generator
        self._cancel = cancel
        self._nice = nice

    @Slot()
    def run(self) -> None:
        if self._nice:
            _lower_this_thread_priority(self._nice)
        try:
            gen = self._make_generator()
            while True:
                try:
                    item = next(gen)
                except StopIteration as stop:
                    self.returned.emit(stop.value)
                    break
                if self._cancel.is_set():
                    gen.close()
                    self.errored.emit(Cancelled("cancelled by the user"))
                    break
                self.yielded.emit(item)
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the GUI
            self.errored.emit(exc)
        finally:
            self.done.emit()


#: Workers whose thread is running. A QThread destroyed while it runs aborts the process,
#: so a worker stays referenced here until its thread has ended, whoever else drops it.
_RUNNING: set["GeneratorWorker"] = set()


def running_workers() -> list["GeneratorWorker"]:
    return list(_RUNNING)


@atexit.register
def _join_running_workers(timeout_s: float = 60.0) -> None:
    """At interpreter exit, let running generators stop before their QThreads are destroyed."""
    for worker in list(_RUNNING):
        worker.cancel_event.set()
    for worker in list(_RUNNING):
        if worker._thread is not None:
            worker._thread.quit()
            worker._thread.wait(int(timeout_s * 1000))


class GeneratorWorker(QObject):
    """Drive ``func(*args, cancel=event, **kwargs)`` in its own ``QThread``.

    Parameters
    ----------
    func : callable
        A generator function. It receives the keyword ``cancel`` (a
        :class:`threading.Event`) unless ``cancel_kwarg`` is ``None``.
    *args, **kwargs
        Passed to ``func``.
    cancel_kwarg : str or None
        Name of the keyword that receives the cancel event.
    background : bool
        Run at a lower scheduling priority (long computations), so the GUI
        thread stays responsive on a busy machine.

    Signals
    -------
    yielded(object), returned(object), errored(object), finished()
        Emitted on the GUI thread, in the generator's order; ``finished`` last.
        After :meth:`cancel`, the outcome is ``errored(Cancelled)``.
    """

    yielded = Signal(object)
    returned = Signal(object)
    errored = Signal(object)
    finished = Signal()

    def __init__(self, func: Callable[..., Generator[Any, None, Any]], *args: Any,
                 cancel_kwarg: str | None = "cancel", background: bool = False, **kwargs: Any) -> None:
        super().__init__()
        self.cancel_event = threading.Event()
        if cancel_kwarg:
            kwargs[cancel_kwarg] = self.cancel_event
        self.name = getattr(func, "__name__", "generator")
        self._background = background
        self._runner = _Runner(lambda: func(*args, **kwargs), self.cancel_event, nice=10 if background else 0)
        self._thread: QThread | None = None
        self._outcome_sent = False
        self._finished = False

    # -- control ------------------------------------------------------------------------
    def start(self) -> "GeneratorWorker":
        """Start the generator in a new thread; returns at once (and returns self)."""
        if self._thread is not None:
            raise RuntimeError("a GeneratorWorker can be started only once")
        thread = QThread()
        thread.setObjectName(f"ctscreen-{self.name}")
        self._runner.moveToThread(thread)
        thread.started.connect(self._runner.run)
        self._runner.yielded.connect(self._on_yielded)
        self._runner.returned.connect(self._on_returned)
        self._runner.errored.connect(self._on_errored)
        self._runner.done.connect(self._on_done)
        self._thread = thread
        _RUNNING.add(self)
        thread.start(QThread.Priority.LowPriority if self._background else QThread.Priority.InheritPriority)
        return self

    def cancel(self) -> None:
        """Ask the generator to stop at its next step; returns at once."""
        self.cancel_event.set()

    @property
    def is_cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and not self._finished

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block until the thread has ended (shutdown); queued signals are then dropped."""
        if self._thread is None:
            return True
        self._thread.quit()  # takes effect once the generator's run() returns
        return self._thread.wait(int(timeout_s * 1000))

    # -- relays (GUI thread) --------------------------------------------------------------
    @Slot(object)
    def _on_yielded(self, item: Any) -> None:
        if not self.cancel_event.is_set():
            self.yielded.emit(item)

    @Slot(object)
    def _on_returned(self, value: Any) -> None:
        self._outcome_sent = True
        if self.cancel_event.is_set():
            self.errored.emit(Cancelled("cancelled by the user"))
        else:
            self.returned.emit(value)

    @Slot(object)
    def _on_errored(self, exc: BaseException) -> None:
        self._outcome_sent = True
        self.errored.emit(exc)

    @Slot()
    def _on_done(self) -> None:
        if self._thread is not None:
            # run() has returned; stop the thread's event loop and join it so no
            # QThread is destroyed while running.
            self._thread.quit()
            self._thread.wait(5000)
        self._finished = True
        try:
            self.finished.emit()
        finally:
            _RUNNING.discard(self)
