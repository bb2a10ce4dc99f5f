"""DICOMweb client: QIDO-RS search, WADO-RS retrieval, STOW-RS storage (``dicomweb-client``).

Research use, not for diagnosis.

Every request has the server's timeout and no automatic retries, so a server that is
down or answers an error gives a one-line :class:`PacsError` within the timeout instead
of hanging.
"""

from __future__ import annotations

from typing import Any, Generator, Iterable, Sequence

from pydicom.dataset import Dataset

from ctscreen.io.pacs.cache import SeriesCache, series_folder
from ctscreen.io.pacs.common import (SERIES_FIELDS, STUDY_FIELDS, CancelCheck, PacsError, RetrieveProgress,
                                     RetrieveResult, SeriesRecord, StoreResult, StudyQuery, StudyRecord)
from ctscreen.io.pacs.config import ServerConfig
from ctscreen.errors import Cancelled

#: Ask for the instances as stored (no transcoding by the server).
_AS_STORED = (("application/dicom", "*"),)


def _http_message(server: ServerConfig, exc: BaseException, action: str) -> str:
    """The one-line explanation of a failed request."""
    import requests

    where = server.describe()
    if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(exc, requests.exceptions.ReadTimeout):
        return (f"PACS {where} did not answer within {server.timeout_s:g} s while {action} \u2014 "
                "check that the server is running and reachable, or raise its timeout in the PACS settings")
    if isinstance(exc, requests.exceptions.SSLError):
        return (f"PACS {where}: the HTTPS certificate was refused while {action} \u2014 "
                "check the URL, or turn off certificate checks for a test server")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return (f"cannot connect to PACS {where} while {action} (connection refused or host unknown) \u2014 "
                "check that the server is running and the URL and port are right")
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        reason = exc.response.reason or ""
        if code in (401, 403):
            return (f"PACS {where} refused access (HTTP {code} {reason}) while {action} \u2014 "
                    "check the user name and password or token in the PACS settings")
        if code == 404:
            return (f"PACS {where} has no such DICOMweb resource (HTTP 404) while {action} \u2014 "
                    "check the URL path (for Orthanc it ends in /dicom-web)")
        return (f"PACS {where} answered HTTP {code} {reason} while {action} \u2014 "
                "the server's log says why; try again or ask its administrator")
    return f"PACS {where} failed while {action}: {exc} \u2014 check the server settings"


def _session_class() -> type:
    """A ``requests.Session`` that sends the DICOM wildcards ``*`` and ``?`` of QIDO-RS matching keys
    unescaped: RFC 3986 allows them in a query, and some servers (Orthanc 1.10's DICOMweb plugin)
    do not decode ``%2A`` and so would match a name search literally."""
    import requests

    class _Session(requests.Session):
        def send(self, request, **kwargs):  # type: ignore[override]
            url = request.url or ""
            if "?" in url:
                head, _, query = url.partition("?")
                request.url = head + "?" + query.replace("%2A", "*").replace("%3F", "?")
            return super().send(request, **kwargs)

    return _Session


class DicomWebClient:
    """Query, retrieve and store on one DICOMweb server.

    Parameters
    ----------
    server : ServerConfig
        With ``protocol == "dicomweb"``; ``server.secret`` holds the password or token.
    """

    def __init__(self, server: ServerConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.server = server.validate()
        session = _session_class()()
        session.verify = bool(server.verify_tls)
        headers = {}
        if server.auth == "basic":
            session.auth = (server.username, server.secret)
        elif server.auth == "token":
            headers["Authorization"] = f"Bearer {server.secret}"
        timeout = (float(server.timeout_s), float(server.timeout_s))
        try:
            self._client = DICOMwebClient(url=server.url.rstrip("/"), session=session, headers=headers or None,
                                          timeout=timeout)
        except ValueError as exc:
            raise PacsError(f"PACS {server.describe()}: {exc} \u2014 fix the DICOMweb URL") from exc
        self._client.set_http_retry_params(retry=False)

    def _call(self, action: str, fn, *args, **kwargs):
        import requests

        try:
            return fn(*args, **kwargs)
        except (requests.exceptions.RequestException, ) as exc:
            raise PacsError(_http_message(self.server, exc, action)) from exc
        except ValueError as exc:  # malformed answers (not DICOM JSON / multipart)
            raise PacsError(f"PACS {self.server.describe()} sent an answer that is not DICOMweb while {action}: "
                            f"{exc} \u2014 check the URL points at the DICOMweb root") from exc

    def _datasets(self, answers: Any, action: str) -> list[Dataset]:
        """QIDO-RS answers as datasets; anything that is not DICOM JSON is a :class:`PacsError`."""
        try:
            if not isinstance(answers, list):
                raise TypeError(f"expected a JSON list, got {type(answers).__name__}")
            return [Dataset.from_json(a) for a in answers]
        except Exception as exc:  # noqa: BLE001 - a web page, an Orthanc REST list, ...
            raise PacsError(f"PACS {self.server.describe()} answered something that is not DICOM JSON while "
                            f"{action} — check that the URL is the DICOMweb root (for Orthanc it ends in "
                            "/dicom-web)") from exc

    def close(self) -> None:
        try:
            self._client._session.close()
        except Exception:  # noqa: BLE001
            pass

    def __enter__(self) -> "DicomWebClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- query -----------------------------------------------------------------------------------
    def echo(self) -> None:
        """Check the server answers QIDO-RS (a study search with limit 1)."""
        self._call("checking the connection", self._client.search_for_studies, limit=1)

    def find_studies(self, query: StudyQuery) -> list[StudyRecord]:
        """QIDO-RS study search."""
        answers = self._call("searching studies", self._client.search_for_studies,
                             search_filters=query.filters(), fields=list(STUDY_FIELDS),
                             limit=query.limit or None)
        return [StudyRecord.from_dataset(ds) for ds in self._datasets(answers, "searching studies")]

    def find_series(self, study_uid: str, modality: str = "") -> list[SeriesRecord]:
        """QIDO-RS series of one study (optionally one modality)."""
        filters = {"Modality": modality} if modality else None
        answers = self._call("listing series", self._client.search_for_series, study_instance_uid=study_uid,
                             search_filters=filters, fields=list(SERIES_FIELDS))
        out = [SeriesRecord.from_dataset(ds, study_uid) for ds in self._datasets(answers, "listing series")]
        return sorted(out, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid))

    def find_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """SOP Instance UIDs of one series."""
        answers = self._call("listing instances", self._client.search_for_instances, study_instance_uid=study_uid,
                             series_instance_uid=series_uid, fields=["SOPInstanceUID"], get_remaining=True)
        return [str(ds.SOPInstanceUID) for ds in self._datasets(answers, "listing instances") if "SOPInstanceUID" in ds]

    # -- retrieve --------------------------------------------------------------------------------
    def retrieve_series(self, study_uid: str, series_uid: str, cache_dir: str,
                        cancel: CancelCheck | None = None) -> Generator[RetrieveProgress, None, RetrieveResult]:
        """WADO-RS retrieval of one series into the cache; yields progress, returns what is there.

        Instances already complete in the cache are not downloaded again. With none cached, the
        series comes as one streamed multipart answer; otherwise only the missing ones are asked for.

        Raises
        ------
        Cancelled
            ``cancel()`` turned true; the files written so far stay (each complete).
        PacsError
            The server failed.
        """
        cancel = cancel or (lambda: False)
        cache = SeriesCache(series_folder(cache_dir, study_uid, series_uid))
        uids = self.find_instances(study_uid, series_uid)
        if not uids:
            raise PacsError(f"PACS {self.server.describe()} lists no instances in series {series_uid} \u2014 "
                            "check the series UID")
        have = cache.complete_uids()
        missing = [u for u in uids if u not in have]
        total, done, skipped = len(uids), len(uids) - len(missing), len(uids) - len(missing)
        yield RetrieveProgress(done, total, 0, skipped, f"{skipped} of {total} already cached" if skipped else
                               f"retrieving {total} instances")
        if missing and len(missing) == total:
            source: Iterable[Dataset] = self._call("retrieving the series", self._client.iter_series,
                                                  study_instance_uid=study_uid, series_instance_uid=series_uid,
                                                  media_types=_AS_STORED)
        else:
            source = (self._call("retrieving an instance", self._client.retrieve_instance,
                                 study_instance_uid=study_uid, series_instance_uid=series_uid,
                                 sop_instance_uid=u, media_types=_AS_STORED) for u in missing)
        iterator = iter(source)
        received: set[str] = set()
        try:
            while True:
                if cancel():
                    raise Cancelled(f"retrieval of series {series_uid} cancelled after {done} of {total} "
                                    "instances (the cached ones are kept; retrieve again to resume)")
                try:
                    ds = self._call("retrieving the series", next, iterator)
                except StopIteration:
                    break
                status = cache.put(ds)
                received.add(str(getattr(ds, "SOPInstanceUID", "")))
                done += 1
                if status == "same":
                    skipped += 1
                yield RetrieveProgress(done, total, len(cache.written), skipped,
                                       f"{done} of {total} instances")
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            cache.finish()
        lacking = [u for u in missing if u not in received]
        if lacking:
            raise PacsError(f"PACS {self.server.describe()} sent {len(missing) - len(lacking)} of the {len(missing)} "
                            f"missing instances of series {series_uid} \u2014 retrieve again to resume; if it persists "
                            "see the PACS log")
        return RetrieveResult(str(cache.folder), cache.files(), len(cache.written), skipped, cache.warnings)

    # -- store -----------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset]) -> StoreResult:
        """STOW-RS the datasets (grouped by study); returns what the server accepted."""
        result = StoreResult()
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        for study_uid, group in by_study.items():
            answer = self._call("storing results", self._client.store_instances, datasets=group,
                                study_instance_uid=study_uid)
            failed = {}
            for item in getattr(answer, "FailedSOPSequence", []) or []:
                reason = getattr(item, "FailureReason", "")
                failed[str(item.ReferencedSOPInstanceUID)] = f"failure reason {reason}"
            for ds in group:
                uid = str(ds.SOPInstanceUID)
                if uid in failed:
                    result.failed.append((uid, failed[uid]))
                else:
                    result.stored.append(uid)
        return result
