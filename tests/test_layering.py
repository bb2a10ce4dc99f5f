"""The import rules of DEVELOPERS.md: Qt only in viewer/, torch only in inference/ (and what runs it).

Each part is imported in a fresh interpreter and the modules it pulled in are checked.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _modules(sub: str) -> list[str]:
    pkg = ROOT / "ctscreen" / sub
    return [f"ctscreen.{sub}.{m.name}" for m in pkgutil.iter_modules([str(pkg)])]


def _loaded_after_import(mods: list[str]) -> set[str]:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("part,forbidden", [
    ("imaging", ("torch", "PySide6", "pyqtgraph")),
    ("io", ("torch", "PySide6", "pyqtgraph")),
    ("cli", ("torch", "PySide6", "pyqtgraph")),  # at import: each command loads torch or Qt only when it runs
    ("inference", ("PySide6", "pyqtgraph")),
])
def test_part_does_not_import(part, forbidden):
    loaded = _loaded_after_import(_modules(part) + ["ctscreen.cli", "ctscreen.errors"])
    for name in forbidden:
        assert name not in loaded, f"ctscreen.{part} imports {name}"
