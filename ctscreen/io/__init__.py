"""Files in and out: DICOM scanning and loading, and the export writers (PNG, report, DICOM SEG).

No Qt, no torch (``tests/test_layering.py``). The writers share the file
primitives of :mod:`ctscreen.io.files` (atomic writes, output names), so none
of them imports :mod:`ctscreen.io.export`, which only gathers them.
"""
