"""Message payloads: JSON with a schema version, and the binary ``ota/data`` block.

Every JSON payload carries ``"schema": 1``; decoders accept unknown keys (newer senders) and
raise :class:`PayloadError` on anything they cannot use. Model bytes never travel retained.

Device-side code: standard library only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from lepton_edge.errors import BadInput

PAYLOAD_SCHEMA = 1
DEFAULT_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 1024 * 1024


class OtaState(enum.Enum):
    """The device's OTA state machine, as reported on ``ota/progress`` (the value is the wire string)."""

    ACCEPTED = "accepted"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"
    HEALTHY = "healthy"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


OTA_STATES = tuple(s.value for s in OtaState)
TERMINAL_OTA_STATES = frozenset({OtaState.HEALTHY.value, OtaState.ROLLED_BACK.value, OtaState.FAILED.value})


class PayloadError(BadInput):
    """A message that does not follow the schema (wrong JSON, missing field, bad header)."""


def encode_json(obj: dict[str, Any]) -> bytes:
    return json.dumps({"schema": PAYLOAD_SCHEMA, **obj}, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_json(payload: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise PayloadError(f"{what}: not JSON") from None
    if not isinstance(obj, dict):
        raise PayloadError(f"{what}: not a JSON object")
    if obj.get("schema") != PAYLOAD_SCHEMA:
        raise PayloadError(f"{what}: schema {obj.get('schema')!r} is not {PAYLOAD_SCHEMA}")
    return obj


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str, *, optional: bool = False) -> Any:
    value = obj.get(key)
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise PayloadError(f"{what}: field {key!r} missing or not {names}")
    return value


def _number(obj: dict[str, Any], key: str) -> float | None:
    """An optional finite number (telemetry fields): anything else reads as absent."""
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ModelInfo:
    """Which model a device runs: shown in status, telemetry and progress."""

    name: str
    version: int
    sha256: str
    slot: str | None = None

    @classmethod
    def from_obj(cls, obj: Any, what: str) -> ModelInfo | None:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise PayloadError(f"{what}: field 'model' is not an object")
        slot = obj.get("slot")
        return cls(_get(obj, "name", str, what), _get(obj, "version", int, what), _get(obj, "sha256", str, what),
                   slot if isinstance(slot, str) else None)


@dataclass(frozen=True)
class Status:
    """``status`` (retained). ``online`` false comes from the Last Will or a clean shutdown."""

    online: bool
    model: ModelInfo | None = None
    agent: str | None = None
    ts: float | None = None
    reason: str | None = None

    def to_bytes(self) -> bytes:
        return encode_json({"state": "online" if self.online else "offline",
                            "model": asdict(self.model) if self.model else None,
                            "agent": self.agent, "ts": self.ts, "reason": self.reason})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Status:
        what = "status"
        obj = decode_json(payload, what)
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise PayloadError(f"{what}: field 'state' must be 'online' or 'offline'")
        agent, reason = obj.get("agent"), obj.get("reason")
        return cls(state == "online", ModelInfo.from_obj(obj.get("model"), what),
                   agent if isinstance(agent, str) else None, _number(obj, "ts"),
                   reason if isinstance(reason, str) else None)


def offline_will_payload() -> bytes:
    """The Last Will: fixed at connect time, so it carries no timestamp (the receiver stamps it)."""
    return Status(False, reason="connection lost").to_bytes()


# Telemetry is flat so that it maps onto table columns; every field but seq and ts is optional.
TELEMETRY_FIELDS = ("uptime_s", "model_name", "model_version", "inferences", "inferences_per_s", "errors",
                    "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "arena_bytes", "rss_bytes",
                    "cpu_percent", "temperature_c", "mqtt_inflight", "mqtt_queued", "mqtt_dropped",
                    # a serial gateway's device (STATS): its arena's high-water marks, its uptime, bad frames
                    "arena_head_bytes", "arena_tail_bytes", "device_uptime_s", "serial_bad_frames")


@dataclass(frozen=True)
class Telemetry:
    """``telemetry``: ``seq`` counts up from 0 at each agent start (gaps show losses)."""

    seq: int
    ts: float
    values: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        unknown = set(self.values) - set(TELEMETRY_FIELDS)
        if unknown:
            raise ValueError(f"unknown telemetry fields {sorted(unknown)}")
        return encode_json({"seq": self.seq, "ts": self.ts, **self.values})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Telemetry:
        what = "telemetry"
        obj = decode_json(payload, what)
        values: dict[str, Any] = {}
        for key in TELEMETRY_FIELDS:
            if key == "model_name":
                if isinstance(obj.get(key), str):
                    values[key] = obj[key]
            elif (v := _number(obj, key)) is not None:
                values[key] = v
        return cls(_get(obj, "seq", int, what), float(_get(obj, "ts", (int, float), what)), values)


@dataclass(frozen=True)
class OtaJob:
    """``ota/job``: everything a device needs to check an update before it asks for a byte."""

    job: str
    deployment: str
    manifest_bytes: bytes        # the exact signed bytes: never re-serialised
    signature: bytes | None
    sha256: str                  # the model's, as in the manifest (the device trusts the manifest, not this)
    size: int
    block_size: int
    expires_at: float
    issued_at: float

    def to_bytes(self) -> bytes:
        return encode_json({"job": self.job, "deployment": self.deployment,
                            "manifest_b64": base64.b64encode(self.manifest_bytes).decode("ascii"),
                            "signature_b64": base64.b64encode(self.signature).decode("ascii")
                            if self.signature is not None else None,
                            "sha256": self.sha256, "size": self.size, "block_size": self.block_size,
                            "expires_at": self.expires_at, "issued_at": self.issued_at})

    @classmethod
    def from_bytes(cls, payload: bytes) -> OtaJob:
        what = "ota/job"
        obj = decode_json(payload, what)
        job = _get(obj, "job", str, what)
        _check_job_id(job, what)
        sig = obj.get("signature_b64")
        size, block = _get(obj, "size", int, what), _get(obj, "block_size", int, what)
        if size < 0 or not 1 <= block <= MAX_BLOCK_SIZE:
            raise PayloadError(f"{what}: size or block_size out of range")
        return cls(job, _get(obj, "deployment", str, what), _b64(_get(obj, "manifest_b64", str, what), what),
                   None if sig is None else _b64(_get(obj, "signature_b64", str, what), what),
                   _get(obj, "sha256", str, what), size, block,
                   float(_get(obj, "expires_at", (int, float), what)),
                   float(_get(obj, "issued_at", (int, float), what)))


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadError(f"{what}: bad base64") from None


def _check_job_id(job: str, what: str) -> None:
    if len(job) != 32 or any(c not in "0123456789abcdef" for c in job):
        raise PayloadError(f"{what}: job id {job[:40]!r} is not 32 lowercase hex digits")


@dataclass(frozen=True)
class BlockRequest:
    """``ota/get``: one block. A device keeps several in flight and re-asks after a timeout."""

    job: str
    offset: int
    length: int

    def to_bytes(self) -> bytes:
        return encode_json({"job": self.job, "offset": self.offset, "length": self.length})

    @classmethod
    def from_bytes(cls, payload: bytes) -> BlockRequest:
        what = "ota/get"
        obj = decode_json(payload, what)
        job = _get(obj, "job", str, what)
        _check_job_id(job, what)
        offset, length = _get(obj, "offset", int, what), _get(obj, "length", int, what)
        if offset < 0 or not 1 <= length <= MAX_BLOCK_SIZE:
            raise PayloadError(f"{what}: offset or length out of range")
        return cls(job, offset, length)


# ota/data header, big-endian: magic "LB", header version, status, job id (16 raw bytes of the uuid),
# the first 8 bytes of the model's sha256, offset (u64), length of the data that follows (u32).
BLOCK_HEADER = struct.Struct(">2sBB16s8sQI")
BLOCK_MAGIC, BLOCK_VERSION = b"LB", 1
BLOCK_OK, BLOCK_UNKNOWN_JOB, BLOCK_EXPIRED, BLOCK_BAD_RANGE, BLOCK_UNAVAILABLE = 0, 1, 2, 3, 4
BLOCK_STATUS_TEXT = {BLOCK_OK: "ok", BLOCK_UNKNOWN_JOB: "unknown job", BLOCK_EXPIRED: "job expired",
                     BLOCK_BAD_RANGE: "bad range", BLOCK_UNAVAILABLE: "artifact unavailable"}


@dataclass(frozen=True)
class Block:
    """``ota/data``: a block of model bytes, or (status != 0) a refusal with no data."""

    job: str
    sha_prefix: bytes
    offset: int
    data: bytes
    status: int = BLOCK_OK

    def to_bytes(self) -> bytes:
        return BLOCK_HEADER.pack(BLOCK_MAGIC, BLOCK_VERSION, self.status, bytes.fromhex(self.job),
                                 self.sha_prefix[:8].ljust(8, b"\0"), self.offset, len(self.data)) + self.data

    @classmethod
    def from_bytes(cls, payload: bytes) -> Block:
        what = "ota/data"
        if len(payload) < BLOCK_HEADER.size:
            raise PayloadError(f"{what}: {len(payload)} bytes, shorter than the {BLOCK_HEADER.size}-byte header")
        magic, version, status, job, sha, offset, length = BLOCK_HEADER.unpack_from(payload)
        if magic != BLOCK_MAGIC or version != BLOCK_VERSION:
            raise PayloadError(f"{what}: not a version {BLOCK_VERSION} block header")
        if len(payload) - BLOCK_HEADER.size != length:
            raise PayloadError(f"{what}: header says {length} bytes, {len(payload) - BLOCK_HEADER.size} follow")
        return cls(job.hex(), sha, offset, bytes(payload[BLOCK_HEADER.size:]), status)

    @property
    def status_text(self) -> str:
        return BLOCK_STATUS_TEXT.get(self.status, f"status {self.status}")


@dataclass(frozen=True)
class Progress:
    """``ota/progress``: one step of the device's state machine; ``reason`` says why it failed."""

    job: str
    state: str
    received: int = 0
    total: int = 0
    reason: str | None = None
    model: ModelInfo | None = None
    ts: float | None = None

    def to_bytes(self) -> bytes:
        if self.state not in OTA_STATES:
            raise ValueError(f"unknown OTA state {self.state!r}")
        return encode_json({"job": self.job, "state": self.state, "received": self.received, "total": self.total,
                            "reason": self.reason, "model": asdict(self.model) if self.model else None,
                            "ts": self.ts if self.ts is not None else time.time()})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Progress:
        what = "ota/progress"
        obj = decode_json(payload, what)
        state = _get(obj, "state", str, what)
        if state not in OTA_STATES:
            raise PayloadError(f"{what}: unknown state {state!r}")
        reason = obj.get("reason")
        return cls(_get(obj, "job", str, what), state, int(_number(obj, "received") or 0),
                   int(_number(obj, "total") or 0), reason[:500] if isinstance(reason, str) else None,
                   ModelInfo.from_obj(obj.get("model"), what), _number(obj, "ts"))

