"""``GET /metrics``: the whole fleet in Prometheus text format (stub; filled in by the metrics work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lepton_edge.fleet.controller import Controller

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render_metrics(controller: Controller) -> tuple[bytes, str]:
    """The body and its content type."""
    return b"", CONTENT_TYPE
