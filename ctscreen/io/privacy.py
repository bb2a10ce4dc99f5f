"""Keep file paths and names out of exported text unless the user asks for them.

Research use, not for diagnosis.

A folder or file name in a hospital export often carries the patient's name
or ID (``Doe_John_1957/IM000123.dcm``), so warnings that name files help on
this machine (terminal, viewer) but must not leave it inside ``report.json``
or the PDF. :func:`scrub_paths` replaces, in a text:

* every absolute path (POSIX ``/...`` or Windows ``C:\\...``) by ``<path>``;
* the names of the source folders and of the files in them (as the loader
  writes them in its warnings: ``folder/file`` or ``file``) by ``<file>``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

#: At most this many names of a source folder are collected (a huge archive folder stays cheap).
MAX_NAMES_PER_FOLDER = 20000

_ABSOLUTE = re.compile(r"(?<![\w.])(?:[A-Za-z]:[\\/]|/)(?:[^\s,;:()'\"<>]+)")


def _names_in(folder: Path) -> set[str]:
    names = {folder.name} if folder.name else set()
    try:
        with os.scandir(folder) as it:
            for n, entry in enumerate(it):
                if n >= MAX_NAMES_PER_FOLDER:
                    break
                names.add(entry.name)
    except OSError:
        pass
    return {n for n in names if len(n) >= 3}  # too short to identify anyone, and would hit ordinary words


def source_names(source_files: Iterable[str]) -> set[str]:
    """Names to hide: the folders of ``source_files``, their files, and ``folder/file`` pairs."""
    folders = {Path(f).parent for f in source_files if f}
    names: set[str] = set()
    for folder in folders:
        inside = _names_in(folder)
        names |= inside
        if folder.name:
            names |= {f"{folder.name}/{n}" for n in inside if n != folder.name}
    return names


def scrub_paths(text: str, names: Iterable[str] = ()) -> str:
    """``text`` with absolute paths as ``<path>`` and the given file/folder ``names`` as ``<file>``."""
    out = _ABSOLUTE.sub("<path>", str(text))
    ordered = sorted({n for n in names if n}, key=len, reverse=True)
    if ordered:
        pattern = re.compile(r"(?<![\w.-])(?:" + "|".join(re.escape(n) for n in ordered) + r")(?![\w-])")
        out = pattern.sub("<file>", out)
    return out


def scrub_all(texts: Iterable[str], source_files: Iterable[str]) -> list[str]:
    """:func:`scrub_paths` over several texts, collecting the source names once."""
    names = source_names(source_files)
    return [scrub_paths(t, names) for t in texts]
