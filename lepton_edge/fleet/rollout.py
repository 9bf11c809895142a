"""Staged rollouts, the policy alone: parameters, device order, wave schedule, device phases and the
abort criteria, all from plain numbers (no database, no MQTT, no clock: ``now`` is passed in).

:mod:`lepton_edge.fleet.rollout_driver` reads the database, asks these functions what to do and does it.
docs/ROLLOUTS.md describes the behaviour for users.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from lepton_edge.errors import BadInput

# Rollout states. The first three release waves; criteria are checked in them and in ``paused``.
CANARY, SOAKING, ROLLING, PAUSED = "canary", "soaking", "rolling", "paused"
FINISHING, COMPLETED, ABORTING, ABORTED, CANCELLED = "finishing", "completed", "aborting", "aborted", "cancelled"
STATES = (CANARY, SOAKING, ROLLING, PAUSED, FINISHING, COMPLETED, ABORTING, ABORTED, CANCELLED)
RELEASING_STATES = frozenset({CANARY, SOAKING, ROLLING})
CHECKED_STATES = RELEASING_STATES | {PAUSED}
ENDED_STATES = frozenset({COMPLETED, ABORTED, CANCELLED})
ACTIONS = ("pause", "resume", "cancel")

# A device's phase in a rollout (the "phase" of the rollout JSON's devices).
PHASES = ("waiting", "updating", "healthy", "failed", "rolled_back", "skipped", "reverting", "reverted",
          "revert_failed", "confirming", "confirmed")
# Install job states (the controller's and the device's) that count as done, and as failed, for max-failures.
FAILED_JOB_STATES = frozenset({"failed", "rolled_back", "expired"})
DONE_JOB_STATES = FAILED_JOB_STATES | {"healthy"}
UNFINISHED_JOB_STATES = frozenset({"pending", "sent", "accepted", "downloading", "verifying", "activating"})

# max-error-rate is judged only once the updated devices have counted this many inferences together:
# one error among the first two inferences is not a rate.
MIN_INFERENCES = 100
MAX_EXPIRES_S = 30 * 24 * 3600  # the longest life of a job or command (deployments, rollouts, fleet serve)
MIN_BASELINE_S = 30.0  # the p99 baseline looks back at least this long before a device's job was sent

CRITERIA = ("max-failures", "max-error-rate", "max-p99-increase")


@dataclass(frozen=True)
class RolloutParams:
    """Every flag of a staged rollout (the field names are the keys of ``POST /v1/rollouts``).

    ``canary`` / ``canary_pct``: the first devices to update (a count, or a percentage of the selection,
    at least one device); ``soak_s``: how long they stay healthy before the waves start; ``rate``:
    devices per minute after the canary, released in waves every ``wave_interval_s``, each ``growth``
    times the one before; limits: ``max_failures_pct`` (once ``min_done`` devices are done; default
    the canary size, else the first wave's), ``max_error_rate`` (a fraction), ``max_p99_increase_pct``;
    ``expires_s``: each wave's jobs' lifetime (default the controller's)."""

    canary: int | None = None
    canary_pct: float | None = None
    soak_s: float = 60.0
    rate: float | None = None
    growth: float = 1.0
    wave_interval_s: float = 60.0
    max_failures_pct: float | None = None
    min_done: int | None = None
    max_error_rate: float | None = None
    max_p99_increase_pct: float | None = None
    expires_s: float | None = None

    def check(self) -> RolloutParams:
        """Raise BadInput naming the first field that makes no sense; return self."""
        def number(name: str, low: float, high: float = math.inf, *, above: bool = False,
                   integer: bool = False) -> None:
            value = getattr(self, name)
            if value is None:
                return
            ok = (not isinstance(value, bool) and isinstance(value, int if integer else (int, float))
                  and math.isfinite(value) and low <= value <= high and not (above and value == low))
            if not ok:
                raise BadInput(f"rollout parameter {name}={value!r} is out of range")
        number("canary", 1, integer=True)
        number("canary_pct", 0, 100, above=True)
        number("soak_s", 0)
        number("rate", 0, above=True)
        number("growth", 1)
        number("wave_interval_s", 0, above=True)
        number("max_failures_pct", 0, 100)
        number("min_done", 1, integer=True)
        number("max_error_rate", 0, 1)
        number("max_p99_increase_pct", 0)
        number("expires_s", 1, MAX_EXPIRES_S)
        for name in ("soak_s", "growth", "wave_interval_s"):
            if getattr(self, name) is None:
                raise BadInput(f"rollout parameter {name} needs a value")
        if self.canary is not None and self.canary_pct is not None:
            raise BadInput("give the canary as a count or a percentage, not both")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> RolloutParams:
        """From :meth:`as_dict` (keys it does not know are ignored: a newer controller's database)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in names})


# --- order and waves ---------------------------------------------------------------------------

def rollout_order(devices: Iterable[str]) -> list[str]:
    """Devices sorted by the sha256 of their id: deterministic, and it spreads names (sites) apart."""
    return sorted(dict.fromkeys(devices), key=lambda d: (hashlib.sha256(d.encode()).hexdigest(), d))


def canary_size(params: RolloutParams, selected: int) -> int:
    """0 without a canary; else at least 1 and at most the selection (a percentage rounds up)."""
    if params.canary is not None:
        return min(selected, params.canary)
    if params.canary_pct is not None:
        return min(selected, max(1, math.ceil(params.canary_pct * selected / 100 - 1e-9)))
    return 0


def wave_size(params: RolloutParams, wave: int, remaining: int) -> int:
    """Devices in wave ``wave`` (>= 1): everything left without a rate, else
    max(1, round(rate * interval / 60 * growth ** (wave - 1))), at most what is left."""
    if params.rate is None:
        return remaining
    try:
        size = params.rate * params.wave_interval_s / 60 * math.pow(params.growth, wave - 1)
    except OverflowError:
        return remaining
    return min(remaining, max(1, round(size))) if math.isfinite(size) else remaining


def min_done(params: RolloutParams, selected: int) -> int:
    """max-failures waits for this many done devices: the flag, else the canary size, else the first wave's."""
    if params.min_done is not None:
        return params.min_done
    return canary_size(params, selected) or wave_size(params, 1, selected) or 1


@dataclass(frozen=True)
class Released:
    """One released device, as the schedule needs it: its install job's state and times."""

    canary: bool
    state: str
    healthy_at: float | None   # when it reported healthy
    ended_at: float | None     # when its job reached a terminal state


def settled_at(devices: Sequence[Released], soak_s: float) -> float | None:
    """When a group of released devices has soaked: every job terminal and the last healthy one healthy
    for ``soak_s``. None while any job is unfinished; with no healthy device, when the last ended."""
    if any(d.state in UNFINISHED_JOB_STATES for d in devices):
        return None
    healthy = [d.healthy_at for d in devices if d.healthy_at is not None]
    if healthy:
        return max(healthy) + soak_s
    return max((d.ended_at or 0.0 for d in devices), default=0.0)


@dataclass(frozen=True)
class Schedule:
    """Where a releasing rollout stands (plain numbers, from the database)."""

    selected: int
    canary: int                       # canary size (0: none)
    released: int                     # devices released so far (the first ones in rollout order)
    last_wave: int                    # highest wave released, -1 before the first
    last_released_at: float | None
    canary_settled_at: float | None   # settled_at over the canary devices (None: not yet)
    all_settled_at: float | None      # settled_at over every released device


def next_wave(params: RolloutParams, s: Schedule, now: float) -> tuple[int, int] | None:
    """The wave due now, as (wave number, device count), or None. Wave 0 is the canary; wave 1 follows
    once the canary has soaked (at once without a canary); every later one ``wave_interval_s`` after
    the one before."""
    remaining = s.selected - s.released
    if remaining <= 0:
        return None
    if s.canary and s.last_wave < 0:
        return 0, min(remaining, s.canary)
    if s.last_wave <= 0:
        if s.canary and (s.canary_settled_at is None or now < s.canary_settled_at):
            return None
        return 1, wave_size(params, 1, remaining)
    if s.last_released_at is not None and now < s.last_released_at + params.wave_interval_s:
        return None
    return s.last_wave + 1, wave_size(params, s.last_wave + 1, remaining)


def releasing_state(s: Schedule, now: float) -> str:
    """canary, soaking (the canary's soak, or the last wave's before the rollout finishes), rolling, or
    finishing (every device released, every job over and soaked)."""
    if s.canary and s.last_wave <= 0 and s.released < s.selected:
        if s.canary_settled_at is None:
            return CANARY
        return SOAKING if now < s.canary_settled_at else ROLLING
    if s.released < s.selected:
        return ROLLING
    if s.all_settled_at is None:
        return ROLLING
    return FINISHING if now >= s.all_settled_at else SOAKING


# --- device phases -----------------------------------------------------------------------------

def device_phase(install: str | None, revert: str | None, confirm: str | None, *, ended: bool) -> str:
    """A device's phase from its install, revert and confirm jobs' states (None: no such job)."""
    if revert is not None:
        if revert in UNFINISHED_JOB_STATES:
            return "reverting"
        return "reverted" if revert == "healthy" else "revert_failed"
    if confirm is not None:
        if confirm in UNFINISHED_JOB_STATES:
            return "confirming"
        return "confirmed" if confirm == "healthy" else "healthy"
    if install is None:
        return "skipped" if ended else "waiting"
    if install in UNFINISHED_JOB_STATES:
        return "updating"
    if install == "healthy":
        return "healthy"
    if install == "rolled_back":
        return "rolled_back"
    if install == "superseded":
        return "skipped"
    return "failed"  # failed, expired


def summarize(phases: Sequence[str], released: int) -> dict[str, int]:
    """The rollout JSON's summary. ``healthy`` counts every device on the new model (confirming and
    confirmed ones too); ``in_progress`` updating and reverting ones; ``released`` is passed in (a
    skipped device may or may not have had a job)."""
    counts = dict.fromkeys(PHASES, 0)
    for p in phases:
        counts[p] = counts.get(p, 0) + 1
    return {"selected": len(phases), "released": released,
            "healthy": counts["healthy"] + counts["confirming"] + counts["confirmed"],
            "failed": counts["failed"], "rolled_back": counts["rolled_back"],
            "in_progress": counts["updating"] + counts["reverting"], "waiting": counts["waiting"],
            "reverted": counts["reverted"], "confirmed": counts["confirmed"], "skipped": counts["skipped"],
            "revert_failed": counts["revert_failed"]}


# --- abort criteria ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Abort:
    """Why a rollout stopped: the criterion is the flag's name (max-failures, ...)."""

    criterion: str
    value: float
    limit: float
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class UpdatedDevice:
    """One device healthy on the new model, in numbers from its telemetry: cumulative counters since it
    became healthy, its p99 latency samples since then and in the baseline window before its job."""

    inferences: Sequence[float] = ()
    errors: Sequence[float] = ()
    p99_after: Sequence[float] = ()
    p99_before: Sequence[float] = ()


def counter_increase(values: Sequence[float]) -> float:
    """What a cumulative counter added over its samples; a decrease is a restart, so the new value is
    the increase since then."""
    total = 0.0
    for prev, cur in itertools.pairwise(values):
        total += cur - prev if cur >= prev else cur
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def failures(params: RolloutParams, done: int, failed: int, needed: int) -> Abort | None:
    """max-failures: failed, rolled back or expired installs over done ones, in percent."""
    limit = params.max_failures_pct
    if limit is None or done < max(1, needed):
        return None
    value = 100.0 * failed / done
    if value <= limit:
        return None
    return Abort("max-failures", round(value, 3), limit,
                 f"{failed} of {done} devices done failed or rolled back ({value:.1f} %), "
                 f"more than the limit of {limit:g} %")


def error_rate(params: RolloutParams, devices: Sequence[UpdatedDevice]) -> Abort | None:
    """max-error-rate: the updated devices' errors over their inferences since they became healthy."""
    limit = params.max_error_rate
    if limit is None:
        return None
    inferences = sum(counter_increase(d.inferences) for d in devices)
    errors = sum(counter_increase(d.errors) for d in devices)
    if inferences < MIN_INFERENCES:
        return None
    value = errors / inferences
    if value <= limit:
        return None
    return Abort("max-error-rate", round(value, 6), limit,
                 f"the updated devices failed {errors:.0f} of {inferences:.0f} inferences ({value:.4f}), "
                 f"more than the limit of {limit:g}")


def p99_increase(params: RolloutParams, devices: Sequence[UpdatedDevice]) -> Abort | None:
    """max-p99-increase: p99 of the updated devices' p99 samples since healthy against p99 of the same
    devices' samples before their job; a device counts with at least 2 samples after and 1 before."""
    limit = params.max_p99_increase_pct
    if limit is None:
        return None
    counted = [d for d in devices if len(d.p99_after) >= 2 and len(d.p99_before) >= 1]
    if not counted:
        return None
    after = percentile([v for d in counted for v in d.p99_after], 99)
    before = percentile([v for d in counted for v in d.p99_before], 99)
    if before <= 0:
        return None
    value = 100.0 * (after / before - 1)
    if value <= limit:
        return None
    return Abort("max-p99-increase", round(value, 3), limit,
                 f"p99 latency of {len(counted)} updated device(s) rose from {before:.2f} ms to {after:.2f} ms "
                 f"(+{value:.1f} %), more than the limit of {limit:g} %")


def evaluate(params: RolloutParams, *, done: int, failed: int, needed: int,
             updated: Sequence[UpdatedDevice]) -> Abort | None:
    """The first criterion that fires (in the order max-failures, max-error-rate, max-p99-increase)."""
    return (failures(params, done, failed, needed) or error_rate(params, updated)
            or p99_increase(params, updated))
