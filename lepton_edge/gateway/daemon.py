"""The serial gateway: a microcontroller on a serial line as a member of the fleet.

The gateway is the agent (:class:`lepton_edge.agent.daemon.Agent`: A/B store, activation, health
check, local API, MQTT status, telemetry and OTA) with the model run on the device instead of in
this process:

* the store on the gateway's disk is the fleet's record of what the device runs, with the agent's
  checks (signature against the trusted keys, hash, version, the profile's flash and RAM shares);
* loading a model flashes it (:meth:`firmware_bridge.host.Device.flash`): refused before any byte
  when it does not fit the RAM and slot the device reports, verified by hash after the commit, and
  by the manifest's TFLite Micro self-test digest;
* the health check runs through a :class:`~lepton_edge.gateway.runner.SerialRunner` (finite outputs,
  digest, the device's own latency against the budget); a failure rolls the store back and flashes
  the confirmed model back;
* on every (re)connection the device is made to run the store's active model;
* ``status`` says online only while the device answers; telemetry carries the device's STATS.

Device-side code (it runs on the Linux board the microcontroller is plugged into).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from firmware_bridge.host import check_sizes
from firmware_bridge.link import PortOptions
from firmware_bridge.payload import ModelPayload, manifest_arena
from lepton_edge import __version__
from lepton_edge.agent.config import AgentConfig
from lepton_edge.agent.daemon import Agent
from lepton_edge.agent.health import HealthReport
from lepton_edge.agent.served import ServedModel, served_model
from lepton_edge.artifact import Artifact
from lepton_edge.errors import BadInput, LeptonError
from lepton_edge.gateway.runner import SerialRunner
from lepton_edge.gateway.session import SerialSession, SerialSessionOptions
from lepton_edge.runtime.base import io_specs
from lepton_edge.tflite.reader import parse_model

log = logging.getLogger("lepton_edge.gateway")

STATS_WAIT_S = 1.0  # telemetry skips the device's figures rather than wait longer for a busy line


class Gateway(Agent):
    def __init__(self, config: AgentConfig, port: PortOptions,
                 session: SerialSessionOptions = SerialSessionOptions()) -> None:
        if config.mqtt is None:
            raise BadInput(f"{config.path}: a gateway needs an [mqtt] section (the broker it reports to)")
        super().__init__(config)
        self.port = port
        # Read at each connection: a SIGHUP that changes [device] profile applies from the next one.
        self.session = SerialSession(port, expect_profile=lambda: self.config.device.profile.name, options=session)
        self._device_counts: dict[str, int] = {}  # the device's last inference and error counts (telemetry)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, model_path: str | Path | None = None) -> str:
        """Meet the device (BadInput if it is another profile), then start as the agent does (the device
        gets the active model if it answered); then keep the device connected."""
        if not self.session.connect_once():
            log.warning("no device on %s yet (%s); waiting for it", self.port.url, self.session.last_error)
        url = super().start(model_path)
        self.session.start(self._device_changed)
        return url

    def stop(self) -> None:
        self.session.stop()  # first: a flash in progress is cut short, and rolled back, rather than waited for
        super().stop()

    def _device_changed(self, connected: bool) -> None:
        """The session's thread: a device answered again (make it run the active model), or was lost."""
        if connected:
            with self._activation:
                if self.store is not None:
                    self.load_active()
        link = self.mqtt
        if link is not None:
            link.publish_status()

    # --- what differs from the agent -------------------------------------------------------------

    def _resolve_backend(self, config: AgentConfig) -> str:
        return "tflm"  # whatever this board has installed, the microcontroller runs TFLite Micro

    def _load(self, artifact: Artifact, slot: str, *, candidate: bool = False) -> ServedModel:
        """Flash ``artifact`` unless the device already runs it; serve it through the device. A candidate
        stays unconfirmed on the device until its health check passes (:meth:`_accept`), so that the
        device takes the confirmed model back if it fails; so does a staged model the store holds
        (its version must not become the device's floor before the rollout confirms it)."""
        payload = ModelPayload.from_artifact(artifact)
        progress = _quarter_logger(f"flashing {artifact.name} v{artifact.version}")
        confirm = not candidate and not self._held()
        result = self.session.call(lambda device: device.flash(payload, confirm=confirm, progress=progress),
                                   what=f"flashing {artifact.name}")
        if result.already_active:
            log.info("the device runs %s v%d already (sha256 %s)", artifact.name, artifact.version, result.sha256[:12])
        else:
            log.info("flashed %s v%d to the device: %s B in %.2f s, slot %s, self-test %s", artifact.name,
                     artifact.version, f"{result.model_bytes:,}", result.seconds, result.slot, result.self_test)
        inputs, outputs = io_specs(parse_model(artifact.model_bytes, f"slot {slot}"))
        hello = self.session.hello
        package = f"serial {self.port.url}" + (f" ({hello.profile}, firmware {hello.firmware})" if hello else "")
        runner = SerialRunner(backend="tflm", inputs=inputs, outputs=outputs, arena_bytes=payload.arena_bytes,
                              session=self.session, package=package)
        return served_model(artifact, slot, runner)

    def _accept(self, candidate: ServedModel, report: HealthReport, *, staged: bool) -> HealthReport:
        """Confirm the model on the device too (its version becomes the device's floor); a staged model
        stays unconfirmed there until the rollout's confirm (:meth:`confirm_floor`)."""
        if staged:
            return report
        try:
            self.session.call(lambda device: device.confirm(), what="MODEL_CONFIRM")
        except LeptonError as exc:
            return replace(report, ok=False, reason=f"cannot confirm it on the device: {exc}")
        return report

    def confirm_floor(self, sha256: str) -> None:
        """MODEL_CONFIRM for the held staged model, then the store's floor. A device that does not answer
        now is confirmed when it answers again (:meth:`load_active` confirms what nothing holds)."""
        store = self._require_store()
        with self._activation:
            served = self._served
            if served is None or served.sha256 != sha256:
                store.confirm_floor(sha256)  # refuses with the reason (or there is nothing to do)
                return
            if self.session.connected:
                self.session.call(lambda device: device.confirm(), what="MODEL_CONFIRM")
            else:
                log.info("the device is not connected; it confirms %s when it answers", sha256[:12])
            store.confirm_floor(sha256)
            log.info("model %s confirmed; the version floor is %s now", sha256[:12], store.state().confirmed_version)

    def _held(self) -> bool:
        store = self.store
        return store is not None and store.state().held is not None

    def _after_rollback(self, back: str | None) -> None:
        """The device holds the candidate that failed: put the confirmed model back on it."""
        self.load_active()

    def load_active(self) -> None:
        if not self.session.connected:
            log.info("the device is not connected; it gets the active model when it answers")
            return
        super().load_active()

    def check_update(self, manifest: dict[str, Any]) -> None:
        """The profile's RAM share, then the RAM and slot the device itself reports (when it is connected)."""
        super().check_update(manifest)
        hello = self.session.hello
        if hello is None:
            return
        arena, margin = manifest_arena(manifest, "update manifest")
        check_sizes(hello, "update model", manifest["model"]["size"], arena, margin)

    def offline_reason(self) -> str | None:
        if self.session.connected:
            return None
        return f"no device answers on {self.port.url} ({self.session.last_error})"

    def software(self) -> str:
        hello = self.session.hello
        device = f"; {hello.profile} firmware {hello.firmware}" if hello else ""
        return f"lepton-edge gateway {__version__}{device}"

    def telemetry_extra(self) -> dict[str, Any]:
        """The device's STATS: its own inference count and errors, arena, uptime, bad frames it saw."""
        try:
            stats = self.session.call(lambda device: device.stats(), what="STATS", wait_s=STATS_WAIT_S)
        except LeptonError:
            # Busy flashing, or gone (the status says so): the last counts, so that rates stay the device's.
            return dict(self._device_counts)
        self._device_counts = {"inferences": stats.invocations, "errors": stats.invoke_errors}
        return {**self._device_counts, "arena_bytes": stats.arena_bytes, "arena_head_bytes": stats.arena_head_bytes,
                "arena_tail_bytes": stats.arena_tail_bytes, "device_uptime_s": round(stats.uptime_ms / 1000.0, 3),
                "serial_bad_frames": stats.frames_bad + stats.crc_errors}

    def status(self) -> dict[str, Any]:
        out = super().status()
        hello = self.session.hello
        out["serial"] = {"port": self.port.url, "connected": self.session.connected,
                         "last_error": self.session.last_error, "connects": self.session.connects,
                         "profile": hello.profile if hello else None, "firmware": hello.firmware if hello else None,
                         "arena_ram_bytes": hello.arena_ram_bytes if hello else None,
                         "slot_bytes": hello.slot_bytes if hello else None}
        return out


def _quarter_logger(what: str, quiet_s: float = 2.0) -> Callable[[int, int], None]:
    """A flash progress callback that logs at 25, 50 and 75 %, once the flash has taken ``quiet_s`` (a slow
    line takes minutes for a big model; a quick flash stays one line)."""
    started, logged = time.monotonic(), 0

    def progress(done: int, total: int) -> None:
        nonlocal logged
        quarter = 4 * done // total if total else 0
        if logged < quarter < 4 and time.monotonic() - started >= quiet_s:
            logged = quarter
            log.info("%s: %d%% (%s of %s B)", what, 25 * quarter, f"{done:,}", f"{total:,}")
    return progress
