"""The controller's rollout thread: it advances every active rollout from the database's state.

Every ``tick_s`` (0.5 s) and for each active rollout it reads the rollout's devices with their jobs'
states, checks the abort criteria (:mod:`lepton_edge.fleet.rollout`, from the updated devices'
telemetry), releases the wave that is due, and sends the revert or confirm commands an abort, a
completion or a cancel calls for. Nothing it needs lives only in memory: a wave's jobs are written to
``rollout_devices`` in the transaction that creates them, so a controller restarted in the middle of
a rollout carries on from the database and never gives a device a second job in the same rollout
(the telemetry windows the criteria use are rebuilt from the stored rows).

The HTTP threads call :meth:`RolloutDriver.create`, :meth:`~RolloutDriver.action` and the views; one
lock serialises them with the tick.

Replicas: exactly one replica drives a rollout, the holder of its lease (``rollouts.owner`` and
``lease_until``, by the database's clock). Each tick claims, in one UPDATE, the active rollouts whose
lease is free, expired or its own (renewing it for ``LEASE_S``) and drives only those: a dead driver's
rollouts move after the lease runs out plus a tick. A pause, resume or cancel through any replica's API
changes the row only if its state is still the one read (compare-and-set), and every state change the
driver makes is conditional the same way, so neither overwrites the other; the lease holder acts on
the new state at its next tick.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from lepton_edge.errors import BadInput
from lepton_edge.fleet.rollout import (
    ABORTED,
    ABORTING,
    CANARY,
    CANCELLED,
    CHECKED_STATES,
    COMPLETED,
    DONE_JOB_STATES,
    ENDED_STATES,
    FAILED_JOB_STATES,
    FINISHING,
    MIN_BASELINE_S,
    PAUSED,
    RELEASING_STATES,
    ROLLING,
    UNFINISHED_JOB_STATES,
    Abort,
    Released,
    RolloutParams,
    Schedule,
    UpdatedDevice,
    canary_size,
    device_phase,
    evaluate,
    min_done,
    next_wave,
    releasing_state,
    rollout_order,
    settled_at,
    summarize,
)
from lepton_edge.fleet.store import CONFIRM, PENDING, REVERT, FleetDB, JobRow, NotFound, StoredArtifact, unique_targets


class _JobOptions(Protocol):
    @property
    def default_expires_s(self) -> float: ...
    @property
    def block_size(self) -> int: ...


class RolloutHost(Protocol):
    """What the driver needs of :class:`lepton_edge.fleet.controller.Controller` (a Protocol, so that the
    two modules do not import each other)."""

    @property
    def db(self) -> FleetDB: ...
    @property
    def options(self) -> _JobOptions: ...

    def check_artifact_files(self, art: StoredArtifact) -> tuple[bytes, bytes | None]: ...
    def activate_jobs(self, art: StoredArtifact, jobs: list[JobRow], superseded: Iterable[str]) -> int: ...
    def drop_jobs(self, job_ids: Iterable[str]) -> None: ...
    def withdraw_unsent(self, job_ids: Iterable[str]) -> list[str]: ...
    @property
    def replica_id(self) -> str: ...

log = logging.getLogger("lepton_edge.fleet.rollout")

# Rollouts a selected device must not be in already: they may still send it a job or a command.
BUSY_STATES = frozenset(CHECKED_STATES | {FINISHING, ABORTING})
LEASE_S = 5.0  # a rollout's lease: renewed every tick by its driver, free for another replica after this


@dataclass
class _Window:
    """One updated device's telemetry since it became healthy, and its p99 baseline before its job."""

    healthy_at: float
    inferences: list[float] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    p99_after: list[float] = field(default_factory=list)
    p99_before: list[float] = field(default_factory=list)

    def add(self, payload: str, *, after: bool) -> None:
        try:
            values = json.loads(payload)
        except ValueError:
            return
        if not isinstance(values, dict):
            return
        p99 = _number(values.get("latency_p99_ms"))
        if not after:
            if p99 is not None:
                self.p99_before.append(p99)
            return
        inferences, errors = _number(values.get("inferences")), _number(values.get("errors"))
        if inferences is not None:
            self.inferences.append(inferences)
        if errors is not None:
            self.errors.append(errors)
        if p99 is not None:
            self.p99_after.append(p99)

    def numbers(self) -> UpdatedDevice:
        return UpdatedDevice(self.inferences, self.errors, self.p99_after, self.p99_before)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Tracker:
    """The telemetry windows of one rollout's updated devices, read incrementally by row id."""

    def __init__(self) -> None:
        self.cursor: int | None = None
        self.windows: dict[str, _Window] = {}

    def update(self, controller: RolloutHost, rollout_id: str, params: RolloutParams,
               members: list[dict[str, Any]]) -> list[UpdatedDevice]:
        db = controller.db
        healthy = {m["device"]: m for m in members if m["job_state"] == "healthy" and m["revert_job"] is None}
        for device in list(self.windows):
            if device not in healthy:
                del self.windows[device]
        if not healthy:
            return []
        if self.cursor is None:
            self.cursor = db.first_telemetry_id(min(m["job_updated"] for m in healthy.values()))
        for device, m in healthy.items():
            if device in self.windows:
                continue
            w = self.windows[device] = _Window(m["job_updated"])
            sent = m["job_sent_at"] or m["released_at"] or m["job_updated"]
            for r in db.telemetry_window(device, sent - max(params.soak_s, MIN_BASELINE_S), sent):
                w.add(r["payload"], after=False)
            for r in db.telemetry_window(device, w.healthy_at, max_id=self.cursor):
                w.add(r["payload"], after=True)
        while True:
            rows = db.telemetry_since(rollout_id, self.cursor)
            for r in rows:
                self.cursor = r["id"]
                window = self.windows.get(r["device"])
                if window is not None and r["received"] >= window.healthy_at:
                    window.add(r["payload"], after=True)
            if len(rows) < 20000:
                break
        return [w.numbers() for w in self.windows.values()]


class RolloutDriver:
    """Creates rollouts, advances them (a thread of its own), and renders their JSON."""

    def __init__(self, controller: RolloutHost, tick_s: float = 0.5) -> None:
        self.controller, self.tick_s = controller, tick_s
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._trackers: dict[str, _Tracker] = {}
        self._warned: set[str] = set()

    @property
    def db(self) -> FleetDB:
        return self.controller.db

    # -- lifecycle --
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fleet-rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self.tick_s):
            try:
                self.tick(time.time())
            except Exception:  # the next tick tries again; a rollout must not stop the thread
                log.exception("rollouts: a tick failed")

    def tick(self, now: float) -> None:
        """Advance once every active rollout whose lease this replica holds or can take."""
        with self._lock:
            if not self.db.rollout_rows(active=True):
                self._trackers.clear()
                return
            mine = self.db.claim_rollouts(self.controller.replica_id, LEASE_S)
            for rollout_id in set(self._trackers) - mine:  # driven elsewhere now: its windows go stale
                del self._trackers[rollout_id]
            for row in self.db.rollout_rows(active=True):
                if row["id"] not in mine:
                    continue
                try:
                    self._advance(row, now)
                except Exception:
                    log.exception("rollout %s: could not advance", row["id"])

    def _holds(self, rollout_id: str) -> bool:
        """Whether this replica holds (or could just take) the rollout's lease."""
        return rollout_id in self.db.claim_rollouts(self.controller.replica_id, LEASE_S, rollout_id)

    # -- the API (HTTP threads) --
    def create(self, artifact_id: str, devices: list[str], params: RolloutParams) -> dict[str, Any]:
        art = self.db.uploaded_artifact(artifact_id)
        params.check()
        devices = unique_targets(devices, "rollout")
        self.controller.check_artifact_files(art)
        with self._lock:
            busy = self.db.rollouts_of(devices, BUSY_STATES)
            if busy:
                device, other = next(iter(busy.items()))
                raise BadInput(f"{len(busy)} selected device(s) ({device}, ...) are in rollout {other}, which is "
                               "still running: wait for it or cancel it first")
            rollout_id = uuid.uuid4().hex[:16]
            now = time.time()
            order = rollout_order(devices)
            state = CANARY if canary_size(params, len(order)) else ROLLING
            self.db.insert_rollout(rollout_id, art.id, order, params.as_dict(), state, now,
                                   owner=self.controller.replica_id, lease_s=LEASE_S)
            log.info("rollout %s: %s version %d to %d device(s), %s", rollout_id, art.name, art.version,
                     len(order), "canary first" if state == CANARY else "no canary")
            (row,) = self.db.rollout_rows(rollout_id)
            self._advance(row, now)
            return self.view(rollout_id)

    def action(self, rollout_id: str, action: str) -> dict[str, Any]:
        with self._lock:
            row = self._row(rollout_id)
            state, now = row["state"], time.time()
            if action == "pause":
                if state in RELEASING_STATES:
                    if not self.db.update_rollout(rollout_id, now, expect=state, state=PAUSED, paused_from=state):
                        return self.action(rollout_id, action)  # its driver moved it on meanwhile: look again
                    log.info("rollout %s: paused", rollout_id)
                elif state != PAUSED:
                    raise BadInput(f"rollout {rollout_id} is {state}: only a rollout releasing waves can be paused")
            elif action == "resume":
                if state == PAUSED:
                    if not self.db.update_rollout(rollout_id, now, expect=state,
                                                  state=row["paused_from"] or ROLLING, paused_from=None):
                        return self.action(rollout_id, action)
                    log.info("rollout %s: resumed", rollout_id)
                    if self._holds(rollout_id):  # else its driver (another replica) acts at its next tick
                        self._advance(self._row(rollout_id), now)
                elif state not in RELEASING_STATES:
                    raise BadInput(f"rollout {rollout_id} is {state}: only a paused rollout can be resumed")
            elif action == "cancel":
                if state in CHECKED_STATES:
                    if not self.db.update_rollout(rollout_id, now, expect=state, state=CANCELLED, paused_from=None):
                        return self.action(rollout_id, action)
                    self._supersede_unsent(row, self.db.rollout_members(rollout_id), "the rollout was cancelled")
                    log.info("rollout %s: cancelled", rollout_id)
                    if self._holds(rollout_id):
                        self._advance(self._row(rollout_id), now)
                elif state != CANCELLED:
                    raise BadInput(f"rollout {rollout_id} is {state}: only a running or paused rollout can be "
                                   "cancelled")
            else:
                raise BadInput(f"unknown rollout action {action!r}: use pause, resume or cancel")
            return self.view(rollout_id)

    def view(self, rollout_id: str) -> dict[str, Any]:
        return self._json(self._row(rollout_id), with_devices=True)

    def views(self) -> list[dict[str, Any]]:
        return [self._json(row, with_devices=False) for row in self.db.rollout_rows()]

    def _row(self, rollout_id: str) -> dict[str, Any]:
        rows = self.db.rollout_rows(rollout_id) if isinstance(rollout_id, str) else []
        if not rows:
            raise NotFound(f"rollout {str(rollout_id)[:80]!r}: no such rollout")
        return rows[0]

    # -- advancing one rollout --
    def _advance(self, row: dict[str, Any], now: float) -> None:
        rollout_id, state = row["id"], row["state"]
        params = RolloutParams.from_dict(row["params"])
        members = self.db.rollout_members(rollout_id)
        if state in CHECKED_STATES:
            abort = self._criteria(row, params, members)
            if abort is not None:
                if not self.db.update_rollout(rollout_id, now, expect=state, state=ABORTING, abort=abort.as_dict(),
                                              paused_from=None):
                    return  # a pause or cancel through another replica came first: the next tick sees it
                log.warning("rollout %s: aborted on %s: %s", rollout_id, abort.criterion, abort.text)
                self._trackers.pop(rollout_id, None)
                self._revert(row, members, now)
                return
        if state in RELEASING_STATES:
            schedule = self._schedule(params, members)
            due = next_wave(params, schedule, now)
            if due is not None:
                self._release(row, params, members, *due, now)
                members = self.db.rollout_members(rollout_id)
                schedule = self._schedule(params, members)
            new_state = releasing_state(schedule, now)
            if new_state != state:
                if not self.db.update_rollout(rollout_id, now, expect=state, state=new_state):
                    return
                log.info("rollout %s: %s", rollout_id, new_state)
                state = new_state
        if state == FINISHING and self._confirm(row, members, now):
            if self.db.update_rollout(rollout_id, now, expect=state, state=COMPLETED, active=False):
                log.info("rollout %s: completed", rollout_id)
        elif state == ABORTING and self._revert(row, members, now):
            if self.db.update_rollout(rollout_id, now, expect=state, state=ABORTED, active=False):
                log.info("rollout %s: aborted; every revert is over", rollout_id)
        elif state == CANCELLED and self._confirm(row, members, now):
            if self.db.update_rollout(rollout_id, now, expect=state, active=False):
                log.info("rollout %s: cancelled; every job is over", rollout_id)
        if state in ENDED_STATES or not row["active"]:
            self._trackers.pop(rollout_id, None)

    def _criteria(self, row: dict[str, Any], params: RolloutParams, members: list[dict[str, Any]]) -> Abort | None:
        done = [m for m in members if m["job"] and m["job_state"] in DONE_JOB_STATES]
        failed = sum(1 for m in done if m["job_state"] in FAILED_JOB_STATES)
        updated: list[UpdatedDevice] = []
        if params.max_error_rate is not None or params.max_p99_increase_pct is not None:
            tracker = self._trackers.setdefault(row["id"], _Tracker())
            updated = tracker.update(self.controller, row["id"], params, members)
        return evaluate(params, done=len(done), failed=failed, needed=min_done(params, len(members)),
                        updated=updated)

    @staticmethod
    def _schedule(params: RolloutParams, members: list[dict[str, Any]]) -> Schedule:
        released = [m for m in members if m["job"]]
        waves = [m["wave"] for m in released]
        last_wave = max(waves, default=-1)
        last_at = max((m["released_at"] for m in released if m["wave"] == last_wave), default=None)

        def group(ms: list[dict[str, Any]]) -> list[Released]:
            return [Released(m["wave"] == 0, m["job_state"],
                             m["job_updated"] if m["job_state"] == "healthy" else None,
                             m["job_updated"] if m["job_state"] not in UNFINISHED_JOB_STATES else None) for m in ms]
        canary = canary_size(params, len(members))
        canary_members = [m for m in released if m["wave"] == 0]
        return Schedule(len(members), canary, len(released), last_wave, last_at,
                        settled_at(group(canary_members), params.soak_s) if canary_members else None,
                        settled_at(group(released), params.soak_s) if released else None)

    def _release(self, row: dict[str, Any], params: RolloutParams, members: list[dict[str, Any]], wave: int,
                 count: int, now: float) -> None:
        art = self._artifact(row)
        if art is None:
            return
        free = [m["device"] for m in members if m["job"] is None][:count]
        c = self.controller
        expires_s = params.expires_s or c.options.default_expires_s
        _dep, jobs, superseded = self.db.release_wave(row["id"], wave, free, art, now + expires_s,
                                                      c.options.block_size, now)
        sent = c.activate_jobs(art, jobs, superseded)
        log.info("rollout %s: wave %d%s released to %d device(s), %d online now", row["id"], wave,
                 " (canary)" if wave == 0 else "", len(jobs), sent)

    def _artifact(self, row: dict[str, Any]) -> StoredArtifact | None:
        art = self.db.artifact(row["artifact"])
        try:
            if art is None:
                raise BadInput(f"artifact {row['artifact']} is gone from the database")
            self.controller.check_artifact_files(art)
        except BadInput as exc:
            if row["id"] not in self._warned:
                self._warned.add(row["id"])
                log.error("rollout %s: cannot send jobs: %s", row["id"], exc)
            return None
        return art

    def _supersede_unsent(self, row: dict[str, Any], members: list[dict[str, Any]], reason: str) -> None:
        """Supersede install jobs no device has seen (pending in the database, and not sent by this replica)."""
        c = self.controller
        unsent = c.withdraw_unsent([m["job"] for m in members if m["job"] and m["job_state"] == PENDING])
        if unsent:
            self.db.supersede(unsent, reason, time.time())

    def _commands(self, row: dict[str, Any], kind: str, targets: dict[str, str | None], now: float) -> None:
        if not targets:
            return
        art = self.db.artifact(row["artifact"])
        if art is None:
            return
        c = self.controller
        params = RolloutParams.from_dict(row["params"])
        expires_s = params.expires_s or c.options.default_expires_s
        _dep, jobs, superseded = self.db.add_commands(row["id"], kind, targets, art, now + expires_s,
                                                      c.options.block_size, now)
        if jobs:
            sent = c.activate_jobs(art, jobs, superseded)
            log.info("rollout %s: %s sent to %d of %d device(s)", row["id"], kind, sent, len(jobs))

    def _revert(self, row: dict[str, Any], members: list[dict[str, Any]], now: float) -> bool:
        """Send a revert to every device that may run the new model; True once nothing is left to wait for."""
        self._supersede_unsent(row, members, "the rollout aborted")
        members = self.db.rollout_members(row["id"])
        new_sha = row["model_sha256"]
        targets: dict[str, str | None] = {}
        orphans = []
        for m in members:
            if m["job"] is None or m["revert_job"] is not None:
                continue
            state = m["job_state"]
            touched = (state == "healthy" or state in UNFINISHED_JOB_STATES
                       or (m["running_sha256"] == new_sha and state in ("expired", "superseded")))
            if not touched:
                continue
            if m["prev_known"] and m["prev_sha256"] != new_sha:
                targets[m["device"]] = m["prev_sha256"]
            elif state in UNFINISHED_JOB_STATES:
                orphans.append(m["job"])  # no known model to go back to: at least stop the download
        if orphans:
            self.controller.drop_jobs(self.db.supersede(orphans, "the rollout aborted", now))
        self._commands(row, REVERT, targets, now)
        if targets or orphans:
            members = self.db.rollout_members(row["id"])
        return all((m["job_state"] is None or m["job_state"] not in UNFINISHED_JOB_STATES)
                   and (m["revert_state"] is None or m["revert_state"] not in UNFINISHED_JOB_STATES)
                   for m in members)

    def _confirm(self, row: dict[str, Any], members: list[dict[str, Any]], now: float) -> bool:
        """Confirm every device healthy on the new model; True once every job of the rollout is over."""
        targets: dict[str, str | None] = {m["device"]: row["model_sha256"] for m in members
                                          if m["job_state"] == "healthy" and m["confirm_job"] is None
                                          and m["revert_job"] is None}
        self._commands(row, CONFIRM, targets, now)
        if targets:
            members = self.db.rollout_members(row["id"])
        return all((m["job_state"] is None or m["job_state"] not in UNFINISHED_JOB_STATES)
                   and (m["confirm_state"] is None or m["confirm_state"] not in UNFINISHED_JOB_STATES)
                   for m in members)

    # -- the rollout JSON --
    def _json(self, row: dict[str, Any], *, with_devices: bool) -> dict[str, Any]:
        members = self.db.rollout_members(row["id"])
        ended = row["state"] in ENDED_STATES
        phases = [device_phase(m["job_state"] if m["job"] else None,
                               m["revert_state"] if m["revert_job"] else None,
                               m["confirm_state"] if m["confirm_job"] else None, ended=ended) for m in members]
        waves: dict[int, dict[str, Any]] = {}
        for m, phase in zip(members, phases, strict=True):
            if m["wave"] is None:
                continue
            w = waves.setdefault(m["wave"], {"wave": m["wave"], "canary": m["wave"] == 0, "devices": 0,
                                             "released_at": m["released_at"], "states": Counter()})
            w["devices"] += 1
            w["released_at"] = min(w["released_at"], m["released_at"])
            w["states"][phase] += 1
        out: dict[str, Any] = {
            "rollout": row["id"], "artifact": row["artifact"], "name": row["name"], "version": row["version"],
            "model_sha256": row["model_sha256"], "state": row["state"], "active": bool(row["active"]),
            "created": row["created"], "updated": row["updated"], "params": row["params"], "abort": row["abort"],
            "waves": [{**w, "states": dict(w["states"])} for _, w in sorted(waves.items())],
            "summary": summarize(phases, sum(1 for m in members if m["job"])),
        }
        if with_devices:
            out["devices"] = [_device_json(m, phase) for m, phase in zip(members, phases, strict=True)]
        return out


def _device_json(m: dict[str, Any], phase: str) -> dict[str, Any]:
    command = None
    for kind in (REVERT, CONFIRM):
        if m[f"{kind}_job"]:
            command = {"action": kind, "job": m[f"{kind}_job"], "state": m[f"{kind}_state"],
                       "reason": m[f"{kind}_reason"]}
    previous = None
    if m["prev_known"] and m["prev_sha256"] is not None:
        previous = {"name": m["prev_name"], "version": m["prev_version"], "sha256": m["prev_sha256"]}
    return {"device": m["device"], "wave": m["wave"], "phase": phase, "job": m["job"], "state": m["job_state"],
            "reason": m["job_reason"], "previous": previous, "command": command}
