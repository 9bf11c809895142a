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


MAX_TAGS = 32


def valid_tag(tag: str) -> bool:
    """A device tag (``site:berlin``, ``hw:pi4``): 1 to 64 printable ASCII characters, no spaces."""
    return 1 <= len(tag) <= 64 and all(33 <= ord(c) <= 126 for c in tag)


@dataclass(frozen=True)
class Status:
    """``status`` (retained). ``online`` false comes from the Last Will or a clean shutdown.

    ``tags`` (``[device] tags``: the groups a rollout selects by), ``profile`` (the device profile's
    name) and ``latency_budget_ms`` (the served model's, from its manifest's self-test or the agent's
    ``[health]``) are optional: an older agent sends none of them."""

    online: bool
    model: ModelInfo | None = None
    agent: str | None = None
    ts: float | None = None
    reason: str | None = None
    tags: tuple[str, ...] = ()
    profile: str | None = None
    latency_budget_ms: float | None = None

    def to_bytes(self) -> bytes:
        return encode_json({"state": "online" if self.online else "offline",
                            "model": asdict(self.model) if self.model else None,
                            "agent": self.agent, "ts": self.ts, "reason": self.reason,
                            "tags": list(self.tags), "profile": self.profile,
                            "latency_budget_ms": self.latency_budget_ms})

    @classmethod
    def from_bytes(cls, payload: bytes) -> Status:
        what = "status"
        obj = decode_json(payload, what)
        state = obj.get("state")
        if state not in ("online", "offline"):
            raise PayloadError(f"{what}: field 'state' must be 'online' or 'offline'")
        agent, reason, profile = obj.get("agent"), obj.get("reason"), obj.get("profile")
        tags = obj.get("tags")
        if tags is None:
            tags = []
        if not isinstance(tags, list) or not all(isinstance(t, str) and valid_tag(t) for t in tags) \
                or len(tags) > MAX_TAGS:
            raise PayloadError(f"{what}: field 'tags' must be a list of at most {MAX_TAGS} tags "
                               "(1 to 64 printable characters, no spaces)")
        return cls(state == "online", ModelInfo.from_obj(obj.get("model"), what),
                   agent if isinstance(agent, str) else None, _number(obj, "ts"),
                   reason if isinstance(reason, str) else None, tuple(tags),
                   profile if isinstance(profile, str) else None, _number(obj, "latency_budget_ms"))


def offline_will_payload() -> bytes:
    """The Last Will: fixed at connect time, so it carries no timestamp (the receiver stamps it)."""
    return Status(False, reason="connection lost").to_bytes()


# Telemetry is flat so that it maps onto table columns; every field but seq and ts is optional.
TELEMETRY_FIELDS = ("uptime_s", "model_name", "model_version", "inferences", "inferences_per_s", "errors",
                    "latency_p50_ms", "latency_p99_ms", "latency_max_ms", "arena_bytes", "rss_bytes",
                    "cpu_percent", "temperature_c", "mqtt_inflight", "mqtt_queued", "mqtt_dropped",
                    # records the device's resend buffer dropped unacknowledged (full: oldest first)
                    "telemetry_dropped",
                    # a serial gateway's device (STATS): its arena's high-water marks, its uptime, bad frames
                    "arena_head_bytes", "arena_tail_bytes", "device_uptime_s", "serial_bad_frames")


@dataclass(frozen=True)
class Telemetry:
    """``telemetry``: ``seq`` counts up from 0 at each agent start (gaps show losses); ``boot`` names that
    start (random hex). A sender with a ``boot`` resends a record until a ``telemetry/ack`` names its seq,
    and the controller writes each (device, boot, seq) once: resends and replicas cannot duplicate rows."""

    seq: int
    ts: float
    values: dict[str, Any] = field(default_factory=dict)
    boot: str | None = None

    def to_bytes(self) -> bytes:
        unknown = set(self.values) - set(TELEMETRY_FIELDS)
        if unknown:
            raise ValueError(f"unknown telemetry fields {sorted(unknown)}")
        boot = {} if self.boot is None else {"boot": self.boot}
        return encode_json({"seq": self.seq, "ts": self.ts, **boot, **self.values})

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
        boot = _get(obj, "boot", str, what, optional=True)
        if boot is not None:
            _check_boot(boot, what)
        seq = _get(obj, "seq", int, what)
        if seq < 0:
            raise PayloadError(f"{what}: seq must not be negative")
        return cls(seq, float(_get(obj, "ts", (int, float), what)), values, boot)


BOOT_ID_HEX = 16
MAX_ACKED_SEQS = 1000  # seqs one telemetry/ack may name


def new_boot_id() -> str:
    """A random id for one agent start (telemetry's ``boot``)."""
    return uuid.uuid4().hex[:BOOT_ID_HEX]


def _check_boot(boot: str, what: str) -> None:
    if not 1 <= len(boot) <= 32 or any(ch not in "0123456789abcdef" for ch in boot):
        raise PayloadError(f"{what}: boot must be 1 to 32 lower-case hex digits")


@dataclass(frozen=True)
class TelemetryAck:
    """``telemetry/ack`` (controller -> device, QoS 0): these records of this boot are committed to the
    controller's database; the device stops resending them. A lost ack costs one resend, written once."""

    boot: str
    seqs: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return encode_json({"boot": self.boot, "seqs": list(self.seqs)})

    @classmethod
    def from_bytes(cls, payload: bytes) -> TelemetryAck:
        what = "telemetry ack"
        obj = decode_json(payload, what)
        boot = _get(obj, "boot", str, what)
        _check_boot(boot, what)
        seqs = _get(obj, "seqs", list, what)
        if len(seqs) > MAX_ACKED_SEQS or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                 for n in seqs):
            raise PayloadError(f"{what}: seqs must be at most {MAX_ACKED_SEQS} non-negative integers")
        return cls(boot, tuple(seqs))


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
    staged: bool = False         # a staged rollout's job: keep the version floor until an OtaCommand confirms

    def to_bytes(self) -> bytes:
        return encode_json({"job": self.job, "deployment": self.deployment, "staged": self.staged,
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
                   float(_get(obj, "issued_at", (int, float), what)), obj.get("staged") is True)


REVERT, CONFIRM = "revert", "confirm"
OTA_COMMANDS = (REVERT, CONFIRM)


@dataclass(frozen=True)
class OtaCommand:
    """``ota/job`` with an ``action``: a staged rollout's last word to a device it updated.

    * ``revert``: go back to the model in the other slot. ``sha256`` names it (the model's sha256);
      ``None`` means the device had no model before and goes back to serving none. The device
      accepts it only while it holds its version floor for an unconfirmed staged update, and only if
      that slot still holds that model with its original signed manifest (checked again against its
      trusted keys). No byte is downloaded.
    * ``confirm``: the rollout completed; if the device runs the model ``sha256`` names, it raises its
      version floor to that model's version (MODEL_CONFIRM for a microcontroller behind a gateway).

    The device answers on ``ota/progress`` under ``job`` like for an update: ``accepted``, then
    ``activating`` (revert only), then ``healthy`` (done, or nothing to do) or ``failed`` with the
    reason. A command sent again after it finished gets its last answer again.
    """

    job: str
    deployment: str
    action: str
    sha256: str | None
    issued_at: float

    def to_bytes(self) -> bytes:
        if self.action not in OTA_COMMANDS:
            raise ValueError(f"unknown OTA action {self.action!r}")
        return encode_json({"job": self.job, "deployment": self.deployment, "action": self.action,
                            "sha256": self.sha256, "issued_at": self.issued_at})

    @classmethod
    def from_bytes(cls, payload: bytes) -> OtaCommand:
        return cls.from_obj(decode_json(payload, "ota/job"))

    @classmethod
    def from_obj(cls, obj: dict[str, Any]) -> OtaCommand:
        what = "ota/job"
        job = _get(obj, "job", str, what)
        _check_job_id(job, what)
        action = obj.get("action")
        if action not in OTA_COMMANDS:
            raise PayloadError(f"{what}: unknown action {action!r}")
        sha = obj.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                                or any(c not in "0123456789abcdef" for c in sha)):
            raise PayloadError(f"{what}: field 'sha256' must be 64 lowercase hex digits or null")
        if action == CONFIRM and sha is None:
            raise PayloadError(f"{what}: a confirm names the model's sha256")
        return cls(job, _get(obj, "deployment", str, what), action, sha,
                   float(_get(obj, "issued_at", (int, float), what)))


def parse_ota_message(payload: bytes) -> OtaJob | OtaCommand:
    """What arrives on ``ota/job``: an update (no ``action``) or a command."""
    obj = decode_json(payload, "ota/job")
    if "action" in obj:
        return OtaCommand.from_obj(obj)
    return OtaJob.from_bytes(payload)


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

