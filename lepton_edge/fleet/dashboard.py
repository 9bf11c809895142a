"""The web dashboard's static files, served by the controller at ``/`` and ``/dashboard/<file>``.

The files live in ``lepton_edge/fleet/dashboard_static/`` (plain HTML, CSS and ES modules: no build
step, nothing fetched from elsewhere). Only a flat file name with a known extension is served, so no
request can reach a path outside that directory.
"""

from __future__ import annotations

import re
from importlib import resources

ASSET_DIR = "dashboard_static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9]+)")


def dashboard_asset(name: str) -> tuple[bytes, str] | None:
    """The file's bytes and content type, or None when there is no such file (or the name is not a plain
    file name in the dashboard's directory)."""
    m = _NAME.fullmatch(name)
    if m is None or m.group(1) not in CONTENT_TYPES:
        return None
    path = resources.files("lepton_edge.fleet").joinpath(ASSET_DIR).joinpath(name)
    try:
        return path.read_bytes(), CONTENT_TYPES[m.group(1)]
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
