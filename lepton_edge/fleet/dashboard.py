"""The web dashboard's static files, served by the controller (stub; filled in by the dashboard work)."""

from __future__ import annotations


def dashboard_asset(name: str) -> tuple[bytes, str] | None:
    """The file's bytes and content type, or None when there is no such file."""
    return None
