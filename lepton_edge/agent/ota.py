"""The agent's OTA client: jobs from ``ota/job``, blocks over ``ota/get``/``ota/data``, into the model store.

Every check that needs no model bytes runs before the first block is asked for: the signature
against the trusted keys, the version against the confirmed one, the model's size against the flash
budget (:meth:`ModelStore.open_partial`) and the arena against the RAM budget
(``agent.check_update``). Blocks are asked for ``window`` at a time, paced by the device (and by
``max_bytes_per_s`` when set), re-asked after ``request_timeout_s`` and after every reconnect. They
are written in order into the store's partial file (a block that arrives early waits in memory), so
after a disconnect, a restart or a SIGKILL the download resumes from the bytes on disk. Then
:meth:`ModelStore.commit_partial` checks size, sha256 and fit and writes the inactive slot, and
``agent.activate`` runs the health check and confirms or rolls back, while the current model keeps
serving. Each step goes to ``ota/progress``. ``agent`` is a :class:`lepton_edge.agent.mqtt_link.FleetMember`:
the agent, or the serial gateway.

One worker thread owns the download; the MQTT loop thread only hands messages over.

Device-side code: standard library and the project's device-side modules.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from lepton_edge.agent.store import PartialDownload
from lepton_edge.artifact import verify_manifest
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.mqtt import (BLOCK_OK, Block, BlockRequest, DeviceTopics, ModelInfo, OtaJob, PayloadError, Progress)

log = logging.getLogger("lepton_edge.agent.ota")

Publish = Callable[[str, bytes, int, bool], None]


@dataclass(frozen=True)
class OtaOptions:
    window: int = 4                      # block requests in flight
    block_size: int | None = None        # None: the job's hint
    request_timeout_s: float = 5.0       # re-ask a block after this long
    progress_interval_s: float = 0.5     # at most one "downloading" report per interval
    max_bytes_per_s: float = 0.0         # 0: as fast as the link goes


@dataclass
class _Download:
    job: OtaJob
    part: PartialDownload
    block_size: int
    next_write: int                                     # bytes on disk, in order
    todo: collections.deque = field(default_factory=collections.deque)    # offsets not asked for yet
    outstanding: dict[int, float] = field(default_factory=dict)           # offset -> deadline
    early: dict[int, bytes] = field(default_factory=dict)                 # arrived before their turn
    last_progress: float = 0.0
    not_before: float = 0.0                             # rate limit: no new request before this

    @property
    def size(self) -> int:
        return self.part.size


class OtaClient:
    """Runs the OTA state machine on its own thread; ``on_*`` are safe from any thread."""

    def __init__(self, agent: Any, topics: DeviceTopics, publish: Publish, *, connected: Callable[[], bool],
                 model_changed: Callable[[], None], options: OtaOptions = OtaOptions()) -> None:
        self.agent, self.topics, self.options = agent, topics, options
        self._publish, self._connected, self._model_changed = publish, connected, model_changed
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)
        self._dl: _Download | None = None
        self._finished: collections.OrderedDict[str, Progress] = collections.OrderedDict()
        self.requests_sent = 0

    # -- any thread --
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def on_job(self, topic: str, payload: bytes) -> None:
        self._queue.put(("job", payload))

    def on_data(self, topic: str, payload: bytes) -> None:
        self._queue.put(("data", payload))

    def on_reconnect(self) -> None:
        self._queue.put(("reconnect", None))

    @property
    def busy(self) -> bool:
        return self._dl is not None

    # -- the worker --
    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item:
                    kind, payload = item
                    if kind == "job":
                        self._on_job(payload)
                    elif kind == "data":
                        self._on_data(payload)
                    elif kind == "reconnect" and self._dl is not None:
                        self._ask_again(list(self._dl.outstanding))
                self._tick()
            except Exception:  # noqa: BLE001 - the OTA worker must survive anything one message does
                log.exception("OTA: unexpected error")
                dl = self._dl
                if dl is not None:
                    self._fail(dl.job, "internal error in the OTA client", dl.next_write)

    def _progress(self, job: OtaJob, state: str, received: int = 0, reason: str | None = None) -> None:
        served = self.agent.current()
        model = None if served is None else ModelInfo(served.name, served.version, served.sha256, served.slot)
        p = Progress(job.job, state, received, job.size, reason, model, time.time())
        if state in ("healthy", "failed", "rolled_back"):
            self._finished[job.job] = p
            while len(self._finished) > 64:
                self._finished.popitem(last=False)
            log.info("update %s: %s%s", job.job[:8], state, f" ({reason})" if reason else "")
        self._publish(self.topics.ota_progress, p.to_bytes(), 1, False)

    def _fail(self, job: OtaJob, reason: str, received: int = 0) -> None:
        self._dl = None
        self._progress(job, "failed", received, reason)

    def _on_job(self, payload: bytes) -> None:
        try:
            job = OtaJob.from_bytes(payload)
        except PayloadError as exc:
            log.warning("OTA: %s", exc)
            return
        dl = self._dl
        if dl is not None and dl.job.job == job.job:  # sent again (we or the broker reconnected)
            self._ask_again(list(dl.outstanding))
            self._pump(dl)
            return
        if job.job in self._finished:  # the controller may have missed our last word
            self._publish(self.topics.ota_progress, self._finished[job.job].to_bytes(), 1, False)
            return
        store = self.agent.store
        if store is None:
            return self._progress(job, "failed", reason="the model store is not open")
        policy = store.policy
        try:
            manifest = verify_manifest(job.manifest_bytes, job.signature, policy.trusted_keys,
                                       require_signature=policy.require_signature, source="update manifest")
            served = self.agent.current()
            if (served is not None and served.sha256 == manifest["model"]["sha256"]
                    and served.version == manifest["version"] and not store.state().pending):
                return self._progress(job, "healthy", manifest["model"]["size"])
            self.agent.check_update(manifest)  # RAM and the like: what the manifest alone tells
            if dl is not None:  # a newer job replaces the one in progress
                log.info("update %s replaced by %s", dl.job.job[:8], job.job[:8])
                if dl.job.manifest_bytes != job.manifest_bytes:
                    store.discard_partial(dl.part)
                self._dl = None
            part = store.open_partial(job.manifest_bytes, job.signature, source="update")
        except (BadInput, CheckFailed) as exc:
            return self._progress(job, "failed", reason=str(exc))
        received = part.received
        if received > part.size:  # cannot happen with in-order writes; start over rather than trust it
            store.discard_partial(part)
            part, received = store.open_partial(job.manifest_bytes, job.signature, source="update"), 0
        self._progress(job, "accepted", received)
        block = self.options.block_size or job.block_size
        dl = _Download(job, part, block, received, collections.deque(range(received, part.size, block)))
        self._dl = dl
        if received:
            log.info("update %s: resuming at %d of %d bytes", job.job[:8], received, part.size)
        self._progress(job, "downloading", received)
        if received >= part.size:
            return self._finish(dl)
        self._pump(dl)

    def _pump(self, dl: _Download) -> None:
        rate = self.options.max_bytes_per_s
        while dl.todo and len(dl.outstanding) < self.options.window:
            now = time.monotonic()
            if rate and now < dl.not_before:
                return  # _tick asks again when the pace allows
            offset = dl.todo.popleft()
            self._request(dl, offset)
            if rate:
                dl.not_before = max(now, dl.not_before) + min(dl.block_size, dl.size - offset) / rate

    def _request(self, dl: _Download, offset: int) -> None:
        dl.outstanding[offset] = time.monotonic() + self.options.request_timeout_s
        length = min(dl.block_size, dl.size - offset)
        self.requests_sent += 1
        self._publish(self.topics.ota_get, BlockRequest(dl.job.job, offset, length).to_bytes(), 1, False)

    def _ask_again(self, offsets: list[int]) -> None:
        dl = self._dl
        if dl is None:
            return
        for offset in offsets:
            self._request(dl, offset)

    def _tick(self) -> None:
        dl = self._dl
        if dl is None:
            return
        now = time.monotonic()
        if self._connected():
            self._ask_again([o for o, deadline in dl.outstanding.items() if deadline <= now])
        self._pump(dl)

    def _on_data(self, payload: bytes) -> None:
        try:
            block = Block.from_bytes(payload)
        except PayloadError as exc:
            log.warning("OTA: %s", exc)
            return
        dl = self._dl
        if dl is None or block.job != dl.job.job:
            return  # for a job we left behind
        if block.status != BLOCK_OK:
            return self._fail(dl.job, f"the controller refused block {block.offset}: {block.status_text}", dl.next_write)
        if block.sha_prefix != bytes.fromhex(dl.part.manifest["model"]["sha256"][:16]):
            return self._fail(dl.job, "a block belongs to another model (sha256 prefix differs)", dl.next_write)
        if block.offset not in dl.outstanding:
            return  # a duplicate of a block we already have
        expected = min(dl.block_size, dl.size - block.offset)
        if len(block.data) != expected:
            return self._fail(dl.job, f"block {block.offset} has {len(block.data)} bytes, not {expected}",
                              dl.next_write)
        del dl.outstanding[block.offset]
        dl.early[block.offset] = block.data
        while dl.next_write in dl.early:  # in order only: bytes on disk are always a prefix
            data = dl.early.pop(dl.next_write)
            dl.part.write(dl.next_write, data)
            dl.next_write += len(data)
        if dl.next_write >= dl.size:
            return self._finish(dl)
        now = time.monotonic()
        if now - dl.last_progress >= self.options.progress_interval_s:
            dl.last_progress = now
            self._progress(dl.job, "downloading", dl.next_write)
        self._pump(dl)

    def _finish(self, dl: _Download) -> None:
        self._dl = None
        job, store = dl.job, self.agent.store
        self._progress(job, "verifying", dl.size)
        try:
            slot = store.commit_partial(dl.part, source="update")  # size, sha256, version, fit; then the slot
        except (BadInput, CheckFailed) as exc:
            return self._progress(job, "failed", dl.size, str(exc))
        state = store.state()
        if slot == state.active and not state.pending:
            return self._progress(job, "healthy", dl.size)  # it already ran this model
        self._progress(job, "activating", dl.size)
        try:
            report = self.agent.activate(slot)
        except (BadInput, CheckFailed) as exc:
            return self._progress(job, "failed", dl.size, f"cannot activate: {exc}")
        if report.ok:
            self._progress(job, "healthy", dl.size)
        else:
            self._progress(job, "rolled_back", dl.size, f"health check failed: {report.reason}")
        self._model_changed()

