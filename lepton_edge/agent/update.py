"""The device's OTA state machine, without I/O: events in, actions out.

One machine serves every device-side runner of the protocol (the agent, the serial gateway, the
fleet simulator): it decides which blocks to ask for and when, checks what comes back, puts the
bytes in order and walks the states of ``ota/progress``. It reads no clock (``now`` comes with each
event), touches no file and sends nothing: a driver (:class:`lepton_edge.agent.ota.OtaRunner`) does
what the returned actions say, and reports the outcome of the slow ones back as events::

    on_job(job, now)               -> [Admit] | [Resend] | [PublishProgress] for a job already downloading
    on_admitted(job, size, sha256, received, now) / on_refused(job, reason) / on_already_running(job, size)
    on_data(block, now)            -> [WriteBlock..., PublishProgress?, RequestBlock...] | [Verify]
    on_verified(verify, activate) / on_verify_failed(verify, reason)
    on_activated(activate, rollback_reason) / on_activate_failed(activate, reason)
    on_timer(now, connected), on_reconnect(now), on_due(job, offset, now), fail(reason)
    on_command(command, now)       -> [PublishProgress..., RunCommand] | [Resend]
    on_command_done(run, reason)

Commands (:class:`~lepton_edge.mqtt.OtaCommand`, a staged rollout's ``revert`` or ``confirm``) are
answered under their own job id: ``accepted``, ``activating`` (revert only), then ``healthy`` or
``failed`` with the reason. A revert abandons the download in progress (``failed``: its bytes would
otherwise undo the revert when they arrive); a command sent again after it finished gets its last
answer, like a job.

Blocks are asked for ``window`` at a time, paced by ``max_bytes_per_s`` (and ``block_delay_s``, a
simulated slow link) and re-asked after ``request_timeout_s`` and after every reconnect. They are
written strictly in order (a block that arrives early waits in memory), so what a device holds is
always a prefix and a download resumes from it.

Device-side code: standard library and the project's device-side modules.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from lepton_edge.mqtt.messages import BLOCK_OK, REVERT, Block, OtaCommand, OtaJob, OtaState

FINISHED_KEPT = 64  # finished jobs remembered, to answer a job sent again with its last word
TERMINAL_STATES = frozenset({OtaState.HEALTHY, OtaState.ROLLED_BACK, OtaState.FAILED})


@dataclass(frozen=True)
class OtaOptions:
    window: int = 4                      # block requests in flight
    block_size: int | None = None        # None: the job's hint
    request_timeout_s: float = 5.0       # re-ask a block after this long
    progress_interval_s: float = 0.5     # at most one "downloading" report per interval
    max_bytes_per_s: float = 0.0         # 0: as fast as the link goes
    block_delay_s: float = 0.0           # wait this long before each request (a simulated slow link)


# --- actions -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Admit:
    """Run every check that needs no model byte and find what is already held; answer with
    :meth:`UpdateMachine.on_admitted`, :meth:`~UpdateMachine.on_refused` or
    :meth:`~UpdateMachine.on_already_running`. ``replacing``: the job it would replace, if any."""

    job: OtaJob
    block_size: int
    replacing: OtaJob | None


@dataclass(frozen=True)
class RequestBlock:
    """Publish an ``ota/get``; with ``delay_s``, call :meth:`UpdateMachine.on_due` that much later instead."""

    job: str
    offset: int
    length: int
    delay_s: float = 0.0


@dataclass(frozen=True)
class WriteBlock:
    """Append to the partial download (offsets come in order, from what :class:`Admit` found held)."""

    job: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class PublishProgress:
    job: OtaJob | OtaCommand
    state: OtaState
    received: int = 0
    reason: str | None = None


@dataclass(frozen=True)
class Resend:
    """Publish again the last progress of a finished job (the controller may have missed it)."""

    job: str


@dataclass(frozen=True)
class Drop:
    """A download failed before its end: the driver may keep its bytes (to resume) or delete them."""

    job: OtaJob


@dataclass(frozen=True)
class Verify:
    """Check and install the complete download; answer with :meth:`UpdateMachine.on_verified` or
    :meth:`~UpdateMachine.on_verify_failed`."""

    job: OtaJob
    size: int


@dataclass(frozen=True)
class Activate:
    """Run the new model with its health check; answer with :meth:`UpdateMachine.on_activated` or
    :meth:`~UpdateMachine.on_activate_failed`."""

    job: OtaJob
    size: int


@dataclass(frozen=True)
class ModelChanged:
    """The device runs another model, or the old one again: say so in ``status``."""


@dataclass(frozen=True)
class RunCommand:
    """Carry out a revert or a confirm; answer with :meth:`UpdateMachine.on_command_done`."""

    command: OtaCommand


Action = (Admit | RequestBlock | WriteBlock | PublishProgress | Resend | Drop | Verify | Activate | ModelChanged
          | RunCommand)


# --- the machine -------------------------------------------------------------------------------

@dataclass
class Download:
    """The job being downloaded."""

    job: OtaJob
    size: int
    sha_prefix: bytes                                    # the model's first 8 sha256 bytes: each block's
    block_size: int
    received: int                                        # bytes written, in order
    todo: collections.deque[int] = field(default_factory=collections.deque)  # offsets not asked for yet
    outstanding: dict[int, float] = field(default_factory=dict)             # offset -> deadline
    early: dict[int, bytes] = field(default_factory=dict)                   # arrived before their turn
    last_progress: float = 0.0
    not_before: float = 0.0                              # rate limit: no new request before this


class UpdateMachine:
    """One device's OTA state machine; not thread-safe (one thread feeds it)."""

    def __init__(self, options: OtaOptions = OtaOptions()) -> None:
        self.options = options
        self.download: Download | None = None
        self.finished: collections.OrderedDict[str, OtaState] = collections.OrderedDict()

    @property
    def busy(self) -> bool:
        return self.download is not None

    # -- events --
    def on_job(self, job: OtaJob, now: float) -> list[Action]:
        dl = self.download
        if dl is not None and dl.job.job == job.job:
            # Sent again: a controller that took the device over, or one that heard nothing from it. Say
            # where the download is; re-ask nothing (requests that were lost are re-asked at their timeout,
            # or at once after a reconnect): re-asking here fetched blocks already on their way twice.
            return self._report(job, OtaState.DOWNLOADING, dl.received) + self._pump(dl, now)
        if job.job in self.finished:
            return [Resend(job.job)]
        return [Admit(job, self.options.block_size or job.block_size, dl.job if dl is not None else None)]

    def on_refused(self, job: OtaJob, reason: str, *, replaced: bool = False) -> list[Action]:
        """The checks refused ``job``; ``replaced``: the job it was to replace is gone all the same."""
        if replaced:
            self.download = None
        return self._report(job, OtaState.FAILED, 0, reason)

    def on_already_running(self, job: OtaJob, size: int) -> list[Action]:
        return self._report(job, OtaState.HEALTHY, size)

    def on_admitted(self, job: OtaJob, size: int, sha256: str, received: int, now: float) -> list[Action]:
        """The checks passed; ``received`` bytes of the model are held already (a prefix)."""
        block = self.options.block_size or job.block_size
        dl = Download(job, size, bytes.fromhex(sha256[:16]), block, received,
                      collections.deque(range(received, size, block)))
        self.download = dl
        actions = self._report(job, OtaState.ACCEPTED, received) + self._report(job, OtaState.DOWNLOADING, received)
        if received >= size:
            return actions + self._complete(dl)
        return actions + self._pump(dl, now)

    def on_data(self, block: Block, now: float) -> list[Action]:
        dl = self.download
        if dl is None or block.job != dl.job.job:
            return []  # for a job we left behind
        if block.status != BLOCK_OK:
            return self.fail(f"the controller refused block {block.offset}: {block.status_text}")
        if block.sha_prefix != dl.sha_prefix:
            return self.fail("a block belongs to another model (sha256 prefix differs)")
        if block.offset not in dl.outstanding:
            return []  # a duplicate of a block we already have
        expected = min(dl.block_size, dl.size - block.offset)
        if len(block.data) != expected:
            return self.fail(f"block {block.offset} has {len(block.data)} bytes, not {expected}")
        del dl.outstanding[block.offset]
        dl.early[block.offset] = block.data
        actions: list[Action] = []
        while dl.received in dl.early:  # in order only: bytes held are always a prefix
            data = dl.early.pop(dl.received)
            actions.append(WriteBlock(dl.job.job, dl.received, data))
            dl.received += len(data)
        if dl.received >= dl.size:
            return actions + self._complete(dl)
        if now - dl.last_progress >= self.options.progress_interval_s:
            dl.last_progress = now
            actions += self._report(dl.job, OtaState.DOWNLOADING, dl.received)
        return actions + self._pump(dl, now)

    def on_timer(self, now: float, connected: bool) -> list[Action]:
        """Call often (every 0.1 to 0.5 s): re-asks what timed out, and asks for more when the pace allows."""
        dl = self.download
        if dl is None:
            return []
        expired = [o for o, deadline in dl.outstanding.items() if deadline <= now] if connected else []
        return self._ask_again(dl, expired, now) + self._pump(dl, now)

    def on_reconnect(self, now: float) -> list[Action]:
        """What was in flight is probably lost: ask again."""
        dl = self.download
        return [] if dl is None else self._ask_again(dl, list(dl.outstanding), now)

    def on_due(self, job: str, offset: int, now: float) -> list[Action]:
        """A delayed request's time has come (``RequestBlock.delay_s``)."""
        dl = self.download
        if dl is None or dl.job.job != job or offset not in dl.outstanding:
            return []  # done with, or already answered
        return self._ask_again(dl, [offset], now)

    def on_verified(self, step: Verify, *, activate: bool) -> list[Action]:
        """Installed; ``activate`` false: it is the model the device runs and has confirmed already."""
        if not activate:
            return self._report(step.job, OtaState.HEALTHY, step.size)
        return [*self._report(step.job, OtaState.ACTIVATING, step.size), Activate(step.job, step.size)]

    def on_verify_failed(self, step: Verify, reason: str) -> list[Action]:
        return self._report(step.job, OtaState.FAILED, step.size, reason)

    def on_activated(self, step: Activate, rollback_reason: str | None) -> list[Action]:
        """The health check ran: passed (``None``), or failed and the device went back to its old model."""
        if rollback_reason is None:
            return [*self._report(step.job, OtaState.HEALTHY, step.size), ModelChanged()]
        return [*self._report(step.job, OtaState.ROLLED_BACK, step.size, rollback_reason), ModelChanged()]

    def on_activate_failed(self, step: Activate, reason: str) -> list[Action]:
        return self._report(step.job, OtaState.FAILED, step.size, f"cannot activate: {reason}")

    def on_command(self, command: OtaCommand, now: float) -> list[Action]:
        """A revert or a confirm; a revert first abandons the download in progress."""
        if command.job in self.finished:
            return [Resend(command.job)]
        actions: list[Action] = []
        if command.action == REVERT and self.download is not None:
            actions += self.fail(f"abandoned: a revert ({command.job[:8]}) arrived during the download")
        actions += self._report(command, OtaState.ACCEPTED, 0)
        if command.action == REVERT:
            actions += self._report(command, OtaState.ACTIVATING, 0)
        return [*actions, RunCommand(command)]

    def on_command_done(self, step: RunCommand, reason: str | None) -> list[Action]:
        """The command ran: done (``None``), or refused or failed for ``reason``."""
        actions = self._report(step.command, OtaState.HEALTHY if reason is None else OtaState.FAILED, 0, reason)
        return [*actions, ModelChanged()] if step.command.action == REVERT else actions

    def fail(self, reason: str) -> list[Action]:
        """Give up the download in progress (a bad block, an internal error)."""
        dl = self.download
        if dl is None:
            return []
        self.download = None
        return [Drop(dl.job), *self._report(dl.job, OtaState.FAILED, dl.received, reason)]

    # -- internals --
    def _report(self, job: OtaJob | OtaCommand, state: OtaState, received: int,
                reason: str | None = None) -> list[Action]:
        if state in TERMINAL_STATES:
            self.finished[job.job] = state
            self.finished.move_to_end(job.job)
            while len(self.finished) > FINISHED_KEPT:
                self.finished.popitem(last=False)
        return [PublishProgress(job, state, received, reason)]

    def _complete(self, dl: Download) -> list[Action]:
        self.download = None
        return [*self._report(dl.job, OtaState.VERIFYING, dl.size), Verify(dl.job, dl.size)]

    def _pump(self, dl: Download, now: float) -> list[Action]:
        opts = self.options
        actions: list[Action] = []
        while dl.todo and len(dl.outstanding) < opts.window:
            if opts.max_bytes_per_s and now < dl.not_before:
                break  # on_timer asks again when the pace allows
            offset = dl.todo.popleft()
            length = min(dl.block_size, dl.size - offset)
            if opts.block_delay_s > 0:
                dl.outstanding[offset] = now + opts.block_delay_s + opts.request_timeout_s
                actions.append(RequestBlock(dl.job.job, offset, length, opts.block_delay_s))
            else:
                actions += self._ask_again(dl, [offset], now)
            if opts.max_bytes_per_s:
                dl.not_before = max(now, dl.not_before) + length / opts.max_bytes_per_s
        return actions

    def _ask_again(self, dl: Download, offsets: list[int], now: float) -> list[Action]:
        actions: list[Action] = []
        for offset in offsets:
            dl.outstanding[offset] = now + self.options.request_timeout_s
            actions.append(RequestBlock(dl.job.job, offset, min(dl.block_size, dl.size - offset)))
        return actions
