"""``lepton-edge deploy``: upload an artifact to the controller, deploy it or roll it out, and optionally follow it.

The artifact is checked here first (the model's size and sha256 against its manifest; the
signature is the devices' business, against their own trusted keys). The targets are named
devices, devices carrying every given tag, or all devices the controller knows. Without rollout
flags it is a plain deployment (every device at once); with any of them a staged rollout
(canary, soak, waves, abort criteria: docs/ROLLOUTS.md). With ``wait`` the deployment or rollout
is polled until it is over or the timeout passes; on a terminal stderr shows the progress.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from lepton_edge.artifact import load_artifact
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fleet.client import ControllerClient, Unreachable, check_rollout_fields
from lepton_edge.fleet.rollout import ENDED_STATES
from lepton_edge.fleet.store import TERMINAL_JOB_STATES
from lepton_edge.mqtt import check_name, valid_tag

POLL_S = 0.25
BARS_UP_TO = 20                      # more devices than this: one summary line instead of a bar each
ON_NEW_MODEL = frozenset({"healthy", "confirming", "confirmed"})  # rollout phases: healthy on the new model
FLAGS = {"canary": "--canary", "canary_pct": "--canary", "soak_s": "--soak", "rate": "--rate",
         "growth": "--growth", "wave_interval_s": "--wave-interval", "max_failures_pct": "--max-failures",
         "min_done": "--min-done", "max_error_rate": "--max-error-rate",
         "max_p99_increase_pct": "--max-p99-increase", "expires_s": "--expires"}
CRITERIA = {"max-failures": "max_failures_pct", "max-error-rate": "max_error_rate",
            "max-p99-increase": "max_p99_increase_pct"}


@dataclass(frozen=True)
class Targets:
    """Which devices: named ones, those carrying every tag, or all the controller knows."""

    devices: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    all: bool = False

    def check(self) -> None:
        if not (self.devices or self.tags or self.all):
            raise BadInput("select devices with --device ID, --tag TAG or --all")
        if self.all and (self.devices or self.tags):
            raise BadInput("--all selects every device: do not combine it with --device or --tag")
        for device in self.devices:
            check_name(device, "--device")
        for tag in self.tags:
            if not valid_tag(tag):
                raise BadInput(f"--tag {tag!r}: a tag has 1 to 64 printable characters and no spaces")


@dataclass(frozen=True)
class RolloutFlags:
    """The rollout flags as given (None: not given, the controller's default); field names are the API's."""

    canary: int | None = None
    canary_pct: float | None = None
    soak_s: float | None = None
    rate: float | None = None
    growth: float | None = None
    wave_interval_s: float | None = None
    max_failures_pct: float | None = None
    min_done: int | None = None
    max_error_rate: float | None = None
    max_p99_increase_pct: float | None = None

    @classmethod
    def from_text(cls, *, canary: str | None = None, soak_s: float | None = None, rate: float | None = None,
                  growth: float | None = None, wave_interval_s: float | None = None, max_failures: str | None = None,
                  min_done: int | None = None, max_error_rate: str | None = None,
                  max_p99_increase: str | None = None) -> RolloutFlags:
        """From the command line: ``--canary N|P%``, ``--max-failures P%``, ``--max-p99-increase P%`` and
        ``--max-error-rate R|P%`` as text, the others as numbers."""
        count, pct = None, None
        if canary is not None:
            if canary.strip().endswith("%"):
                pct = _number("--canary", canary.strip()[:-1])
            else:
                count = _whole("--canary", canary)
        error_rate = None
        if max_error_rate is not None:
            text = max_error_rate.strip()
            error_rate = _number("--max-error-rate", text[:-1]) / 100 if text.endswith("%") else \
                _number("--max-error-rate", text)
        return cls(canary=count, canary_pct=pct, soak_s=soak_s, rate=rate, growth=growth,
                   wave_interval_s=wave_interval_s, max_failures_pct=_percent("--max-failures", max_failures),
                   min_done=min_done, max_error_rate=error_rate,
                   max_p99_increase_pct=_percent("--max-p99-increase", max_p99_increase))

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class DeployRequest:
    artifact_dir: Path
    targets: Targets
    controller: str | tuple[str, ...]   # several: replicas or a standby, tried in turn
    token: str | None = None
    wait: bool = False
    timeout_s: float = 300.0
    expires_s: float | None = None
    connect_wait_s: float = 10.0
    rollout: RolloutFlags | None = None  # None or no flag given: a plain deployment


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadInput(f"{flag} {text!r}: expected a number") from None


def _whole(flag: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInput(f"{flag} {text!r}: expected a whole number of devices or a percentage (10 or 5%)") from None


def _percent(flag: str, text: str | None) -> float | None:
    """``20%`` or ``20``: a percentage."""
    if text is None:
        return None
    return _number(flag, text.strip().removesuffix("%"))


class DeviceBars:
    """One progress line per device, redrawn in place on a terminal; silent otherwise."""

    def __init__(self, devices: list[str], stream: TextIO, width: int = 28) -> None:
        self.devices, self.stream, self.width = devices, stream, width
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.label = max((len(d) for d in devices), default=1)
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


class Lines:
    """A few status lines redrawn in place on a terminal (their number may change); silent otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())
        self._drawn = 0

    def draw(self, lines: list[str]) -> None:
        if not self.enabled:
            return
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J")
        self.stream.flush()
        self._drawn = len(lines)


def counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n)


def rollout_lines(r: dict[str, Any], max_waves: int = 8) -> list[str]:
    """The progress display of a rollout: its state and counts, then one line per wave (the latest ones)."""
    s = r.get("summary") or {}
    head = (f"rollout {r['rollout']}: {r['state']} - {s.get('selected', 0)} selected, "
            f"{s.get('released', 0)} released, {s.get('healthy', 0)} healthy, "
            f"{s.get('failed', 0) + s.get('rolled_back', 0)} failed, {s.get('in_progress', 0)} updating, "
            f"{s.get('waiting', 0)} waiting")
    lines = [head]
    waves = r.get("waves") or []
    if len(waves) > max_waves:
        lines.append(f"  ({len(waves) - max_waves} earlier waves)")
    for w in waves[-max_waves:]:
        label = f"wave {w['wave']}" + (" (canary)" if w.get("canary") else "")
        lines.append(f"  {label}: {w['devices']} device(s): {counts_text(w.get('states') or {}) or '-'}")
    if r.get("abort"):
        lines.append(f"  {state_words(r)}")
    return lines


def abort_text(abort: dict[str, Any]) -> str:
    """An abort in words: ``aborted: 6 of 10 done devices failed (60.0 % > 20 %)``."""
    return f"aborted: {abort_reason(abort)}"


def abort_reason(abort: dict[str, Any]) -> str:
    """Why a rollout aborted: the controller's words, else made from criterion, value and limit."""
    if abort.get("text"):
        return str(abort["text"])
    criterion, value, limit = abort.get("criterion"), abort.get("value"), abort.get("limit")
    if not isinstance(value, (int, float)) or not isinstance(limit, (int, float)):
        return f"{criterion}"
    if criterion == "max-failures":
        return f"{value:.1f} % of the done devices failed (> {limit:g} %)"
    if criterion == "max-error-rate":
        return f"the updated devices' error rate was {value:.4g} (> {limit:g})"
    if criterion == "max-p99-increase":
        return f"the updated devices' p99 latency rose {value:.1f} % (> {limit:g} %)"
    return f"{criterion} {value:g} > {limit:g}"


def state_words(r: dict[str, Any]) -> str:
    """A rollout's state for people, an abort in words."""
    abort = r.get("abort")
    if not abort:
        return str(r["state"])
    if r["state"] == "aborting":
        return f"aborting (reverting the updated devices): {abort_reason(abort)}"
    return f"{r['state']}: {abort_reason(abort)}"


def deploy(req: DeployRequest, err: TextIO | None = None) -> dict[str, Any]:
    """Upload, deploy or roll out, and with ``wait`` follow. Returns a summary with ``state`` and ``ok``
    (with wait: every device healthy on the new model); raises BadInput for bad arguments and
    CheckFailed when the controller cannot be reached."""
    err = err or sys.stderr
    req.targets.check()
    if req.timeout_s <= 0:
        raise BadInput("--timeout must be positive")
    params = req.rollout.given() if req.rollout else {}
    if params and req.expires_s is not None:
        params["expires_s"] = req.expires_s
    params = check_rollout_fields(params, FLAGS.__getitem__)
    artifact = load_artifact(req.artifact_dir, require_signature=False)
    t = req.targets
    client = ControllerClient(req.controller, req.token, connect_wait_s=req.connect_wait_s)
    try:
        uploaded = client.upload(artifact)
        base = {"artifact": uploaded["artifact"], "name": artifact.name, "version": artifact.version}
        if params:
            created = client.create_rollout(uploaded["artifact"], params, t.devices, t.tags, t.all)
        else:
            created = client.create_deployment(uploaded["artifact"], t.devices, req.expires_s, tags=t.tags, all_=t.all)
        unknown = created.get("unknown_devices") or []
        for device in unknown:
            err.write(f"warning: device {device} has never been seen by the controller; its job waits for it\n")
        err.flush()
        if params:
            return _follow_rollout(client, created, base, unknown, req, err)
        return _follow_deployment(client, created, base, unknown, req, err)
    finally:
        client.close()


def _follow_deployment(client: ControllerClient, dep: dict[str, Any], base: dict[str, Any], unknown: list[str],
                       req: DeployRequest, err: TextIO) -> dict[str, Any]:
    result: dict[str, Any] = {**base, "deployment": dep["deployment"], "state": _dep_state(dep),
                              "devices": dep["devices"], "unknown_devices": unknown, "waited": req.wait,
                              "timed_out": [], "ok": None}
    if not req.wait:
        return result
    names = [d["device"] for d in dep["devices"]]
    bars = DeviceBars(names, err) if len(names) <= BARS_UP_TO else None
    lines = Lines(err)
    deadline = time.monotonic() + req.timeout_s
    while True:
        if bars is not None:
            bars.draw({d["device"]: d for d in dep["devices"]})
        else:
            counts: dict[str, int] = {}
            for d in dep["devices"]:
                counts[d["state"]] = counts.get(d["state"], 0) + 1
            lines.draw([f"deployment {dep['deployment']}: {len(names)} devices: {counts_text(counts)}"])
        if dep["done"] or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
        try:
            dep = client.deployment(dep["deployment"], wait_s=max(0.5, deadline - time.monotonic()))
        except Unreachable:
            break  # the controller went away for the rest of our time: report what we know
    result["devices"], result["state"] = dep["devices"], _dep_state(dep)
    result["timed_out"] = [d["device"] for d in dep["devices"] if d["state"] not in TERMINAL_JOB_STATES]
    result["ok"] = all(d["state"] == "healthy" for d in dep["devices"])
    return result


def _dep_state(dep: dict[str, Any]) -> str:
    return "completed" if dep.get("done") else "in_progress"


def _follow_rollout(client: ControllerClient, r: dict[str, Any], base: dict[str, Any], unknown: list[str],
                    req: DeployRequest, err: TextIO) -> dict[str, Any]:
    lines = Lines(err)
    deadline = time.monotonic() + req.timeout_s
    while req.wait:
        lines.draw(rollout_lines(r))
        if _over(r) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
        try:
            r = client.rollout(r["rollout"], wait_s=max(0.5, deadline - time.monotonic()))
        except Unreachable as exc:
            raise Unreachable(f"{exc}; rollout {r['rollout']} goes on in the controller "
                              f"(lepton-edge rollout show {r['rollout']})") from None
    over = _over(r)
    ok = None
    if req.wait:
        ok = r["state"] == "completed" and all(d.get("phase") in ON_NEW_MODEL for d in r.get("devices") or [])
    return {**base, "rollout": r["rollout"], "state": r["state"], "abort": r.get("abort"), "created": r.get("created"),
            "params": r.get("params"), "summary": r.get("summary"), "waves": r.get("waves") or [],
            "devices": r.get("devices") or [], "unknown_devices": unknown, "waited": req.wait,
            "timed_out": bool(req.wait and not over), "ok": ok}


def _over(r: dict[str, Any]) -> bool:
    """Ended, and nothing left to do: the reverts (abort) or confirmations (completed, cancelled) are over."""
    return r["state"] in ENDED_STATES and not r.get("active", False)


def failure_line(result: dict[str, Any]) -> str:
    """One line saying why the deployment or rollout did not put the new model on every device."""
    if "rollout" in result:
        return _rollout_failure_line(result)
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


def _rollout_failure_line(result: dict[str, Any], names: int = 10) -> str:
    rid, devices = result["rollout"], result["devices"]
    s = result.get("summary") or {}
    if result["timed_out"]:
        return (f"rollout {rid} is still {result['state']} after the timeout ({s.get('healthy', 0)} of "
                f"{len(devices)} healthy); it goes on in the controller: lepton-edge rollout show {rid}")
    if result["state"] == "aborted":
        return f"rollout {rid} {abort_text(result.get('abort') or {})}; {s.get('reverted', 0)} device(s) reverted"
    bad = [d for d in devices if d.get("phase") not in ON_NEW_MODEL]
    listed = "; ".join(f"{d['device']} {d.get('phase')}" + (f" ({d['reason']})" if d.get("reason") else "")
                       for d in bad[:names]) + (f"; and {len(bad) - names} more" if len(bad) > names else "")
    if result["state"] == "cancelled":
        return f"rollout {rid} was cancelled: {len(bad)} of {len(devices)} device(s) not on the new model: {listed}"
    return f"rollout {rid} {result['state']}: {len(bad)} of {len(devices)} device(s) not healthy: {listed}"


def raise_unless_ok(result: dict[str, Any]) -> None:
    if result["ok"] is False:
        raise CheckFailed(failure_line(result))
