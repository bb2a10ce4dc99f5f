"""Image computation on volumes: ``Volume``, windowing, lung mask, measurements, analysis results.

No Qt and no torch may be imported here. Reading DICOM and writing exports
live in :mod:`ctscreen.io`.
"""

from ctscreen.imaging.volume import Volume

__all__ = ["Volume"]
