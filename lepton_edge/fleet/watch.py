"""``lepton-edge fleet watch``: a live table of a fleet's devices, straight from the broker.

It subscribes to every device's ``status`` (retained, so the list fills at once), ``telemetry`` and
``ota/progress``; it needs no controller. On a terminal the table is redrawn in place every
``interval`` seconds; piped, one table per interval; ``--once`` collects for ``--wait`` seconds and
prints one table (or ``--json``) for scripts. Payloads that do not follow the schema are counted, as
the controller counts them, and the count is shown.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

from lepton_edge.console import human_bytes, render_table
from lepton_edge.errors import CheckFailed
from lepton_edge.mqtt import (
    OTA_PROGRESS,
    STATUS,
    TELEMETRY,
    BrokerConfig,
    MqttClient,
    Progress,
    Router,
    SessionOptions,
    Status,
    Telemetry,
    fleet_filter,
)

log = logging.getLogger("lepton_edge.fleet.watch")


@dataclass
class DeviceView:
    device: str
    online: bool | None = None
    model: dict[str, Any] | None = None
    offline_reason: str | None = None
    telemetry: dict[str, Any] = field(default_factory=dict)
    telemetry_seq: int | None = None
    last_seen: float | None = None
    ota: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "online": self.online, "model": self.model,
                "offline_reason": self.offline_reason, "telemetry": self.telemetry or None,
                "telemetry_seq": self.telemetry_seq, "last_seen": self.last_seen, "ota": self.ota}


class FleetView:
    """What the watch knows; handlers run on the MQTT loop thread, readers anywhere."""

    def __init__(self, fleet: str) -> None:
        self.fleet = fleet
        self._lock = threading.Lock()
        self._devices: dict[str, DeviceView] = {}
        self.router = Router(log)
        self.router.on(STATUS, Status.from_bytes, self.on_status)
        self.router.on(TELEMETRY, Telemetry.from_bytes, self.on_telemetry, qos=0)
        self.router.on(OTA_PROGRESS, Progress.from_bytes, self.on_progress)

    def attach(self, client: MqttClient) -> None:
        self.router.subscribe(client, lambda kind: fleet_filter(self.fleet, kind))

    @property
    def bad_payloads(self) -> int:
        return self.router.bad_payloads

    def _device(self, device: str) -> DeviceView:
        return self._devices.setdefault(device, DeviceView(device))

    def on_status(self, device: str, status: Status) -> None:
        with self._lock:
            dev = self._device(device)
            dev.online = status.online
            dev.offline_reason = None if status.online else status.reason
            if status.model is not None:
                dev.model = {"name": status.model.name, "version": status.model.version,
                             "sha256": status.model.sha256, "slot": status.model.slot}
            if status.ts:
                dev.last_seen = max(dev.last_seen or 0.0, status.ts)

    def on_telemetry(self, device: str, tel: Telemetry) -> None:
        with self._lock:
            dev = self._device(device)
            dev.telemetry, dev.telemetry_seq = dict(tel.values), tel.seq
            dev.last_seen = time.time()

    def on_progress(self, device: str, p: Progress) -> None:
        with self._lock:
            dev = self._device(device)
            dev.ota = {"job": p.job, "state": p.state, "received": p.received, "total": p.total, "reason": p.reason}
            dev.last_seen = time.time()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._devices[k].as_dict() for k in sorted(self._devices)]


HEADERS = ("device", "online", "model", "p50 ms", "p99 ms", "inf/s", "memory", "last seen", "OTA")


def table_rows(devices: list[dict[str, Any]], now: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for d in devices:
        t = d["telemetry"] or {}
        model = d["model"]
        ota = d["ota"]
        ota_text = "-"
        if ota:
            ota_text = ota["state"]
            if ota["state"] == "downloading" and ota["total"]:
                ota_text += f" {100 * ota['received'] / ota['total']:.0f}%"
            if ota["reason"]:
                ota_text += f": {ota['reason'][:40]}"
        rows.append((
            d["device"],
            {True: "yes", False: "no", None: "?"}[d["online"]],
            f"{model['name']} v{model['version']}" if model else "-",
            _num(t.get("latency_p50_ms"), 2), _num(t.get("latency_p99_ms"), 2), _num(t.get("inferences_per_s"), 1),
            human_bytes(t["rss_bytes"]) if isinstance(t.get("rss_bytes"), (int, float)) else "-",
            _ago(d["last_seen"], now), ota_text))
    return rows


def _num(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = max(0.0, now - ts)
    return f"{s:.1f}s ago" if s < 60 else f"{s / 60:.0f}m ago" if s < 3600 else f"{s / 3600:.1f}h ago"


def render(view: FleetView, client: MqttClient, broker: BrokerConfig, now: float) -> str:
    devices = view.snapshot()
    online = sum(1 for d in devices if d["online"])
    state = "connected" if client.connected else f"reconnecting ({client.last_error or 'connecting'})"
    bad = f", {view.bad_payloads} bad payloads" if view.bad_payloads else ""
    head = (f"fleet {view.fleet} on {broker.display_url} ({state}) - {len(devices)} devices, {online} online{bad} - "
            f"{time.strftime('%H:%M:%S', time.localtime(now))}")
    body = render_table(HEADERS, table_rows(devices, now), align="lllrrrrrl") if devices else "(no devices yet)"
    return head + "\n" + body


def watch(broker: BrokerConfig, fleet: str, *, once: bool, as_json: bool, wait_s: float, interval_s: float,
          connect_timeout_s: float, out: TextIO) -> int:
    """Run the watch; returns the exit code."""
    view = FleetView(fleet)
    client = MqttClient(broker, f"lepton-edge-watch-{uuid.uuid4().hex[:12]}",
                        session=SessionOptions(clean_start=True, max_backoff_s=10.0))
    view.attach(client)
    client.start()
    try:
        if once:
            if not client.wait_connected(connect_timeout_s):
                raise CheckFailed(client.last_error or f"could not connect to {broker.display_url} "
                                                       f"within {connect_timeout_s:g} s")
            time.sleep(wait_s)
            if as_json:
                out.write(json.dumps({"fleet": fleet, "time": time.time(), "bad_payloads": view.bad_payloads,
                                     "devices": view.snapshot()}, indent=2) + "\n")
            else:
                out.write(render(view, client, broker, time.time()) + "\n")
            return 0
        tty = bool(getattr(out, "isatty", lambda: False)())
        client.wait_connected(min(connect_timeout_s, interval_s))
        try:
            while True:
                now = time.time()
                if as_json:
                    out.write(json.dumps({"fleet": fleet, "time": now, "connected": client.connected,
                                          "bad_payloads": view.bad_payloads, "devices": view.snapshot()}) + "\n")
                elif tty:
                    out.write("\x1b[H\x1b[J" + render(view, client, broker, now) + "\n")
                else:
                    out.write(render(view, client, broker, now) + "\n\n")
                out.flush()
                time.sleep(interval_s)
        except KeyboardInterrupt:
            return 0
    finally:
        client.stop()
