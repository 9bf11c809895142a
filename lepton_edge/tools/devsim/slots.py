"""A simulated device's two model slots: the factory model, updates, staged holds, revert and confirm.

The rules are the agent's model store's (``lepton_edge.agent.store``), without the bytes:

* an update goes into the slot that is not active; a health check that passes makes it active;
* a plain update raises the version floor (``floor``) to the new model's version; a *staged* one
  (``OtaJob.staged``) leaves the floor where it was and *holds*: it remembers the slot it came from
  (``previous``, ``None`` when the device served no model) as the one a ``revert`` may go back to;
* ``revert(sha256)`` goes back to that slot only while held, only if it still holds the model the
  command names, at or above the floor, and (for a downloaded model) only if its manifest still
  verifies against the trusted keys; ``revert(None)`` only if there was no model before;
* ``confirm(sha256)`` raises the floor to the running model's version if it is the one named.

The factory model: every simulated device starts with a built-in version-1 model (``sim-model`` v1,
:data:`FACTORY_BYTES`) in slot ``a``. It was on the device from the start and was never downloaded,
so it has no signed manifest; it counts as a previous model all the same: a revert to its sha256 is
accepted (while held) without a signature check, the way a real board would go back to the model
flashed at the factory as part of its signed firmware image. A model a test hands a device at start
(``SimDevice(model=...)``) is treated the same way.

Pure bookkeeping: no I/O; :class:`lepton_edge.tools.devsim.device.SimDevice` persists it as JSON.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.mqtt import ModelInfo

FACTORY_NAME, FACTORY_VERSION = "sim-model", 1
FACTORY_BYTES = b"lepton-edge simulated device: the factory model, version 1\n" * 64
FACTORY_SHA256 = hashlib.sha256(FACTORY_BYTES).hexdigest()
SLOTS = ("a", "b")


@dataclass(frozen=True)
class SlotModel:
    """What a slot holds. ``manifest_bytes`` is None for a model that was never downloaded (the factory's)."""

    name: str
    version: int
    sha256: str
    manifest_bytes: bytes | None = None
    signature: bytes | None = None
    latency_budget_ms: float | None = None

    @property
    def built_in(self) -> bool:
        return self.manifest_bytes is None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256,
                "manifest_b64": _b64(self.manifest_bytes), "signature_b64": _b64(self.signature),
                "latency_budget_ms": self.latency_budget_ms}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> SlotModel:
        return cls(obj["name"], int(obj["version"]), obj["sha256"], _unb64(obj.get("manifest_b64")),
                   _unb64(obj.get("signature_b64")), obj.get("latency_budget_ms"))


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


FACTORY_MODEL = SlotModel(FACTORY_NAME, FACTORY_VERSION, FACTORY_SHA256)

# Checks a downloaded model's manifest again (signature, trusted keys); raises BadInput or CheckFailed.
Reverify = Callable[[SlotModel], None]


class Slots:
    """Slots ``a`` and ``b``, the active one, the version floor and the staged hold."""

    def __init__(self, initial: SlotModel | None = None, slot: str = "a") -> None:
        self.held: dict[str, SlotModel | None] = dict.fromkeys(SLOTS)
        self.active: str | None = None
        self.floor = -1
        self.staged = False              # the active model came from a staged update, not confirmed yet
        self.previous: str | None = None  # while staged: the slot to go back to (None: there was no model)
        if initial is not None:
            self.held[slot], self.active, self.floor = initial, slot, initial.version

    @property
    def current(self) -> SlotModel | None:
        return None if self.active is None else self.held[self.active]

    def info(self) -> ModelInfo | None:
        m = self.current
        return None if m is None else ModelInfo(m.name, m.version, m.sha256, self.active)

    def spare(self) -> str:
        """The slot an update goes into."""
        return "b" if self.active == "a" else "a"

    def install(self, model: SlotModel) -> str:
        """Write the spare slot. A hold ends here (as in the agent's store): its revert target is gone."""
        slot = self.spare()
        self.staged, self.previous = False, None
        self.held[slot] = model
        return slot

    def activate(self, slot: str, *, staged: bool) -> None:
        """``slot``'s model passed its health check."""
        model = self.held[slot]
        assert model is not None
        before = self.active
        self.active = slot
        if staged:
            self.staged, self.previous = True, before  # a revert goes back to the model it replaced
        else:
            self.floor = max(self.floor, model.version)
            self.staged, self.previous = False, None

    def revert(self, sha256: str | None, reverify: Reverify) -> str | None:
        """Go back to the model a staged update replaced; None when done (or already there), else why not."""
        current = self.current
        if (current.sha256 if current is not None else None) == sha256:
            return None
        if not self.staged:
            return "refused: no unconfirmed staged update to revert"
        if sha256 is None:
            if self.previous is not None:
                return f"refused: the device served a model before this update (slot {self.previous})"
            self.active, self.staged = None, False
            return None
        model = None if self.previous is None else self.held[self.previous]
        if model is None or model.sha256 != sha256:
            return f"refused: the other slot does not hold model {sha256[:16]}"
        if model.version < self.floor:
            return f"refused: version {model.version} is lower than the confirmed version {self.floor}"
        if not model.built_in:
            try:
                reverify(model)
            except (BadInput, CheckFailed) as exc:
                return f"refused: {exc}"
        self.active, self.staged, self.previous = self.previous, False, None
        return None

    def confirm(self, sha256: str) -> str | None:
        """Raise the floor to the running model's version if it is ``sha256``; None when done, else why not."""
        current = self.current
        if current is None or current.sha256 != sha256:
            running = "no model" if current is None else f"model {current.sha256[:16]}"
            return f"not running model {sha256[:16]} (it runs {running})"
        self.floor = max(self.floor, current.version)
        self.staged, self.previous = False, None
        return None

    # -- persistence --
    def as_dict(self) -> dict[str, Any]:
        info = self.info()
        return {"model": None if info is None else info.__dict__, "confirmed_version": self.floor,
                "slots": {k: None if m is None else m.as_dict() for k, m in self.held.items()},
                "active": self.active, "staged": self.staged, "previous": self.previous}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Slots:
        s = cls()
        if "slots" in obj:
            s.held = {k: None if v is None else SlotModel.from_dict(v) for k, v in obj["slots"].items()}
            s.active, s.staged, s.previous = obj.get("active"), bool(obj.get("staged")), obj.get("previous")
        elif obj.get("model"):  # the format before slots: the running model only
            m = obj["model"]
            s.active = m.get("slot") or "a"
            s.held[s.active] = SlotModel(m["name"], m["version"], m["sha256"])
        s.floor = int(obj.get("confirmed_version", -1))
        return s
