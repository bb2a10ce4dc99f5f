"""DIMSE client: C-ECHO, C-FIND, C-GET / C-MOVE and C-STORE (``pynetdicom``).

Research use, not for diagnosis.

Every association has the server's timeout for connecting, for the association
handshake and for each DIMSE answer, so a PACS that is down, silent or refuses our AE
title ends in a one-line :class:`PacsError` instead of a hang. A TCP connection is tried
first, so "nothing listens there" and "the PACS refused our AE title" get different
messages.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any, Generator, Sequence

from pydicom.dataset import Dataset
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit,
                         JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, RLELossless, JPEGLossless)

from ctscreen.errors import Cancelled
from ctscreen.io.pacs.cache import SeriesCache, series_folder
from ctscreen.io.pacs.common import (SERIES_FIELDS, STUDY_FIELDS, CancelCheck, PacsError, RetrieveProgress,
                                     RetrieveResult, SeriesRecord, StoreResult, StudyQuery, StudyRecord)
from ctscreen.io.pacs.config import ServerConfig

#: Transfer syntaxes accepted for retrieved images: all that pydicom + pylibjpeg decode,
#: so the PACS sends the files as stored (no lossy transcoding on the way).
RETRIEVE_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian, JPEGLossless, JPEGLosslessSV1, JPEGBaseline8Bit, JPEGExtended12Bit,
                     JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]
#: Storage SOP classes ctscreen accepts in a C-GET/C-MOVE (keyword names in pynetdicom.sop_class).
RETRIEVE_SOP_CLASSES = [
    "CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage",
    "MRImageStorage", "EnhancedMRImageStorage", "PositronEmissionTomographyImageStorage",
    "ComputedRadiographyImageStorage", "DigitalXRayImageStorageForPresentation",
    "SecondaryCaptureImageStorage", "MultiFrameTrueColorSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage", "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "SegmentationStorage", "BasicTextSRStorage", "EnhancedSRStorage", "ComprehensiveSRStorage",
    "EncapsulatedPDFStorage", "RTStructureSetStorage",
]

#: Image classes that are often stored compressed: one presentation context per transfer syntax
#: is proposed for them, so the PACS can send each file in its stored syntax (an acceptor
#: takes one syntax per context). The others get one context with the uncompressed syntaxes.
_PER_SYNTAX_CLASSES = {"CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage",
                       "MRImageStorage", "PositronEmissionTomographyImageStorage", "ComputedRadiographyImageStorage",
                       "DigitalXRayImageStorageForPresentation"}

_STATUS_PENDING = (0xFF00, 0xFF01)

# pynetdicom logs every failed association on its own logger at ERROR level; our message says it once.
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _closing(assoc: Any):
    """Release the association after normal work; abort it (no waiting on the peer) on an error,
    a cancel, Ctrl-C or a generator closed half-way."""
    try:
        yield assoc
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()


def _sop_class(keyword: str) -> Any:
    from pynetdicom import sop_class

    return getattr(sop_class, keyword)


class DimseClient:
    """Query, retrieve and store on one PACS by DIMSE.

    Parameters
    ----------
    server : ServerConfig
        With ``protocol == "dimse"``: host, port, the PACS's AE title (``called_ae``) and ours
        (``calling_ae``); ``retrieve`` chooses C-GET or C-MOVE.
    """

    def __init__(self, server: ServerConfig) -> None:
        self.server = server.validate()

    def close(self) -> None:
        """Nothing held between calls (each call opens and releases its own association)."""

    def __enter__(self) -> "DimseClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- associations -----------------------------------------------------------------------------
    def _where(self) -> str:
        return self.server.describe()

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.server.calling_ae)
        t = float(self.server.timeout_s)
        ae.acse_timeout = t
        ae.dimse_timeout = t
        ae.network_timeout = t
        ae.connection_timeout = t
        return ae

    def _check_reachable(self, action: str) -> None:
        try:
            with socket.create_connection((self.server.host, int(self.server.port)), timeout=self.server.timeout_s):
                pass
        except socket.timeout as exc:
            raise PacsError(f"PACS {self._where()} did not answer within {self.server.timeout_s:g} s while {action} "
                            "\u2014 check that the server is running and reachable (host, port, firewall)") from exc
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise PacsError(f"cannot connect to PACS {self._where()} while {action} ({reason}) \u2014 "
                            "check that the server is running and the host and port are right") from exc

    def _associate(self, ae: Any, action: str, **kw: Any) -> Any:
        self._check_reachable(action)
        t0 = time.monotonic()
        assoc = ae.associate(self.server.host, int(self.server.port), ae_title=self.server.called_ae, **kw)
        if assoc.is_established:
            return assoc
        if not assoc.is_rejected and time.monotonic() - t0 >= 0.9 * float(self.server.timeout_s):
            raise PacsError(f"PACS {self._where()} did not answer the association request within "
                            f"{self.server.timeout_s:g} s while {action} — check that host:port is the PACS's "
                            "DICOM port and the PACS is running, or raise the timeout")
        if assoc.is_rejected:
            raise PacsError(f"PACS {self._where()} rejected the association while {action} \u2014 check that the "
                            f"PACS AE title is {self.server.called_ae!r} and that it knows ctscreen's AE title "
                            f"{self.server.calling_ae!r}")
        if assoc.is_aborted:
            raise PacsError(f"PACS {self._where()} aborted the association while {action} \u2014 it may not "
                            "accept this request or ctscreen's AE title; see the PACS log")
        raise PacsError(f"PACS {self._where()} did not complete the association within {self.server.timeout_s:g} s "
                        f"while {action} \u2014 check that host:port is a DICOM port")

    @staticmethod
    def _status(status: Dataset) -> int | None:
        value = getattr(status, "Status", None)
        return int(value) if value is not None else None

    def _fail(self, action: str, status: Dataset) -> PacsError:
        code = self._status(status)
        if code is None:
            return PacsError(f"PACS {self._where()} stopped answering within {self.server.timeout_s:g} s while "
                             f"{action} \u2014 try again, or raise the timeout in the PACS settings")
        comment = str(getattr(status, "ErrorComment", "") or "").strip()
        hint = {0xA700: "the PACS is out of resources", 0xA900: "the request did not match the PACS's SOP class",
                0xC000: "the PACS could not process the request", 0x0122: "the PACS does not support this request",
                0xA801: "the PACS does not know ctscreen's AE title as a C-MOVE destination"}.get(code, "")
        detail = "; ".join(x for x in (hint, comment) if x)
        return PacsError(f"PACS {self._where()} answered status 0x{code:04X} while {action}"
                         f"{' (' + detail + ')' if detail else ''} \u2014 check the request and the PACS's permissions "
                         f"for AE title {self.server.calling_ae!r}")

    # -- echo / find -----------------------------------------------------------------------------
    def echo(self) -> None:
        """C-ECHO."""
        from pynetdicom.sop_class import Verification

        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = self._associate(ae, "checking the connection")
        try:
            status = assoc.send_c_echo()
            if self._status(status) != 0x0000:
                raise self._fail("checking the connection (C-ECHO)", status)
        finally:
            assoc.release()

    def _find(self, identifier: Dataset, action: str) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FindModel

        ae = self._ae()
        ae.add_requested_context(FindModel)
        assoc = self._associate(ae, action)
        out = []
        try:
            for status, answer in assoc.send_c_find(identifier, FindModel):
                code = self._status(status)
                if code in _STATUS_PENDING:
                    if answer is not None:
                        out.append(answer)
                elif code == 0x0000:
                    break
                else:
                    raise self._fail(action, status)
        finally:
            if assoc.is_established:
                assoc.release()
        return out

    def find_studies(self, query: StudyQuery) -> list[StudyRecord]:
        """C-FIND at STUDY level."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        for kw in STUDY_FIELDS:
            setattr(ds, kw, "")
        for kw, value in query.filters().items():
            setattr(ds, kw, value)
        records = [StudyRecord.from_dataset(a) for a in self._find(ds, "searching studies")]
        return records[: query.limit] if query.limit else records

    def find_series(self, study_uid: str, modality: str = "") -> list[SeriesRecord]:
        """C-FIND at SERIES level in one study."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        for kw in SERIES_FIELDS:
            setattr(ds, kw, "")
        ds.StudyInstanceUID = study_uid
        if modality:
            ds.Modality = modality
        out = [SeriesRecord.from_dataset(a, study_uid) for a in self._find(ds, "listing series")]
        return sorted(out, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_instance_uid))

    def find_instances(self, study_uid: str, series_uid: str) -> list[str]:
        """C-FIND at IMAGE level: the SOP Instance UIDs of one series."""
        ds = Dataset()
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ""
        return [str(a.SOPInstanceUID) for a in self._find(ds, "listing instances") if "SOPInstanceUID" in a]

    # -- retrieve --------------------------------------------------------------------------------
    def _storage_handler(self, cache: SeriesCache, errors: list[str], counter: list[int],
                         cancel: CancelCheck) -> Any:
        lock = threading.Lock()

        def handle(event: Any) -> int:
            if cancel():
                return 0xA700  # refuse further sub-operations; the retrieval is being stopped
            try:
                data = event.encoded_dataset(include_meta=True)
                with lock:
                    status = cache.put(data)
                    counter[0] += 1
                    if status == "same":
                        counter[1] += 1
                return 0x0000
            except Exception as exc:  # noqa: BLE001 - reported after the C-GET/C-MOVE
                errors.append(str(exc))
                return 0xA700
        return handle

    def retrieve_series(self, study_uid: str, series_uid: str, cache_dir: str,
                        cancel: CancelCheck | None = None) -> Generator[RetrieveProgress, None, RetrieveResult]:
        """C-GET (or C-MOVE, per ``server.retrieve``) of one series into the cache.

        Instances already complete in the cache are not asked for again (one request per
        missing instance); with none cached the whole series is one request.

        Raises
        ------
        Cancelled
            ``cancel()`` turned true (the association is aborted; complete files stay).
        PacsError
            The server failed or sent nothing.
        """
        cancel = cancel or (lambda: False)
        cache = SeriesCache(series_folder(cache_dir, study_uid, series_uid))
        uids = self.find_instances(study_uid, series_uid)
        if not uids:
            raise PacsError(f"PACS {self._where()} lists no instances in series {series_uid} \u2014 check the series UID")
        have = cache.complete_uids()
        missing = [u for u in uids if u not in have]
        total, base = len(uids), len(uids) - len(missing)
        yield RetrieveProgress(base, total, 0, base, f"{base} of {total} already cached" if base else
                               f"retrieving {total} instances")
        counter = [0, 0]  # received, identical to a cached file
        if missing:
            requests = []
            if len(missing) == total:
                ds = Dataset()
                ds.QueryRetrieveLevel = "SERIES"
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                requests.append(ds)
            else:
                for uid in missing:
                    ds = Dataset()
                    ds.QueryRetrieveLevel = "IMAGE"
                    ds.StudyInstanceUID = study_uid
                    ds.SeriesInstanceUID = series_uid
                    ds.SOPInstanceUID = uid
                    requests.append(ds)
            errors: list[str] = []
            handler = self._storage_handler(cache, errors, counter, cancel)
            method = self._get if self.server.retrieve == "get" else self._move
            try:
                for _ in method(requests, handler, cancel, series_uid):
                    yield RetrieveProgress(min(total, base + counter[0]), total, len(cache.written),
                                           base + counter[1], f"{base + counter[0]} of {total} instances")
            finally:
                cache.finish()
            if errors:
                raise PacsError(f"could not cache instances from PACS {self._where()}: {errors[0]}")
            received = counter[0]
            if received < len(missing):
                raise PacsError(f"PACS {self._where()} sent {received} of the {len(missing)} missing instances of "
                                f"series {series_uid} \u2014 retrieve again to resume; if it persists see the PACS log")
            yield RetrieveProgress(total, total, len(cache.written), base + counter[1], "done")
        return RetrieveResult(str(cache.folder), cache.files(), len(cache.written), base + counter[1],
                              cache.warnings)

    def _drive(self, assoc: Any, responses: Any, action: str, cancel: CancelCheck, series_uid: str) -> Generator:
        """Follow C-GET/C-MOVE responses, yielding after each; abort on cancel."""
        for status, _ in responses:
            if cancel():
                assoc.abort()
                raise Cancelled(f"retrieval of series {series_uid} cancelled (the cached instances are kept; "
                                "retrieve again to resume)")
            code = self._status(status)
            if code in _STATUS_PENDING:
                yield None
                continue
            if code == 0x0000:
                return
            if code is not None and code in (0xB000,):  # sub-operations failed: counted by the caller
                return
            raise self._fail(action, status)

    def _get(self, requests: list[Dataset], handler: Any, cancel: CancelCheck, series_uid: str) -> Generator:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

        ae = self._ae()
        ae.add_requested_context(GetModel)
        roles = []
        for kw in RETRIEVE_SOP_CLASSES:
            uid = _sop_class(kw)
            if kw in _PER_SYNTAX_CLASSES:
                for ts in RETRIEVE_SYNTAXES:
                    ae.add_requested_context(uid, [ts])
            else:
                ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            roles.append(build_role(uid, scp_role=True))
        assoc = self._associate(ae, "retrieving (C-GET)", ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, handler)])
        with _closing(assoc):
            for ds in requests:
                yield from self._drive(assoc, assoc.send_c_get(ds, GetModel), "retrieving (C-GET)", cancel, series_uid)
                yield None

    def _move(self, requests: list[Dataset], handler: Any, cancel: CancelCheck, series_uid: str) -> Generator:
        from pynetdicom import evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel

        scp_ae = self._ae()
        for kw in RETRIEVE_SOP_CLASSES:
            scp_ae.add_supported_context(_sop_class(kw), RETRIEVE_SYNTAXES)
        try:
            server = scp_ae.start_server(("", int(self.server.move_port)), block=False,
                                         evt_handlers=[(evt.EVT_C_STORE, handler)])
        except OSError as exc:
            raise PacsError(f"cannot listen on port {self.server.move_port} for C-MOVE ({exc.strerror or exc}) \u2014 "
                            "choose another move port in the PACS settings, or use C-GET") from exc
        try:
            ae = self._ae()
            ae.add_requested_context(MoveModel)
            assoc = self._associate(ae, "retrieving (C-MOVE)")
            with _closing(assoc):
                for ds in requests:
                    yield from self._drive(assoc, assoc.send_c_move(ds, self.server.calling_ae, MoveModel),
                                           "retrieving (C-MOVE)", cancel, series_uid)
                    yield None
        finally:
            server.shutdown()

    # -- store -----------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset]) -> StoreResult:
        """C-STORE each dataset (one association for all)."""
        result = StoreResult()
        if not datasets:
            return result
        ae = self._ae()
        pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
        for sop_class, ts in pairs:
            syntaxes = [ts] + [t for t in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if t != ts]
            ae.add_requested_context(sop_class, syntaxes)
        assoc = self._associate(ae, "storing results (C-STORE)")
        try:
            for ds in datasets:
                uid = str(ds.SOPInstanceUID)
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:
                    result.failed.append((uid, str(exc)))
                    continue
                code = self._status(status)
                if code == 0x0000:
                    result.stored.append(uid)
                elif code is not None and (code & 0xF000) == 0xB000:
                    result.stored.append(uid)
                    result.warnings.append(f"PACS {self._where()} stored {uid} with warning status 0x{code:04X}")
                else:
                    result.failed.append((uid, str(self._fail("storing results", status))))
        finally:
            if assoc.is_established:
                assoc.release()
        return result
