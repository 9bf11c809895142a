"""Read a TOML file (a device profile, an agent config) with one-line errors that name the file.

Device-side: ``tomllib`` on Python 3.11+, the ``tomli`` backport on 3.10.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lepton_edge.errors import BadInput

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed table at ``path``; ``what`` names the kind of file in errors ("profile", "config")."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML: {' '.join(str(exc).split())}") from None
