"""The ``lepton-edge`` command: a thin layer that parses arguments and calls the modules.

Each command lives in ``lepton_edge/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a callable taking the parsed arguments and returning
an exit code. Errors derived from :class:`lepton_edge.errors.LeptonError` become one line on
stderr and their exit code; set ``LEPTON_DEBUG=1`` to see a traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from lepton_edge import __version__
from lepton_edge.errors import LeptonError

# Modules under lepton_edge.commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "profiles",
    "inspect",
    "plan",
    "convert",
    "keys",
    "flash",
    "validate",
    "device_sim",
    "firmware",
    "agent",
    "gateway",
    "fleet",
    "deploy",
    "rollout",
    "demo",
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="lepton-edge",
                            description="Ship ML models to microcontrollers and small Linux boards.")
    parser.add_argument("--version", action="version", version=f"lepton-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"lepton_edge.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except LeptonError as exc:
        if os.environ.get("LEPTON_DEBUG"):
            raise
        print(f"lepton-edge {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"lepton-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("LEPTON_DEBUG"):
            raise
        print(f"lepton-edge {args.command}: internal error: {type(exc).__name__}: {exc} "
              "(run with LEPTON_DEBUG=1 for a traceback)", file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
