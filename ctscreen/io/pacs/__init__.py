"""PACS: query, retrieve and send by DICOMweb (QIDO-RS/WADO-RS/STOW-RS) or DIMSE (C-FIND/C-GET/C-MOVE/C-STORE).

Research use, not for diagnosis.

No Qt, no torch. The command line (``ctscreen pull``, ``ctscreen push``) and the viewer
(File -> Open from PACS...) call the same functions:

- :mod:`~ctscreen.io.pacs.config` - server settings (``pacs_servers.json``; secrets in the keyring),
- :mod:`~ctscreen.io.pacs.common` - :class:`StudyQuery`, records, progress, :class:`PacsError`,
- :mod:`~ctscreen.io.pacs.dicomweb` / :mod:`~ctscreen.io.pacs.dimse` - the two clients,
- :mod:`~ctscreen.io.pacs.cache` - the local cache retrieved series go to,
- :mod:`~ctscreen.io.pacs.send` - the SEG and Secondary Capture key images to send back.

Example
-------
>>> from ctscreen.io.pacs import connect, dicomweb_address, StudyQuery, run_retrieve
>>> with connect(dicomweb_address("http://localhost:8042/dicom-web")) as pacs:   # doctest: +SKIP
...     studies = pacs.find_studies(StudyQuery(patient_id="P001"))
...     series = pacs.find_series(studies[0].study_instance_uid)
...     result = run_retrieve(pacs.retrieve_series(series[0].study_instance_uid,
...                                                series[0].series_instance_uid, "cache"))
"""

from __future__ import annotations

from typing import Any, Generator

from ctscreen.io.pacs.common import (DEFAULT_TIMEOUT_S, PacsError, RetrieveProgress, RetrieveResult, SeriesRecord,
                                     StoreResult, StudyQuery, StudyRecord, parse_date_range)
from ctscreen.io.pacs.config import (ServerConfig, dicomweb_address, find_server, get_secret, keyring_available,
                                     load_servers, parse_dimse_address, save_servers, set_secret)

__all__ = [
    "DEFAULT_TIMEOUT_S", "PacsError", "RetrieveProgress", "RetrieveResult", "SeriesRecord", "StoreResult",
    "StudyQuery", "StudyRecord", "parse_date_range", "ServerConfig", "dicomweb_address", "find_server",
    "get_secret", "keyring_available", "load_servers", "parse_dimse_address", "save_servers", "set_secret",
    "connect", "run_retrieve",
]


def connect(server: ServerConfig) -> Any:
    """A client for ``server``: :class:`~ctscreen.io.pacs.dicomweb.DicomWebClient` or
    :class:`~ctscreen.io.pacs.dimse.DimseClient` (no network traffic until the first call).

    Both have ``echo()``, ``find_studies(query)``, ``find_series(study_uid)``,
    ``find_instances(study_uid, series_uid)``, ``retrieve_series(study_uid, series_uid, cache_dir,
    cancel)`` (a generator of :class:`RetrieveProgress` returning :class:`RetrieveResult`),
    ``store(datasets)`` and ``close()``; they are context managers.
    """
    server.validate()
    if server.protocol == "dicomweb":
        from ctscreen.io.pacs.dicomweb import DicomWebClient

        return DicomWebClient(server)
    from ctscreen.io.pacs.dimse import DimseClient

    return DimseClient(server)


def run_retrieve(gen: Generator[RetrieveProgress, None, RetrieveResult],
                 on_progress: Any = None) -> RetrieveResult:
    """Drive a retrieval generator to its end; returns its :class:`RetrieveResult`."""
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(progress)


