"""Command line: ``ctscreen <subcommand>``, one module of this package per subcommand.

Each module ``ctscreen.cli.<name>`` has ``add_parser(sub)`` (its arguments)
and ``run(args)`` (which calls one function of the core or the viewer, the
same function the GUI calls). Modules import torch and Qt only inside ``run``,
so building the parser stays cheap. Errors of the core
(:class:`ctscreen.errors.CtscreenError`) end the program with a one-line reason
and a non-zero exit code.
"""

from __future__ import annotations

import os

# Before anything loads torch's OpenMP runtime: idle worker threads sleep instead of
# spinning, which on a 2-core machine leaves the CPU to the GUI thread and the decoder
# threads (P001 analysis: 39 s instead of 89 s under load). A user's own setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402

from ctscreen import RESEARCH_NOTICE, __version__  # noqa: E402
from ctscreen.errors import CtscreenError  # noqa: E402

#: Subcommands in the order ``--help`` lists them; each is the module ``ctscreen.cli.<name>``
#: (a dash in the command is an underscore in the module name).
SUBCOMMANDS = ["view", "info", "analyze", "compare", "batch", "pull", "push", "evaluate", "train", "evaluate-classifier", "train-classifier", "ensemble-classifier"]


def _module(command: str):
    return importlib.import_module(f"ctscreen.cli.{command.replace('-', '_')}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctscreen",
        description=f"Chest CT screening for COVID-19 pneumonia lesions. {RESEARCH_NOTICE}",
    )
    p.add_argument("--version", action="version", version=f"ctscreen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        _module(command).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(_module(args.command).run(args))
    except CtscreenError as exc:
        print(f"ctscreen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ctscreen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
