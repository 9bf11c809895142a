"""A device's telemetry over time, from the stored rows (``GET /v1/devices/<id>/telemetry``)."""

from __future__ import annotations

import json
from typing import Any

from lepton_edge.fleet.store import FleetDB
from lepton_edge.mqtt.messages import TELEMETRY_FIELDS

MAX_LIMIT = 10_000   # rows in one answer: about 2.8 hours of one device at one message a second


def telemetry_series(db: FleetDB, device: str, since: float, limit: int) -> list[dict[str, Any]]:
    """The device's telemetry received at or after ``since``, oldest first, at most ``limit`` rows.

    When more rows match, the newest ``limit`` of them: a chart wants the latest window. Each row is
    ``{"received", "seq", "ts", ...the telemetry fields it has}``; fields outside the wire format's
    list are left out (the database keeps the payload as the device sent it)."""
    limit = max(0, min(int(limit), MAX_LIMIT))
    rows = db.telemetry_rows(device, since, limit)
    out: list[dict[str, Any]] = []
    for r in rows:
        try:
            payload = json.loads(r["payload"])
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        point: dict[str, Any] = {"received": r["received"], "seq": r["seq"], "ts": r["ts"]}
        point.update((k, payload[k]) for k in TELEMETRY_FIELDS if k in payload)
        out.append(point)
    return out
