"""DICOM reading, volumes, windowing, lung mask, measurements and export.

No Qt and no torch may be imported here.
"""

from ctscreen.imaging.volume import Volume

__all__ = ["Volume"]
