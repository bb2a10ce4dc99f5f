"""The Qt viewer (PySide6 + pyqtgraph); the only part of ctscreen that imports Qt."""

from ctscreen.viewer._qt_compat import protect_singletons

# Before any other Qt call: PySide6 6.12 on Python 3.11 drops references to None,
# True and False on many Qt calls, which aborts the interpreter within minutes
# of use (see _qt_compat).
protect_singletons()
