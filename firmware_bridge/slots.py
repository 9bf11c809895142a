"""Two model slots on disk for the simulated device, as a board keeps them in flash.

A new model is written whole into the inactive slot, then one small file names the active slot;
both writes are atomic, so a restart at any moment finds the previous model or the new one. The same
file says whether the active model is confirmed, and keeps the highest confirmed version of each
model name (the floor below which no version is taken).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_bridge.kit import atomic_directory, atomic_write_text

SLOT_COUNT = 2
_ACTIVE_FILE = "active.json"
_MODEL = "model.tflite"
_META = "meta.json"
_MANIFEST = "manifest.json"
_SIGNATURE = "manifest.sig"


@dataclass(frozen=True)
class SlotRecord:
    index: int
    model: bytes
    sha256: str
    arena_bytes: int
    name: str = ""
    version: int | None = None
    manifest: bytes | None = None
    signature: bytes | None = None


class SlotStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _slot_dir(self, index: int) -> Path:
        return self.directory / f"slot{index}"

    def _pointer(self) -> dict[str, Any]:
        try:
            value = json.loads((self.directory / _ACTIVE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def active_index(self) -> int | None:
        value = self._pointer().get("active")
        return value if isinstance(value, int) and 0 <= value < SLOT_COUNT else None

    def confirmed(self) -> bool:
        """Whether the active model was confirmed (MODEL_CONFIRM) since it was committed."""
        return self._pointer().get("confirmed") is True

    def floor(self, name: str) -> int | None:
        """The highest confirmed version of models called ``name``: nothing older is taken."""
        value = self._pointer().get("floors", {}).get(name)
        return value if isinstance(value, int) else None

    def read(self, index: int) -> SlotRecord | None:
        """The slot's record if it is whole and its model matches its hash, else None."""
        d = self._slot_dir(index)
        try:
            meta = json.loads((d / _META).read_text())
            model = (d / _MODEL).read_bytes()
            manifest = (d / _MANIFEST).read_bytes() if (d / _MANIFEST).exists() else None
            signature = (d / _SIGNATURE).read_bytes() if (d / _SIGNATURE).exists() else None
        except (OSError, ValueError):
            return None
        if hashlib.sha256(model).hexdigest() != meta.get("sha256"):
            return None
        return SlotRecord(index, model, meta["sha256"], int(meta["arena_bytes"]), meta.get("name", ""),
                          meta.get("version"), manifest, signature)

    def active(self) -> SlotRecord | None:
        index = self.active_index()
        return None if index is None else self.read(index)

    def inactive_index(self) -> int:
        active = self.active_index()
        return 0 if active is None else (active + 1) % SLOT_COUNT

    def write(self, index: int, record: SlotRecord) -> None:
        with atomic_directory(self._slot_dir(index), replace=True) as staging:
            (staging / _MODEL).write_bytes(record.model)
            if record.manifest is not None:
                (staging / _MANIFEST).write_bytes(record.manifest)
            if record.signature is not None:
                (staging / _SIGNATURE).write_bytes(record.signature)
            (staging / _META).write_text(json.dumps({
                "sha256": record.sha256, "size": len(record.model), "arena_bytes": record.arena_bytes,
                "name": record.name, "version": record.version}))

    def activate(self, index: int) -> None:
        """Point at ``index``, unconfirmed (the version floors stay)."""
        self._write_pointer({**self._pointer(), "active": index, "confirmed": False})

    def confirm(self, name: str, version: int | None) -> None:
        """The active model passed the host's checks: it is confirmed, and its version is the floor."""
        pointer = self._pointer()
        floors = dict(pointer.get("floors") or {})
        if version is not None and (floors.get(name) is None or version > floors[name]):
            floors[name] = version
        self._write_pointer({**pointer, "confirmed": True, "floors": floors})

    def _write_pointer(self, pointer: dict[str, Any]) -> None:
        atomic_write_text(self.directory / _ACTIVE_FILE, json.dumps(pointer, sort_keys=True))
