"""The A/B model store: two slots and an atomically switched active pointer.

On disk (``[store] dir``)::

    state.json            {"schema": 1, "active": "a"|"b"|null, "pending": bool,
                           "fallback": "a"|"b"|null, "confirmed_version": int|null,
                           "held": null | {"previous": "a"|"b"|null}}      (no "held": null)
    slots/a/, slots/b/    model.tflite, manifest.json (the exact signed bytes), manifest.sig (absent if unsigned)
    partial/<key>/        a download in progress: manifest.json, manifest.sig, model.part
    lock                  flock()ed by the one process that owns the store

API (what the agent and the OTA client call; every method is thread-safe)::

    store = ModelStore(dir, policy)          # locks the store, finishes or undoes what a crash interrupted
    slot = store.install(manifest_bytes, signature, model_bytes)
        # verify signature, then size and sha256, then version >= confirmed, then fits the profile and
        # runtime (policy.py); write the INACTIVE slot as a whole directory; return its name. A model
        # identical (name, version, sha256) to the active one returns the active slot and writes nothing.
    store.activate(slot)     # re-verify the slot, then point ``active`` at it with pending = true
    store.confirm()          # the health check passed: pending = false, confirmed_version = its version
    store.confirm(hold=True) # the same for a staged rollout's model: the version floor stays where it was
                             # and the slot active before is held as the revert target
    store.rollback()         # the health check failed: back to the slot that was active before
    store.confirm_floor(sha256)  # the rollout completed: raise the floor to the held model's version
    store.revert(sha256)     # the rollout aborted: back to the held slot (pending its health check, then
                             # confirm() or rollback()), or with None to no model when there was none
    store.active()           # ActiveModel(slot, artifact (verified), pending) or None
    store.state()            # StoreState, for status and telemetry

Resumable downloads (OTA)::

    part = store.open_partial(manifest_bytes, signature)   # verifies the manifest before any byte
    part.received                                           # bytes already on disk: resume from here
    part.write(offset, block)                               # pwrite + fdatasync
    slot = store.commit_partial(part)                       # the same checks as install(), then cleans up

The health check itself lives in the agent (:meth:`lepton_edge.agent.daemon.Agent.activate`), which
calls ``activate``, loads and checks the model, then ``confirm`` or ``rollback``.

Crash safety (power loss or SIGKILL at any instruction):

* ``state.json`` is the only commit point, replaced by ``atomic_write`` (temporary file, fsync,
  rename, fsync of the directory): after a crash it is the old state or the new one.
* ``install`` writes only the slot that ``state.json`` does not name as active, through
  ``atomic_directory`` (staged beside it, files fsynced, renamed into place, directory fsynced): a
  crash leaves that slot old, new or absent (plus staging leftovers, removed when the store opens),
  never half written, and never touches the active slot. It is refused while a model is pending,
  because the other slot is then the rollback target.
* ``activate`` verifies the slot before writing the pointer, so ``active`` only ever names a complete,
  verified slot. A store that opens with ``pending = true`` belongs to a process that died before its
  health check finished (the lock proves no other process owns it): it rolls back to ``fallback``, the
  last confirmed slot, which nothing could have overwritten meanwhile.
* ``confirmed_version`` only grows, and every install and activation checks against it.

Staged activations (a rollout's install, ``confirm(hold=True)``): ``held`` names the slot that was
active before (``previous``; null when there was no model), so that the rollout can still go back
to it. The hold ends with ``confirm_floor`` (the rollout completed), a finished ``revert``, or an
install that overwrites the previous slot (the hold is dropped in ``state.json`` before the slot is
touched). A revert re-verifies the previous slot as it is on disk now (signature against today's
trusted keys, size and sha256 of the model, version at or above the floor), names it by its
model's sha256, then activates it pending the agent's health check: while a revert is pending,
``held`` stays set and ``fallback`` is the staged model, so a failed check or a crash goes back to
the staged model with the hold intact. docs/REVERT-SECURITY.md has the argument.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lepton_edge.agent.policy import InstallPolicy, check_fits, check_version
from lepton_edge.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    SIGNATURE_FILE,
    Artifact,
    load_artifact,
    parse_manifest,
    verify_manifest,
    verify_model,
)
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fsio import atomic_directory, atomic_write_text

SLOTS = ("a", "b")
STATE_FILE = "state.json"
STATE_SCHEMA = 1
PARTIAL_FILE = "model.part"


@dataclass(frozen=True)
class Held:
    """A staged activation passed its health check; the version floor was not raised."""

    previous: str | None  # the slot active before it (the revert target); None: there was no model


@dataclass(frozen=True)
class StoreState:
    active: str | None = None
    pending: bool = False
    fallback: str | None = None  # the slot to go back to while ``pending``
    confirmed_version: int | None = None
    held: Held | None = None     # set while a staged model awaits confirm_floor() or revert()

    def to_json(self) -> str:
        return json.dumps({"schema": STATE_SCHEMA, **asdict(self)}, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class ActiveModel:
    slot: str
    artifact: Artifact
    pending: bool


@dataclass(frozen=True)
class PartialDownload:
    """A model being downloaded into ``partial/<key>/``; its manifest is already verified."""

    key: str
    directory: Path
    manifest_bytes: bytes
    signature: bytes | None
    manifest: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.directory / PARTIAL_FILE

    @property
    def size(self) -> int:
        size: int = self.manifest["model"]["size"]
        return size

    @property
    def received(self) -> int:
        """Bytes on disk: where an in-order download resumes."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def write(self, offset: int, data: bytes, *, sync: bool = True) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise BadInput(f"block at {offset}+{len(data)} lies outside the model's {self.size} bytes")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, offset)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)


class ModelStore:
    """Two model slots on disk and the pointer to the active one. See the module docstring."""

    def __init__(self, directory: str | os.PathLike[str], policy: InstallPolicy | None = None) -> None:
        self.dir = Path(directory)
        self.policy = policy or InstallPolicy()
        self._mutex = threading.RLock()
        try:
            (self.dir / "slots").mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BadInput(f"{self.dir}: cannot open the model store ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise BadInput(f"{self.dir}: the model store is in use by another agent") from None
            raise
        #: The slot rolled back from when the store opened on an interrupted activation, else None.
        self.recovered_from: str | None = None
        try:
            self._remove_staging_leftovers()
            self._state = self._read_state()
            if self._state.pending:
                self.recovered_from = self._state.active
                self._rollback()
        except BaseException:
            self.close()
            raise

    # --- reading --------------------------------------------------------------------------------

    def state(self) -> StoreState:
        return self._state

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise BadInput(f"unknown slot {slot!r} (slots are {', '.join(SLOTS)})")
        return self.dir / "slots" / slot

    def slot_artifact(self, slot: str) -> Artifact:
        """The slot's artifact, verified now: signature against the trusted keys, then size and sha256."""
        policy = self.policy
        return load_artifact(self.slot_dir(slot), policy.trusted_keys, require_signature=policy.require_signature)

    def active(self) -> ActiveModel | None:
        with self._mutex:
            state = self._state
            if state.active is None:
                return None
            return ActiveModel(state.active, self.slot_artifact(state.active), state.pending)

    # --- changing -------------------------------------------------------------------------------

    def install(self, manifest_bytes: bytes, signature: bytes | None, model_bytes: bytes, *,
                source: str = "update") -> str:
        """Verify an artifact and write it into the inactive slot; return the slot's name."""
        with self._mutex:
            policy = self.policy
            manifest = verify_manifest(manifest_bytes, signature, policy.trusted_keys,
                                       require_signature=policy.require_signature, source=f"{source} manifest")
            verify_model(model_bytes, manifest, f"{source} model")
            check_version(manifest, self._state.confirmed_version, f"{source} manifest")
            check_fits(manifest, model_bytes, policy, f"{source} model")
            state = self._state
            if state.active is not None and self._same_model(state.active, manifest):
                return state.active
            if state.pending:
                raise BadInput(f"slot {state.active} is pending its health check; confirm or roll back first")
            slot = self._inactive_slot()
            if state.held is not None:  # the revert target is about to be overwritten: no revert after this
                self._write_state(replace(state, held=None))
            with atomic_directory(self.slot_dir(slot), replace=True) as staging:
                (staging / MODEL_FILE).write_bytes(model_bytes)
                (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
                if signature is not None:
                    (staging / SIGNATURE_FILE).write_bytes(signature)
            return slot

    def activate(self, slot: str) -> Artifact:
        """Make ``slot`` the active one, pending its health check; return its verified artifact."""
        with self._mutex:
            state = self._state
            if state.pending:
                raise BadInput(f"slot {state.active} is already pending its health check")
            artifact = self.slot_artifact(slot)
            check_version(artifact.manifest, state.confirmed_version, f"slot {slot}")
            if slot != state.active:
                self._write_state(StoreState(active=slot, pending=True, fallback=state.active,
                                             confirmed_version=state.confirmed_version))
            return artifact

    def confirm(self, *, hold: bool = False) -> None:
        """The pending model passed its health check. ``hold``: a staged rollout's model, so the version
        floor stays and the slot active before is held for a revert. A pending revert ends the hold."""
        with self._mutex:
            state = self._state
            if not state.pending:
                return
            assert state.active is not None  # a pending model is the active one
            if state.held is not None:  # a revert passed: the floor stays, nothing is held any more
                self._write_state(StoreState(active=state.active, confirmed_version=state.confirmed_version))
            elif hold:
                self._write_state(StoreState(active=state.active, confirmed_version=state.confirmed_version,
                                             held=Held(previous=state.fallback)))
            else:
                self._write_state(StoreState(active=state.active,
                                             confirmed_version=self._raised_floor(state.active)))

    def rollback(self) -> str | None:
        """Go back from the pending model to the last confirmed one; return the slot now active."""
        with self._mutex:
            if not self._state.pending:
                raise BadInput("nothing to roll back: no model is pending")
            return self._rollback()

    def confirm_floor(self, sha256: str) -> None:
        """Raise the version floor to the active model's version if its model is ``sha256`` (a staged
        rollout completed); the hold ends. Nothing changes when that is so already. BadInput when the
        device runs another model (or none) or one is pending."""
        with self._mutex:
            state = self._state
            self._refuse_pending(state, "confirm")
            active_sha = self._active_sha256(state)
            if active_sha != sha256:
                raise BadInput(f"cannot confirm model {sha256[:12]}: the device runs "
                               f"{'no model' if active_sha is None else 'model ' + active_sha[:12]}")
            assert state.active is not None
            floor = self._raised_floor(state.active)
            if floor != state.confirmed_version or state.held is not None:
                self._write_state(StoreState(active=state.active, confirmed_version=floor))

    def revert(self, sha256: str | None) -> ActiveModel | None:
        """Go back from a held staged model to the model before it, named by its sha256 (None: there
        was no model; the store then has no active model and this is done).

        Refused (BadInput, CheckFailed) unless a staged model is held and the previous slot still
        holds that model and verifies again: signature against the trusted keys, size and sha256,
        version at or above the floor. On success the previous slot is active and pending: run its
        health check, then :meth:`confirm` or :meth:`rollback` (back to the staged model, still held).
        Already there (no hold, and the active model is ``sha256``, or none for None): returns the
        active model with ``pending`` false, or None, and changes nothing."""
        with self._mutex:
            state = self._state
            self._refuse_pending(state, "revert")
            if state.held is None:
                if self._active_sha256(state) == sha256:
                    return None if state.active is None else ActiveModel(state.active,
                                                                         self.slot_artifact(state.active), False)
                raise BadInput("no staged update is held (none was installed, or it was confirmed or "
                               "replaced since): nothing to revert to")
            previous = state.held.previous
            if previous is None:
                if sha256 is not None:
                    raise BadInput(f"cannot revert to model {sha256[:12]}: the device had no model before "
                                   "the staged update")
                self._write_state(StoreState(confirmed_version=state.confirmed_version))
                return None
            if sha256 is None:
                raise BadInput(f"cannot revert to no model: slot {previous} holds the model from before "
                               "the staged update")
            artifact = self.slot_artifact(previous)  # as it is on disk now, against today's keys
            if artifact.sha256 != sha256:
                raise BadInput(f"cannot revert to model {sha256[:12]}: slot {previous} holds model "
                               f"{artifact.sha256[:12]}")
            check_version(artifact.manifest, state.confirmed_version, f"slot {previous}")
            self._write_state(StoreState(active=previous, pending=True, fallback=state.active,
                                         confirmed_version=state.confirmed_version, held=state.held))
            return ActiveModel(previous, artifact, True)

    # --- resumable downloads -----------------------------------------------------------------------

    def open_partial(self, manifest_bytes: bytes, signature: bytes | None, *,
                     source: str = "update") -> PartialDownload:
        """Verify a manifest and make (or find again) the place its model downloads into."""
        with self._mutex:
            policy = self.policy
            manifest = verify_manifest(manifest_bytes, signature, policy.trusted_keys,
                                       require_signature=policy.require_signature, source=f"{source} manifest")
            check_version(manifest, self._state.confirmed_version, f"{source} manifest")
            size = manifest["model"]["size"]
            if policy.profile is not None and size > policy.profile.flash_budget_bytes:
                raise CheckFailed(f"{source} model: {size} bytes exceed {policy.profile.name}'s flash budget "
                                  f"of {policy.profile.flash_budget_bytes} bytes")
            key = hashlib.sha256(manifest_bytes).hexdigest()[:32]
            directory = self.dir / "partial" / key
            if not directory.is_dir():
                with atomic_directory(directory) as staging:
                    (staging / MANIFEST_FILE).write_bytes(manifest_bytes)
                    if signature is not None:
                        (staging / SIGNATURE_FILE).write_bytes(signature)
                    (staging / PARTIAL_FILE).write_bytes(b"")
            return PartialDownload(key, directory, manifest_bytes, signature, manifest)

    def commit_partial(self, partial: PartialDownload, *, source: str = "update") -> str:
        """Install a finished download (all of :meth:`install`'s checks); a corrupt one is discarded."""
        with self._mutex:
            if self._state.pending:
                raise BadInput(f"slot {self._state.active} is pending its health check; confirm or roll back first")
            try:
                model_bytes = partial.path.read_bytes()
            except FileNotFoundError:
                raise BadInput(f"{source}: download {partial.key} is gone") from None
            try:
                slot = self.install(partial.manifest_bytes, partial.signature, model_bytes, source=source)
            except (BadInput, CheckFailed):
                self.discard_partial(partial)
                raise
            self.discard_partial(partial)
            return slot

    def discard_partial(self, partial: PartialDownload) -> None:
        shutil.rmtree(partial.directory, ignore_errors=True)

    def close(self) -> None:
        with self._mutex:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1

    # --- internals -------------------------------------------------------------------------------

    def _inactive_slot(self) -> str:
        return "b" if self._state.active == "a" else "a"

    def _slot_manifest(self, slot: str) -> dict[str, Any]:
        path = self.slot_dir(slot) / MANIFEST_FILE
        try:
            return parse_manifest(path.read_bytes(), str(path))
        except FileNotFoundError:
            raise BadInput(f"{path}: missing") from None

    def _same_model(self, slot: str, manifest: dict[str, Any]) -> bool:
        try:
            current = self._slot_manifest(slot)
        except BadInput:
            return False
        return (current["name"], current["version"], current["model"]["sha256"]) == \
               (manifest["name"], manifest["version"], manifest["model"]["sha256"])

    def _rollback(self) -> str | None:
        """Back to ``fallback``; a failed revert goes back to the staged model, which stays held."""
        state = self._state
        self._write_state(StoreState(active=state.fallback, confirmed_version=state.confirmed_version,
                                     held=state.held))
        return state.fallback

    def _raised_floor(self, slot: str) -> int:
        version: int = self._slot_manifest(slot)["version"]
        floor = self._state.confirmed_version
        return version if floor is None else max(version, floor)

    def _active_sha256(self, state: StoreState) -> str | None:
        if state.active is None:
            return None
        sha: str = self._slot_manifest(state.active)["model"]["sha256"]
        return sha

    @staticmethod
    def _refuse_pending(state: StoreState, what: str) -> None:
        if state.pending:
            raise BadInput(f"cannot {what} now: slot {state.active} is pending its health check")

    def _write_state(self, state: StoreState) -> None:
        atomic_write_text(self.dir / STATE_FILE, state.to_json())
        self._state = state

    def _read_state(self) -> StoreState:
        path = self.dir / STATE_FILE
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return StoreState()
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadInput(f"{path}: corrupt store state ({exc})") from None
        ok = (isinstance(raw, dict) and raw.get("schema") == STATE_SCHEMA
              and raw.get("active") in (None, *SLOTS) and raw.get("fallback") in (None, *SLOTS)
              and isinstance(raw.get("pending"), bool)
              and (raw.get("confirmed_version") is None
                   or (isinstance(raw["confirmed_version"], int) and not isinstance(raw["confirmed_version"], bool))))
        held_raw = raw.get("held") if isinstance(raw, dict) else None  # absent in stores of older agents
        if held_raw is not None:
            ok = ok and isinstance(held_raw, dict) and held_raw.get("previous") in (None, *SLOTS) \
                and held_raw.get("previous") != (raw["fallback"] if raw["pending"] else raw["active"]) \
                and (not raw["pending"] or held_raw.get("previous") == raw["active"])
        if not ok:
            raise BadInput(f"{path}: corrupt store state")
        return StoreState(active=raw["active"], pending=raw["pending"], fallback=raw["fallback"],
                          confirmed_version=raw["confirmed_version"],
                          held=None if held_raw is None else Held(previous=held_raw["previous"]))

    def _remove_staging_leftovers(self) -> None:
        """Remove what interrupted atomic writes left: ``slots/.a.*.partial``, ``slots/.a.old``,
        ``.state.json.*.tmp``."""
        for parent in (self.dir, self.dir / "slots", self.dir / "partial"):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if not entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
