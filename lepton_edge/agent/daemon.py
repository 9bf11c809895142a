"""The agent: owns the model store, the model being served and the local API; reacts to signals.

Start-up: open the store (which rolls back an activation a crash interrupted), install and activate
``--model`` if given, load the active model, then listen. An activation (:meth:`Agent.activate`)
marks the slot pending, loads it beside the model being served, runs the health check, and either
confirms it and switches the API over, or rolls back; requests keep being served throughout.

:meth:`Agent.run` is the daemon's main loop. SIGTERM (or SIGINT) stops gracefully: no new
connections, requests in flight finish, idle keep-alive connections close. SIGHUP re-reads the
configuration; ``[api] listen`` and ``[store] dir`` take effect at the next start, everything else
at once (a changed backend, profile or thread count reopens the model).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge import __version__
from lepton_edge.agent.api import ServedModelView, bound_url, make_server
from lepton_edge.agent.bare import bare_model_artifact
from lepton_edge.agent.config import AgentConfig, load_config
from lepton_edge.agent.health import HealthReport, check_health
from lepton_edge.agent.metrics import AgentMetrics
from lepton_edge.agent.policy import InstallPolicy, check_ram
from lepton_edge.agent.served import ServedModel, load_served
from lepton_edge.agent.store import ModelStore
from lepton_edge.artifact import Artifact, read_artifact_files
from lepton_edge.errors import BadInput, CheckFailed, LeptonError
from lepton_edge.runtime.factory import artifact_arena_bytes, choose_backend

log = logging.getLogger("lepton_edge.agent")

DRAIN_TIMEOUT_S = 10.0


class Agent:
    """The daemon's state. The HTTP layer calls :meth:`current`, :meth:`infer`, :meth:`status`, :meth:`health`."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.backend = self._resolve_backend(config)
        self.metrics = AgentMetrics()
        self.store: ModelStore | None = None
        self.url: str | None = None
        self.last_health: HealthReport | None = None
        self._served: ServedModel | None = None
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._activation = threading.Lock()  # one activation or runtime reload at a time
        self.mqtt: Any = None  # the MQTT side (OTA, telemetry, status) when [mqtt] is configured

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, model_path: str | Path | None = None) -> str:
        """Open the store, deploy ``model_path`` if given, load the active model, listen; return the API's URL."""
        self.open_store()
        if model_path is not None:
            self.deploy_path(Path(model_path))
        if self._served is None:
            self.load_active()
        return self.start_api()

    def open_store(self) -> ModelStore:
        self.store = ModelStore(self.config.store_dir, self._policy())
        if self.store.recovered_from is not None:
            self.metrics.count_activation("rolled_back")
            log.warning("slot %s was pending a health check that never finished; rolled back to %s",
                        self.store.recovered_from, self.store.state().active or "no model")
        return self.store

    def start_api(self) -> str:
        api = self.config.api
        server = make_server(api.listen, self, max_body_bytes=api.max_body_bytes,
                             max_connections=api.max_connections, idle_timeout_s=api.idle_timeout_s)
        self._server = server
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                               name="api", daemon=True)
        self._server_thread.start()
        self.url = bound_url(server, api.listen)
        return self.url

    def run(self, model_path: str | Path | None = None, ready: Callable[[str], None] | None = None) -> int:
        """:meth:`start`, call ``ready(url)``, then serve until SIGTERM or SIGINT (graceful stop); SIGHUP
        reloads. The handlers are in place before start-up, so an early SIGTERM also stops cleanly.
        Main thread only."""
        events: queue.SimpleQueue[int] = queue.SimpleQueue()  # put() is safe in a signal handler
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, lambda s, _f: events.put(s)) for sig in wanted}
        try:
            url = self.start(model_path)
            from lepton_edge.agent.mqtt_link import start_mqtt

            self.mqtt = start_mqtt(self)
            if ready is not None:
                ready(url)
            while True:
                try:
                    sig = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if sig == signal.SIGHUP:
                    self.reload()
                else:
                    log.info("stopping (%s)", signal.Signals(sig).name)
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
        return 0

    def stop(self) -> None:
        link, self.mqtt = self.mqtt, None
        if link is not None:
            link.stop()  # says "offline (shutdown)" before the API goes away
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            if not server.drain(DRAIN_TIMEOUT_S):
                log.warning("requests still running after %.0f s; closing anyway", DRAIN_TIMEOUT_S)
            server.server_close()
        if self.store is not None:
            self.store.close()
            self.store = None

    # --- models ----------------------------------------------------------------------------------

    def _policy(self) -> InstallPolicy:
        sec = self.config.security
        return InstallPolicy(trusted_keys=sec.trusted_keys, require_signature=sec.require_signature,
                             profile=self.config.device.profile, backend=self.backend)

    def _require_store(self) -> ModelStore:
        if self.store is None:
            raise BadInput("the model store is not open")
        return self.store

    def install_path(self, path: Path) -> str:
        """Install an artifact directory (or, unsigned setups only, a bare .tflite) through the store's checks."""
        store = self._require_store()
        if path.is_dir():
            manifest_bytes, signature, model_bytes = read_artifact_files(path)
        elif path.is_file():
            if self.config.security.require_signature:
                raise BadInput(f"{path}: a bare .tflite carries no signature; install a signed artifact directory "
                               "or set [security] require_signature = false")
            manifest_bytes, model_bytes = bare_model_artifact(path.read_bytes(), path, self.config.device.profile,
                                                              self.backend, store.state().confirmed_version or 0)
            signature = None
        else:
            raise BadInput(f"{path}: no such artifact directory or model file")
        log.info("installing %s", path)
        slot = store.install(manifest_bytes, signature, model_bytes, source=str(path))
        log.info("%s is in slot %s", path, slot)
        return slot

    def deploy_path(self, path: Path) -> HealthReport | None:
        """Install and activate; CheckFailed when the health check fails (the store has rolled back)."""
        slot = self.install_path(path)
        state = self._require_store().state()
        if slot == state.active and not state.pending:
            log.info("slot %s already holds this model, confirmed", slot)
            return None
        report = self.activate(slot)
        if not report.ok:
            raise CheckFailed(f"{path}: health check failed ({report.reason}); rolled back")
        return report

    def activate(self, slot: str, *, staged: bool = False) -> HealthReport:
        """Activate ``slot``, check its health, then confirm and serve it, or roll back. ``staged``: a
        staged rollout's model, confirmed without raising the version floor (the store holds the slot
        active before, for a revert, until :meth:`confirm_floor`)."""
        store = self._require_store()
        with self._activation:
            log.info("activating slot %s%s", slot, " (staged: the version floor stays)" if staged else "")
            return self._check_then_switch(slot, store.activate(slot), staged=staged)

    def revert(self, sha256: str | None) -> HealthReport | None:
        """Go back from a held staged model to the one before it (:meth:`ModelStore.revert`), with the
        same health check as an activation. None: done without one (no model now, or already there).
        BadInput or CheckFailed when the store refuses; a failed health check returns its report (the
        staged model serves again, still held)."""
        store = self._require_store()
        with self._activation:
            back = store.revert(sha256)
            if back is None:
                if self._served is not None:
                    log.info("reverted to no model (there was none before the staged update)")
                self._set_served(None)
                return None
            if not back.pending:
                log.info("revert: slot %s runs model %s already", back.slot, back.artifact.sha256[:12])
                return None
            log.info("reverting to slot %s (%s v%d)", back.slot, back.artifact.name, back.artifact.version)
            return self._check_then_switch(back.slot, back.artifact, staged=False)

    def confirm_floor(self, sha256: str) -> None:
        """A staged rollout completed: raise the version floor to the running model's (BadInput when the
        device runs another model)."""
        store = self._require_store()
        with self._activation:
            store.confirm_floor(sha256)
            log.info("model %s confirmed; the version floor is %s now", sha256[:12], store.state().confirmed_version)

    def _check_then_switch(self, slot: str, artifact: Artifact, *, staged: bool) -> HealthReport:
        """The health check of the store's pending ``slot``, then confirm and serve it, or roll back."""
        store = self._require_store()
        health = self.config.health
        budget = health.latency_budget_ms
        try:
            candidate = self._load(artifact, slot, candidate=True)
        except LeptonError as exc:
            report = HealthReport(False, f"cannot load: {exc}", "load", False, None, budget)
        else:
            report = check_health(candidate.runner, artifact.manifest, default_budget_ms=budget, runs=health.runs)
            if report.ok:
                report = self._accept(candidate, report, staged=staged)
        self.last_health = report
        if report.ok:
            store.confirm(hold=staged)
            self._set_served(candidate)
            self.metrics.count_activation("confirmed")
            log.info("slot %s healthy (%s, %.3f ms); confirmed %s v%d%s", slot, report.source,
                     report.latency_ms or 0.0, artifact.name, artifact.version,
                     " (staged: the version floor stays)" if staged else "")
            return report
        back = store.rollback()
        self.metrics.count_activation("rolled_back")
        log.warning("slot %s failed its health check (%s); rolled back to %s", slot, report.reason,
                    back or "no model")
        self._after_rollback(back)
        return report

    def load_active(self) -> None:
        """Serve the store's active model (verified again); serve nothing when there is none or it fails."""
        store = self._require_store()
        try:
            active = store.active()
            served = None if active is None else self._load(active.artifact, active.slot)
        except LeptonError as exc:
            log.error("cannot serve the active model: %s", exc)
            served = None
        self._set_served(served)

    # --- what a gateway does differently (lepton_edge.gateway.daemon.Gateway overrides these) ---------

    def _resolve_backend(self, config: AgentConfig) -> str:
        return choose_backend(config.runtime.backend, config.device.profile.runtime)

    def _load(self, artifact: Artifact, slot: str, *, candidate: bool = False) -> ServedModel:
        """Open a verified artifact in this process's interpreter (``candidate``: it is yet to pass its
        health check)."""
        return load_served(artifact, slot, backend=self.backend, profile=self.config.device.profile,
                           threads=self.config.runtime.threads)

    def _accept(self, candidate: ServedModel, report: HealthReport, *, staged: bool) -> HealthReport:
        """The candidate passed its health check; last word before it is confirmed (``staged``: without
        raising the version floor)."""
        return report

    def _after_rollback(self, back: str | None) -> None:
        """The candidate never replaced the served model here: only a crash-recovered store needs loading."""
        if self._served is None or self._served.slot != back:
            self.load_active()

    def check_update(self, manifest: dict[str, Any]) -> None:
        """Refuse, from its manifest alone, an update this device cannot run (before any byte is fetched)."""
        check_ram(manifest, manifest["model"]["size"], self.config.device.profile, self.backend, "update model")

    def offline_reason(self) -> str | None:
        """Why the device cannot take work although this process is connected (None: it can)."""
        return None

    def software(self) -> str:
        return f"lepton-edge {__version__}"

    def telemetry_extra(self) -> dict[str, Any]:
        """Figures only this kind of fleet member has, added to each telemetry sample."""
        served = self._served
        arena = None if served is None else served.runner.arena_bytes
        return {"arena_bytes": arena} if isinstance(arena, int) else {}

    def _set_served(self, served: ServedModel | None) -> None:
        # The old runner is not closed here: requests that already hold it finish on it.
        self._served = served
        if served is None:
            self.metrics.clear_model()
        else:
            self.metrics.set_model(served.name, served.version, served.sha256, served.slot, served.runner.backend,
                                   served.runner.arena_bytes)

    def reload(self) -> bool:
        """Re-read the configuration file (SIGHUP). A broken file changes nothing."""
        old = self.config
        try:
            new = load_config(old.path)
            backend = self._resolve_backend(new)
        except LeptonError as exc:
            log.error("reload: %s; keeping the current configuration", exc)
            return False
        if new.api.listen != old.api.listen or new.store_dir != old.store_dir:
            log.warning("reload: [api] listen and [store] dir take effect at the next start")
            new = replace(new, api=replace(new.api, listen=old.api.listen), store_dir=old.store_dir)
        if new.api.max_connections != old.api.max_connections:
            log.warning("reload: [api] max_connections takes effect at the next start")
        runtime_changed = (backend != self.backend or new.runtime.threads != old.runtime.threads
                           or new.device.profile != old.device.profile)
        self.config, self.backend = new, backend
        if self.store is not None:
            self.store.policy = self._policy()
        if self._server is not None:
            self._server.max_body_bytes = new.api.max_body_bytes
            self._server.idle_timeout_s = new.api.idle_timeout_s
        if runtime_changed and self._served is not None:
            with self._activation:
                self.load_active()
        log.info("configuration reloaded")
        return True

    # --- what the API calls ----------------------------------------------------------------------

    def current(self) -> ServedModel | None:
        return self._served

    def infer(self, served: ServedModelView,
              arrays: list[np.ndarray[Any, Any]]) -> tuple[list[np.ndarray[Any, Any]], float]:
        outputs, latency_ms = served.runner.run_timed(arrays)
        self.metrics.observe_inference(latency_ms)
        return outputs, latency_ms

    def status(self) -> dict[str, Any]:
        cfg, served, metrics = self.config, self._served, self.metrics
        state = self.store.state() if self.store is not None else None
        runner = served.runner if served is not None else None
        return {
            "device": {"id": cfg.device.id, "fleet": cfg.device.fleet, "profile": cfg.device.profile.name,
                       "tags": list(cfg.device.tags)},
            "model": served.describe() if served is not None else None,
            "slot": served.slot if served is not None else None,
            "backend": self.backend,
            "interpreter": getattr(runner, "package", None) or ("tflite-micro" if self.backend == "tflm" else None),
            "threads": cfg.runtime.threads if self.backend == "litert" else 1,
            "arena_bytes": runner.arena_bytes if runner is not None else None,  # TFLite Micro's fixed arena
            "planned_arena_bytes": artifact_arena_bytes(served.artifact.manifest) if served is not None else None,
            "uptime_s": round(metrics.uptime_s(), 3),
            "inferences": metrics.inference_count,
            "errors": metrics.error_count,
            "latency_ms": metrics.latency_percentiles(),
            "store": None if state is None else {"active": state.active, "pending": state.pending,
                                                 "confirmed_version": state.confirmed_version,
                                                 "held": None if state.held is None
                                                 else {"previous": state.held.previous}},
            "last_health_check": self.last_health.to_dict() if self.last_health is not None else None,
            "agent_version": __version__,
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        served = self._served
        if served is None:
            return 503, {"ok": False, "error": "no model is active"}
        return 200, {"ok": True, "model": served.name, "version": served.version}
