"""A PACS query as the batch's source: retrieve the matching studies' CT series, then discover them.

:func:`pull_studies` searches the server (:mod:`ctscreen.io.pacs`, DICOMweb or
DIMSE), retrieves every CT series of every matching study into the local cache
(``CACHE/<StudyUID>/<SeriesUID>/``; resumable: complete files are not fetched
again) and returns a :class:`~ctscreen.batch.discover.Discovery` of exactly
those studies, so the batch treats them like folders under ROOT. A study that
cannot be retrieved (the server fails, or it has no CT series) becomes a study
with ``problem`` set and is recorded as failed; the others go on.

Retrieval runs in this process before the analysis starts (the network, not
the CPU, is its limit). Research use only, not for diagnosis.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ctscreen.batch.discover import Discovery, Study, discover_studies, short_hash, study_id_for


def pull_studies(server: Any, query: Any, cache_dir: str | Path, *, include_patient: bool = False,
                 modality: str = "CT", cancel: Any = None) -> Generator[str, None, Discovery]:
    """Retrieve the studies ``query`` finds on ``server`` into ``cache_dir``; yields one line per series.

    Parameters
    ----------
    server : ctscreen.io.pacs.ServerConfig
    query : ctscreen.io.pacs.StudyQuery
    cache_dir : path-like
    include_patient : bool
        As for :func:`~ctscreen.batch.discover.discover_studies`.
    modality : str
        Only series of this modality are retrieved (the batch analyses CT).
    cancel : callable, optional
        Returns True to stop the retrieval (complete files are kept).

    Returns
    -------
    Discovery
        The retrieved studies (and the ones that could not be, with their reason).

    Raises
    ------
    PacsError
        The server cannot be searched at all.
    """
    from ctscreen.errors import Cancelled, CtscreenError
    from ctscreen.io.pacs import connect, run_retrieve
    from ctscreen.io.pacs.cache import safe_uid

    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    wanted: list[str] = []
    with connect(server) as pacs:
        studies = pacs.find_studies(query)
        for i, st in enumerate(studies, 1):
            uid = st.study_instance_uid
            wanted.append(uid)
            try:
                series = [se for se in pacs.find_series(uid, modality) if not modality or se.modality == modality]
                if not series:
                    failed[uid] = f"no {modality} series in this study on the PACS"
                    continue
                for se in series:
                    res = run_retrieve(pacs.retrieve_series(uid, se.series_instance_uid, str(cache), cancel))
                    yield (f"study {i}/{len(studies)}: series {se.series_number if se.series_number is not None else '?'}"
                           f" ({se.description or 'no description'}): {res.written} new, {res.skipped} cached")
            except Cancelled:
                raise
            except CtscreenError as exc:
                failed[uid] = f"cannot be retrieved: {' '.join(str(exc).split())}"
    folders: dict[str, str] = {}  # CACHE/<StudyUID>/<SeriesUID>/
    for uid in wanted:
        try:
            folders[safe_uid(uid, "Study Instance UID")] = uid
        except CtscreenError as exc:
            failed.setdefault(uid, " ".join(str(exc).split()))
    found = discover_studies(cache, include_patient=include_patient)
    keep: list[Study] = []
    for s in found.studies:
        top = Path(s.folder).resolve().relative_to(cache.resolve()).parts[:1] if s.folder else ()
        if s.study_uid in folders.values() or (top and top[0] in folders):
            keep.append(s)
    seen = {s.study_uid for s in keep}
    for uid in wanted:
        if uid not in seen and uid not in failed:
            failed[uid] = "retrieved, but no readable image came back"
    for uid, reason in failed.items():
        if uid in seen:
            continue
        keep.append(Study(study_id=study_id_for(uid), study_uid=uid, folder="", exclusive=True, series_uid="",
                          files=(), input_key=short_hash(f"{uid}\n{reason}", 64), problem=reason))
    return replace(found, studies=sorted(keep, key=lambda s: s.study_id))
