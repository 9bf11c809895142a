"""``lepton-edge deploy``: upload an artifact to the controller, deploy it, and optionally follow it.

The artifact is checked here first (the model's size and sha256 against its manifest; the
signature is the devices' business, against their own trusted keys). With ``wait`` the
deployment is polled until every device is healthy, has failed, or the timeout passes; on a
terminal each device gets a progress bar on stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lepton_edge.artifact import load_artifact
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fleet.client import ControllerClient, Unreachable
from lepton_edge.fleet.store import TERMINAL_JOB_STATES
from lepton_edge.mqtt import check_name

POLL_S = 0.25


@dataclass(frozen=True)
class DeployRequest:
    artifact_dir: Path
    devices: tuple[str, ...]
    controller: str
    token: str | None = None
    wait: bool = False
    timeout_s: float = 300.0
    expires_s: float | None = None
    connect_wait_s: float = 10.0


class DeviceBars:
    """One progress line per device, redrawn in place on a terminal; silent otherwise."""

    def __init__(self, devices: list[str], stream: TextIO, width: int = 28) -> None:
        self.devices, self.stream, self.width = devices, stream, width
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.label = max(len(d) for d in devices)
        self._drawn = False

    def draw(self, states: dict[str, dict[str, Any]]) -> None:
        if not self.enabled:
            return
        out = []
        if self._drawn:
            out.append(f"\x1b[{len(self.devices)}F")
        for device in self.devices:
            s = states.get(device, {})
            total, received = s.get("total") or 0, s.get("received") or 0
            state = s.get("state", "?")
            frac = 1.0 if state == "healthy" else (received / total if total else 0.0)
            bar = "#" * int(min(1.0, frac) * self.width)
            note = f" {s['reason'][:60]}" if s.get("reason") else ""
            out.append(f"\x1b[2K{device.ljust(self.label)} [{bar.ljust(self.width)}] "
                       f"{frac * 100:5.1f}% {state}{note}\n")
        self.stream.write("".join(out))
        self.stream.flush()
        self._drawn = True


def deploy(req: DeployRequest, err: TextIO | None = None) -> dict[str, Any]:
    """Upload, deploy, and with ``wait`` follow. Returns a summary with ``ok`` (all healthy);
    raises BadInput for bad arguments and CheckFailed when the controller cannot be reached."""
    err = err or sys.stderr
    if not req.devices:
        raise BadInput("name at least one --device")
    for device in req.devices:
        check_name(device, "--device")
    if req.timeout_s <= 0:
        raise BadInput("--timeout must be positive")
    artifact = load_artifact(req.artifact_dir, require_signature=False)
    client = ControllerClient(req.controller, req.token, connect_wait_s=req.connect_wait_s)
    try:
        uploaded = client.upload(artifact)
        dep = client.create_deployment(uploaded["artifact"], list(req.devices), req.expires_s)
        result: dict[str, Any] = {"artifact": uploaded["artifact"], "name": artifact.name, "version": artifact.version,
                                  "deployment": dep["deployment"], "devices": dep["devices"], "waited": req.wait,
                                  "timed_out": [], "ok": None}
        if not req.wait:
            return result
        bars = DeviceBars(list(req.devices), err)
        deadline = time.monotonic() + req.timeout_s
        while True:
            states = {d["device"]: d for d in dep["devices"]}
            bars.draw(states)
            if dep["done"] or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S)
            try:
                dep = client.deployment(dep["deployment"], wait_s=max(0.5, deadline - time.monotonic()))
            except Unreachable:
                break  # the controller went away for the rest of our time: report what we know
        result["devices"] = dep["devices"]
        result["timed_out"] = [d["device"] for d in dep["devices"] if d["state"] not in TERMINAL_JOB_STATES]
        result["ok"] = all(d["state"] == "healthy" for d in dep["devices"])
        return result
    finally:
        client.close()


def failure_line(result: dict[str, Any]) -> str:
    """One line naming every device that is not healthy, and why."""
    bad = []
    for d in result["devices"]:
        if d["state"] == "healthy":
            continue
        if d["device"] in result["timed_out"]:
            pct = f" {100 * d['received'] / d['total']:.0f}%" if d.get("total") else ""
            bad.append(f"{d['device']} timed out ({d['state']}{pct}{', offline' if not d.get('online') else ''})")
        else:
            bad.append(f"{d['device']} {d['state']}" + (f" ({d['reason']})" if d.get("reason") else ""))
    return f"{len(bad)} of {len(result['devices'])} device(s) not healthy: " + "; ".join(bad)


def raise_unless_ok(result: dict[str, Any]) -> None:
    if result["ok"] is False:
        raise CheckFailed(failure_line(result))
