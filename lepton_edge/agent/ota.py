"""OTA on a device: the update machine's actions carried out, and the agent's worker thread.

:class:`lepton_edge.agent.update.UpdateMachine` decides; this module does. :class:`OtaRunner`
carries out its actions on one device: block requests and progress reports go out through
``publish``, the rest goes to an :class:`UpdateTarget`, which holds the bytes, runs the checks and
activates. Two targets exist: :class:`StoreTarget`, the model store of a
:class:`~lepton_edge.agent.member.FleetMember` (the agent, or the serial gateway), and the fleet
simulator's devices (:class:`lepton_edge.tools.devsim.SimDevice`).

For the agent, every check that needs no model bytes runs before the first block is asked for: the
signature against the trusted keys, the version against the confirmed one, the model's size against
the flash budget (:meth:`ModelStore.open_partial`) and the arena against the RAM budget
(``check_update``). Blocks go into the store's partial file, so after a disconnect, a restart or a
SIGKILL the download resumes from the bytes on disk. Then :meth:`ModelStore.commit_partial` checks
size, sha256 and fit and writes the inactive slot, and ``activate`` runs the health check and
confirms or rolls back, while the current model keeps serving.

A staged rollout's job (``OtaJob.staged``) activates without raising the version floor: the store
holds the slot active before until an :class:`~lepton_edge.mqtt.OtaCommand` arrives on the same
``ota/job`` topic, ``confirm`` (raise the floor) or ``revert`` (back to that slot, or to no model),
answered on ``ota/progress`` under the command's job id (:meth:`UpdateMachine.on_command`).

:class:`OtaClient` runs the agent's runner on one worker thread of its own; the MQTT loop thread
only hands messages over.

Device-side code: standard library and the project's device-side modules.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lepton_edge.agent.update import (
    FINISHED_KEPT,
    TERMINAL_STATES,
    Action,
    Activate,
    Admit,
    Drop,
    ModelChanged,
    OtaOptions,
    PublishProgress,
    RequestBlock,
    Resend,
    RunCommand,
    UpdateMachine,
    Verify,
    WriteBlock,
)
from lepton_edge.artifact import verify_manifest
from lepton_edge.errors import BadInput, CheckFailed, LeptonError
from lepton_edge.mqtt import (
    CONFIRM,
    OTA_DATA,
    OTA_JOB,
    REVERT,
    Block,
    BlockRequest,
    DeviceTopics,
    ModelInfo,
    MqttClient,
    OtaCommand,
    OtaJob,
    OtaState,
    Progress,
    Router,
    parse_ota_message,
)

if TYPE_CHECKING:
    from lepton_edge.agent.member import FleetMember
    from lepton_edge.agent.served import ServedModel
    from lepton_edge.agent.store import PartialDownload

log = logging.getLogger("lepton_edge.agent.ota")

Publish = Callable[[str, bytes, int, bool], None]
TICK_S = 0.1  # the agent's worker re-asks timed-out blocks and paces requests at this period


@dataclass(frozen=True)
class Checked:
    """A job that passed every check that needs no model byte."""

    manifest: dict[str, Any]     # verified
    running: bool                # the device runs and has confirmed this model already

    @property
    def size(self) -> int:
        return int(self.manifest["model"]["size"])


class UpdateTarget(Protocol):
    """The I/O of an update on one device. ``check``, ``open``, ``install`` and ``activate`` raise
    BadInput or CheckFailed with the reason the job fails for.

    ``open`` sees the job: a target remembers ``job.staged`` and, when the model then passes its
    health check in ``activate``, leaves its version floor where it was and keeps the model that ran
    before (its slot, or "none") as the revert target. ``revert`` and ``confirm`` carry out an
    :class:`~lepton_edge.mqtt.OtaCommand` (the runner fails the command with a clear reason for a
    target that has neither):

    * ``revert(sha256)``: only while a staged model is held: back to the model before it, which must
      be the one ``sha256`` names (still held, its original signed manifest verifying again against
      the trusted keys, version at or above the floor), with the same health check as an update;
      ``None`` only when there was no model before (then serve none). Returns None when done, or
      when already there (not held, running ``sha256``, or none for None): a command sent again is
      harmless. Else the reason it was refused or failed (a failed health check: the staged model
      serves again, still held).
    * ``confirm(sha256)``: if the device runs ``sha256``, raise the floor to its version and end the
      hold; None when done (or so already), else why not (it runs another model, or none).
    """

    def check(self, job: OtaJob) -> Checked: ...
    def open(self, job: OtaJob, checked: Checked, block_size: int, replacing: OtaJob | None) -> int: ...
    def write(self, offset: int, data: bytes) -> None: ...                   # in order, from what open returned
    def drop(self) -> None: ...                                               # the download failed midway
    def install(self) -> bool: ...                       # verify the whole download; False: it runs it already
    def activate(self) -> str | None: ...                 # health check: None, or why it rolled back
    def reported_model(self, state: OtaState) -> ModelInfo | None: ...        # for the progress report
    def model_changed(self) -> None: ...
    def revert(self, sha256: str | None) -> str | None: ...   # None: done (or already there); else why not
    def confirm(self, sha256: str) -> str | None: ...         # None: floor raised (or already); else why not


class OtaRunner:
    """Feeds one device's :class:`UpdateMachine` and carries out its actions (on the caller's thread).

    ``call_later(delay, fn, *args)`` is needed only with ``OtaOptions.block_delay_s``."""

    def __init__(self, target: UpdateTarget, topics: DeviceTopics, publish: Publish, *,
                 options: OtaOptions = OtaOptions(), call_later: Callable[..., Any] | None = None,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.target, self.topics, self.machine = target, topics, UpdateMachine(options)
        self._publish, self._call_later, self._on_progress = publish, call_later, on_progress
        self._last: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # finished job -> last word
        self.requests_sent = 0

    # -- events --
    def on_job(self, job: OtaJob | OtaCommand) -> None:
        """What came on ``ota/job``: an update, or a command (:func:`parse_ota_message` tells them apart)."""
        if isinstance(job, OtaCommand):
            self.on_command(job)
            return
        self.run(self.machine.on_job(job, time.monotonic()))

    def on_command(self, command: OtaCommand) -> None:
        self.run(self.machine.on_command(command, time.monotonic()))

    def on_data(self, block: Block) -> None:
        self.run(self.machine.on_data(block, time.monotonic()))

    def on_timer(self, connected: bool) -> None:
        self.run(self.machine.on_timer(time.monotonic(), connected))

    def on_reconnect(self) -> None:
        self.run(self.machine.on_reconnect(time.monotonic()))

    def fail(self, reason: str) -> None:
        self.run(self.machine.fail(reason))

    # -- actions --
    def run(self, actions: list[Action]) -> None:
        todo = collections.deque(actions)
        while todo:
            todo.extendleft(reversed(self._do(todo.popleft())))  # what an action leads to comes next

    def _do(self, action: Action) -> list[Action]:
        m, target = self.machine, self.target
        if isinstance(action, RequestBlock):
            if action.delay_s > 0 and self._call_later is not None:
                self._call_later(action.delay_s, self._due, action.job, action.offset)
                return []
            self.requests_sent += 1
            request = BlockRequest(action.job, action.offset, action.length)
            self._publish(self.topics.ota_get, request.to_bytes(), 1, False)
        elif isinstance(action, WriteBlock):
            target.write(action.offset, action.data)
        elif isinstance(action, PublishProgress):
            self._report(action)
        elif isinstance(action, Resend):
            self._publish(self.topics.ota_progress, self._last[action.job], 1, False)
        elif isinstance(action, Admit):
            return self._admit(action)
        elif isinstance(action, Drop):
            target.drop()
        elif isinstance(action, Verify):
            try:
                activate = target.install()
            except (BadInput, CheckFailed) as exc:
                return m.on_verify_failed(action, str(exc))
            return m.on_verified(action, activate=activate)
        elif isinstance(action, Activate):
            try:
                rollback_reason = target.activate()
            except (BadInput, CheckFailed) as exc:
                return m.on_activate_failed(action, str(exc))
            return m.on_activated(action, rollback_reason)
        elif isinstance(action, ModelChanged):
            target.model_changed()
        elif isinstance(action, RunCommand):
            return m.on_command_done(action, self._command(action.command))
        return []

    def _command(self, command: OtaCommand) -> str | None:
        """Run a revert or a confirm on the target: None when done, else why not."""
        name = {REVERT: "revert", CONFIRM: "confirm"}[command.action]
        method = getattr(self.target, name, None)
        if method is None:  # a target written before staged rollouts
            return f"this device cannot {name}: its update target has no {name}()"
        try:
            reason: str | None = method(command.sha256)
        except LeptonError as exc:  # a target should return its reason; a raised one is a reason all the same
            reason = str(exc)
        log.info("%s %s (%s): %s", name, command.job[:8], (command.sha256 or "no model")[:12], reason or "done")
        return reason

    def _admit(self, admit: Admit) -> list[Action]:
        job, m = admit.job, self.machine
        try:
            checked = self.target.check(job)
        except (BadInput, CheckFailed) as exc:
            return m.on_refused(job, str(exc))
        if checked.running:
            return m.on_already_running(job, checked.size)
        try:
            received = self.target.open(job, checked, admit.block_size, admit.replacing)
        except (BadInput, CheckFailed) as exc:
            return m.on_refused(job, str(exc), replaced=admit.replacing is not None)
        return m.on_admitted(job, checked.size, checked.manifest["model"]["sha256"], received, time.monotonic())

    def _due(self, job: str, offset: int) -> None:
        self.run(self.machine.on_due(job, offset, time.monotonic()))

    def _report(self, action: PublishProgress) -> None:
        job, state = action.job, action.state
        model = self.target.reported_model(state)
        total = job.size if isinstance(job, OtaJob) else 0
        p = Progress(job.job, state.value, action.received, total, action.reason, model, time.time())
        payload = p.to_bytes()
        if state in TERMINAL_STATES:
            self._last[job.job] = payload
            self._last.move_to_end(job.job)
            while len(self._last) > FINISHED_KEPT:
                self._last.popitem(last=False)
            log.info("update %s: %s%s", job.job[:8], state.value, f" ({action.reason})" if action.reason else "")
        if self._on_progress is not None:
            self._on_progress(p)
        self._publish(self.topics.ota_progress, payload, 1, False)


def route_ota(client: MqttClient, topics: DeviceTopics, on_job: Callable[[str, OtaJob | OtaCommand], None],
              on_data: Callable[[str, Block], None], *, label: str) -> Router:
    """Subscribe to a device's ``ota/job`` (updates and commands) and ``ota/data``; bad payloads are
    logged as warnings."""
    router = Router(log, label=label, level=logging.WARNING)
    router.on(OTA_JOB, parse_ota_message, on_job)
    router.on(OTA_DATA, Block.from_bytes, on_data)
    router.subscribe(client, topics.topic)
    return router


def model_info(served: ServedModel | None) -> ModelInfo | None:
    """What ``status`` and ``ota/progress`` say about the model a fleet member serves."""
    return None if served is None else ModelInfo(served.name, served.version, served.sha256, served.slot)


class StoreTarget:
    """An update into a fleet member's model store (the agent's, or the serial gateway's)."""

    def __init__(self, member: FleetMember, model_changed: Callable[[], None]) -> None:
        self.member = member
        self._model_changed = model_changed
        self._part: PartialDownload | None = None
        self._slot: str | None = None
        self._staged = False  # the job being downloaded is a staged rollout's

    def _store(self) -> Any:
        store = self.member.store
        if store is None:
            raise BadInput("the model store is not open")
        return store

    def check(self, job: OtaJob) -> Checked:
        store = self._store()
        policy = store.policy
        manifest = verify_manifest(job.manifest_bytes, job.signature, policy.trusted_keys,
                                   require_signature=policy.require_signature, source="update manifest")
        served = self.member.current()
        state = store.state()
        if (served is not None and served.sha256 == manifest["model"]["sha256"]
                and served.version == manifest["version"] and not state.pending):
            if state.held is not None and not job.staged:
                # A plain job for the model a staged rollout holds: healthy means confirmed, as for any plain job.
                self.member.confirm_floor(served.sha256)
            return Checked(manifest, running=True)
        self.member.check_update(manifest)  # RAM and the like: what the manifest alone tells
        return Checked(manifest, running=False)

    def open(self, job: OtaJob, checked: Checked, block_size: int, replacing: OtaJob | None) -> int:
        store = self._store()
        self._staged = job.staged
        if replacing is not None:  # a newer job replaces the one in progress
            log.info("update %s replaced by %s", replacing.job[:8], job.job[:8])
            if self._part is not None and replacing.manifest_bytes != job.manifest_bytes:
                store.discard_partial(self._part)
            self._part = None
        part = store.open_partial(job.manifest_bytes, job.signature, source="update")
        received = part.received
        if received > part.size:  # cannot happen with in-order writes; start over rather than trust it
            store.discard_partial(part)
            part, received = store.open_partial(job.manifest_bytes, job.signature, source="update"), 0
        self._part = part
        if received:
            log.info("update %s: resuming at %d of %d bytes", job.job[:8], received, part.size)
        return int(received)

    def write(self, offset: int, data: bytes) -> None:
        assert self._part is not None
        self._part.write(offset, data)

    def drop(self) -> None:
        self._part = None  # its bytes stay on disk: the same manifest resumes from them

    def install(self) -> bool:
        part, self._part = self._part, None
        assert part is not None
        store = self._store()
        self._slot = store.commit_partial(part, source="update")  # size, sha256, version, fit; then the slot
        state = store.state()
        return not (self._slot == state.active and not state.pending)  # it ran this model already

    def activate(self) -> str | None:
        assert self._slot is not None
        report = self.member.activate(self._slot, staged=self._staged)
        return None if report.ok else f"health check failed: {report.reason}"

    def revert(self, sha256: str | None) -> str | None:
        try:
            report = self.member.revert(sha256)
        except LeptonError as exc:
            return f"revert refused: {exc}"
        if report is None or report.ok:
            return None
        return f"health check failed: {report.reason}; the staged model serves again"

    def confirm(self, sha256: str) -> str | None:
        try:
            self.member.confirm_floor(sha256)
        except LeptonError as exc:
            return f"confirm refused: {exc}"
        return None

    def reported_model(self, state: OtaState) -> ModelInfo | None:
        return model_info(self.member.current())

    def model_changed(self) -> None:
        self._model_changed()


class OtaClient:
    """The agent's OTA: an :class:`OtaRunner` on a :class:`StoreTarget`, run by its own worker thread.
    ``on_*`` are safe from any thread."""

    def __init__(self, agent: FleetMember, topics: DeviceTopics, publish: Publish, *, connected: Callable[[], bool],
                 model_changed: Callable[[], None], options: OtaOptions = OtaOptions()) -> None:
        self.agent, self.topics, self.options = agent, topics, options
        self.runner = OtaRunner(StoreTarget(agent, model_changed), topics, publish, options=options)
        self._connected = connected
        self._queue: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)

    # -- any thread --
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def on_job(self, device: str, job: OtaJob | OtaCommand) -> None:
        self._queue.put(("job", job))

    def on_data(self, device: str, block: Block) -> None:
        self._queue.put(("data", block))

    def on_reconnect(self) -> None:
        self._queue.put(("reconnect", None))

    @property
    def busy(self) -> bool:
        return self.runner.machine.busy

    @property
    def requests_sent(self) -> int:
        return self.runner.requests_sent

    # -- the worker --
    def _run(self) -> None:
        runner = self.runner
        while True:
            try:
                item = self._queue.get(timeout=TICK_S)
            except queue.Empty:
                item = ("tick", None)
            if item is None:
                return
            try:
                kind, message = item
                if kind == "job":
                    runner.on_job(message)
                elif kind == "data":
                    runner.on_data(message)
                elif kind == "reconnect":
                    runner.on_reconnect()
                runner.on_timer(self._connected())
            except Exception:  # the OTA worker must survive anything one message does
                log.exception("OTA: unexpected error")
                runner.fail("internal error in the OTA client")
