"""Typed errors of the core.

The core raises these; the edges (CLI, viewer) catch them in one place and show
the message. Every message says what happened, to which file, and what the user
can do. Data-quality problems that do not stop the work (a skipped corrupt file,
uneven slice spacing) are *warnings* attached to results instead.
"""

from __future__ import annotations


class CtscreenError(Exception):
    """Base class of all errors this package raises on purpose."""


class NotADicomSeries(CtscreenError):
    """A path holds no readable DICOM image series."""


class UnsupportedTransferSyntax(CtscreenError):
    """Pixel data is encoded in a transfer syntax no installed plugin decodes."""


class SeriesGeometryError(CtscreenError):
    """Slices cannot be arranged into a volume (mixed sizes, no geometry at all)."""


class NotAnalysable(CtscreenError):
    """The series can be viewed but not analysed (e.g. not CT, not axial)."""


class ModelLoadError(CtscreenError):
    """A weights file is missing, corrupt or does not match its architecture."""


class ExportError(CtscreenError):
    """An export could not be written (target exists, disk, permissions)."""


class Cancelled(CtscreenError):
    """Long work was cancelled by the user."""
