"""Work around a reference-count bug of PySide6 6.12 on Python 3.11.

On Python 3.11 PySide6 6.12.0 returns the singletons without taking a
reference to them: ``None`` from every Qt method declared ``void``
(``processEvents``, ``setText``, ``QTimer.stop``, …) and ``True``/``False``
from ``Signal.emit``/``disconnect``. Each such call drops a reference it never
took; the singletons start with a few thousand references, so after a minute of
scrolling the interpreter aborts with "Fatal Python error: none_dealloc:
deallocating None" (or ``bool_dealloc``). From Python 3.12 on these objects
are immortal (PEP 683) and the bug is harmless.

:func:`protect_singletons` detects the leak with a few harmless calls and,
only when it is present, gives each singleton a very large reference count,
which is what Python 3.12 does for them; :func:`top_up` renews the reserve
if it ever runs low. Remove this module once the project
requires Python 3.12 or a PySide6 without the bug.
"""

from __future__ import annotations

import ctypes
import sys

#: References added at a time (about 10^12: at a million leaking calls a second, 12 days).
_RESERVE = 1 << 40
_SINGLETONS = (None, True, False)
_leaks: bool | None = None


def _refcount_cell(obj: object) -> ctypes.c_ssize_t:
    # CPython's PyObject starts with ob_refcnt (Py_ssize_t); id() is the object's address.
    return ctypes.c_ssize_t.from_address(id(obj))


def pyside_leaks_singletons() -> bool:
    """True when Qt calls drop references to ``None``/``True``/``False`` in this interpreter."""
    global _leaks
    if _leaks is None:
        if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
            _leaks = False
        else:
            from PySide6.QtCore import QObject, Signal

            class _Probe(QObject):
                ping = Signal()

            probe = _Probe()
            none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
            for _ in range(64):
                probe.setObjectName("probe")  # void: returns None
                probe.ping.emit()  # returns True
            _leaks = (sys.getrefcount(None) < none_before - 32) or (sys.getrefcount(True) < true_before - 32)
    return _leaks


def top_up() -> None:
    """Keep the singletons' reference counts far from zero (no-op when the bug is absent)."""
    if pyside_leaks_singletons():
        for obj in _SINGLETONS:
            cell = _refcount_cell(obj)
            if cell.value < _RESERVE // 2:
                cell.value += _RESERVE


def protect_singletons() -> bool:
    """Apply the work-around if needed; returns whether it was needed."""
    top_up()
    return bool(_leaks)


_collector = None


def collect_garbage_in_gui_thread(interval_s: float = 1.0) -> None:
    """Run Python's cyclic garbage collector only on the GUI thread, from a timer.

    Automatic collection runs in whichever thread happens to allocate, e.g. a
    worker importing torch; if it then frees a widget caught in a reference
    cycle, Qt aborts ("widgets must be destroyed in the GUI thread"). pyqtgraph
    ships the cure (its ``GarbageCollector``: automatic collection off, the
    generations collected on a GUI-thread timer with the usual thresholds);
    install it once, after the QApplication exists.
    """
    global _collector
    if _collector is None:
        from pyqtgraph.util.garbage_collector import GarbageCollector

        _collector = GarbageCollector(interval=interval_s)
