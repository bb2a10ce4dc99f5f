"""``ctscreen pull``: search a PACS, list studies and series, retrieve series into a local cache.

Examples::

    ctscreen pull --server hospital --patient-id 12345 --list
    ctscreen pull --dicomweb http://pacs:8042/dicom-web --date 20200301-20200331 --modality CT --out cache
    ctscreen pull --dimse ORTHANC@pacs:4242 --accession A123 --series 1.2.3... --out cache

Retrieved series land in ``CACHE/<StudyUID>/<SeriesUID>/``; their folders are printed on
stdout, one a line, so they can be passed to ``ctscreen analyze``. A retrieval that was
interrupted resumes where it stopped. Research use only - not for diagnosis.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TextIO

from ctscreen.io.pacs.common import PacsError, SeriesRecord, StudyQuery, StudyRecord
from ctscreen.io.pacs.config import (SECRET_ENV, ServerConfig, dicomweb_address, find_server, get_secret,
                                     parse_dimse_address)

__all__ = ["add_server_args", "server_from_args", "run_pull", "format_studies"]


def add_server_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The ``--server / --dicomweb / --dimse`` options shared by ``pull``, ``push`` and ``batch``.

    ``required=False`` where the PACS is one source among others (``batch ROOT``).
    """
    g = p.add_argument_group("server (one of)")
    x = g.add_mutually_exclusive_group(required=required)
    x.add_argument("--server", metavar="NAME", help="a server configured in the viewer's PACS settings "
                   "(pacs_servers.json)")
    x.add_argument("--dicomweb", metavar="URL", help="a DICOMweb root, e.g. http://pacs:8042/dicom-web")
    x.add_argument("--dimse", metavar="AE@HOST:PORT", help="a DIMSE peer, e.g. ORTHANC@pacs:4242")
    g.add_argument("--protocol", choices=("dicomweb", "dimse"), help="with --server: which interface to use "
                   "(default: the server's own setting)")
    g.add_argument("--user", metavar="NAME", help="DICOMweb basic-auth user; the password comes from "
                   f"${SECRET_ENV}, the keyring, or a prompt")
    g.add_argument("--token", action="store_true", help=f"DICOMweb bearer token from ${SECRET_ENV} or a prompt")
    g.add_argument("--calling-ae", metavar="AE", help="ctscreen's AE title for DIMSE (default CTSCREEN)")
    g.add_argument("--move", action="store_true", help="DIMSE: retrieve by C-MOVE instead of C-GET")
    g.add_argument("--move-port", type=int, metavar="PORT", help="DIMSE C-MOVE: local port the PACS sends to")
    g.add_argument("--timeout", type=float, metavar="S", help="seconds to wait for the server (default 10)")
    g.add_argument("--insecure", action="store_true", help="DICOMweb over HTTPS: do not check the server's "
                   "certificate (test servers only)")


def _ask_secret(server: ServerConfig, what: str) -> str:
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"{what} for {server.describe()}: ")
    raise PacsError(f"{server.describe()} needs a {what.lower()} \u2014 set {SECRET_ENV} or store it in the "
                    "keyring from the viewer's PACS settings")


def server_from_args(args: argparse.Namespace) -> ServerConfig:
    """The :class:`ServerConfig` the options name, with the secret filled in."""
    if args.server:
        server = find_server(args.server)
        if args.protocol:
            server.protocol = args.protocol
    elif args.dicomweb:
        server = dicomweb_address(args.dicomweb)
    else:
        server = parse_dimse_address(args.dimse)
    if getattr(args, "user", None):
        server.auth, server.username = "basic", args.user
    if getattr(args, "token", False):
        server.auth = "token"
    if args.calling_ae:
        server.calling_ae = args.calling_ae
    if args.move:
        server.retrieve = "move"
    if args.move_port:
        server.move_port = int(args.move_port)
    if args.timeout:
        server.timeout_s = float(args.timeout)
    if getattr(args, "insecure", False):
        server.verify_tls = False
    if server.protocol == "dicomweb" and server.auth != "none" and not server.secret:
        secret = get_secret(server) or _ask_secret(server, "Password" if server.auth == "basic" else "Token")
        server = server.with_secret(secret)
    return server.validate()


def add_parser(sub) -> None:
    """The ``pull`` subcommand's arguments."""
    p = sub.add_parser("pull", help="search a PACS and retrieve series into a local cache",
                       description="Search a PACS (DICOMweb or DIMSE), list studies and series, and retrieve "
                                   "series into a local cache folder. Research use only - not for diagnosis.")
    add_server_args(p)
    q = p.add_argument_group("search")
    q.add_argument("--patient-id", default="", metavar="ID")
    q.add_argument("--name", default="", help="patient name; matches names starting with it (* and ? allowed)")
    q.add_argument("--date", default="", metavar="FROM-TO", help="study date range, YYYYMMDD-YYYYMMDD "
                   "(either end may be left out; one date = that day)")
    q.add_argument("--accession", default="", metavar="NUMBER")
    q.add_argument("--modality", default="", metavar="CT", help="studies with this modality; only series of it "
                   "are retrieved")
    q.add_argument("--study", default="", metavar="UID", help="one Study Instance UID")
    q.add_argument("--limit", type=int, default=0, metavar="N", help="at most N studies")
    p.add_argument("--list", action="store_true", help="list matching studies and their series; retrieve nothing")
    p.add_argument("--series", action="append", default=[], metavar="UID",
                   help="retrieve only this series (repeat for several); default: every series of the matching "
                        "studies (of --modality when given)")
    p.add_argument("--out", metavar="CACHE", help="cache folder for retrieved series")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def format_studies(studies: list[StudyRecord], series: dict[str, list[SeriesRecord]]) -> str:
    """The ``--list`` text: one line per study, its series indented."""
    if not studies:
        return "no matching studies"
    lines = []
    for st in studies:
        date = f"{st.study_date[:4]}-{st.study_date[4:6]}-{st.study_date[6:]}" if len(st.study_date) == 8 else "?"
        lines.append(f"{date}  {st.patient_id or '-':<16} {st.patient_name or '-':<20} "
                     f"acc {st.accession_number or '-':<10} {'/'.join(st.modalities) or '?':<6} "
                     f"{st.description or '(no description)'}")
        lines.append(f"  study {st.study_instance_uid}")
        for se in series.get(st.study_instance_uid, []):
            n = "?" if se.instance_count is None else str(se.instance_count)
            lines.append(f"    #{se.series_number if se.series_number is not None else '?':<4} {se.modality or '?':<4} "
                         f"{n:>5} images  {se.description or '(no description)'}")
            lines.append(f"      series {se.series_instance_uid}")
    return "\n".join(lines)


def _query(args: argparse.Namespace) -> StudyQuery:
    try:
        return StudyQuery.from_text(patient_id=args.patient_id, patient_name=args.name, date_range=args.date,
                                    accession_number=args.accession, modality=args.modality,
                                    study_instance_uid=args.study, limit=args.limit)
    except ValueError as exc:
        raise PacsError(str(exc)) from exc


def run_pull(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of ``ctscreen pull``."""
    from ctscreen.errors import Cancelled
    from ctscreen.io.pacs import connect
    from ctscreen.progress import ProgressBar

    out = out or sys.stdout
    err = err or sys.stderr
    query = _query(args)
    if not args.list and not args.out:
        raise PacsError("give --out CACHE to retrieve, or --list to only list")
    if not args.list and not query.filters() and not args.series:
        raise PacsError("give at least one search criterion (--patient-id, --name, --date, --accession, "
                        "--modality, --study) or --series, so the whole archive is not pulled")
    server = server_from_args(args)
    with connect(server) as pacs:
        studies = pacs.find_studies(query)
        series: dict[str, list[SeriesRecord]] = {}
        wanted = set(args.series)
        for st in studies:
            series[st.study_instance_uid] = pacs.find_series(st.study_instance_uid,
                                                             "" if wanted else query.modality)
        if args.list:
            print(format_studies(studies, series), file=out)
            return 0
        chosen = [se for st in studies for se in series[st.study_instance_uid]
                  if not wanted or se.series_instance_uid in wanted]
        missing = wanted - {se.series_instance_uid for se in chosen}
        if missing:
            raise PacsError(f"series {sorted(missing)[0]} was not found on {server.describe()} among the studies "
                            "matching the search \u2014 check the UID, or widen the search (--study, --patient-id)")
        if not chosen:
            raise PacsError(f"no matching series on {server.describe()} \u2014 widen the search (try --list)")
        os.makedirs(args.out, exist_ok=True)
        bar = ProgressBar(stream=err, enabled=not args.quiet)
        total_new = total_skip = 0
        for i, se in enumerate(chosen, 1):
            label = f"series {i}/{len(chosen)}"
            gen = pacs.retrieve_series(se.study_instance_uid, se.series_instance_uid, args.out)
            try:
                while True:
                    progress = next(gen)
                    bar.update(label, progress.fraction, message=progress.message)
            except StopIteration as stop:
                result = stop.value
            except KeyboardInterrupt:
                gen.close()
                raise Cancelled("retrieval interrupted \u2014 the complete files are kept; run the same command to "
                                "resume") from None
            bar.close()
            total_new += result.written
            total_skip += result.skipped
            for w in result.warnings:
                print(f"warning: {w}", file=err)
            print(result.folder, file=out)
        print(f"retrieved {len(chosen)} series from {server.describe()}: {total_new} new files, {total_skip} already "
              f"cached. Research use only \u2014 not for diagnosis.", file=err)
    return 0


def run(args: argparse.Namespace) -> int:
    return run_pull(args)
