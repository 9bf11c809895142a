"""A device's telemetry over time, from the stored rows (stub; filled in by the dashboard work)."""

from __future__ import annotations

from typing import Any

from lepton_edge.fleet.store import FleetDB


def telemetry_series(db: FleetDB, device: str, since: float, limit: int) -> list[dict[str, Any]]:
    """The device's telemetry received at or after ``since``, oldest first, at most ``limit`` rows."""
    return []
