"""MQTT in one place: topic names, payload schemas, broker URLs and the paho-mqtt client factory.

Topics (one prefix per device, ``lepton/v1/<fleet>/<device>/``)::

    status        device -> all     JSON, retained; the Last Will sets it offline
    telemetry     device -> ctrl    JSON, QoS 1
    ota/job       ctrl -> device    JSON: the manifest's exact bytes (base64) and its signature
    ota/get       device -> ctrl    JSON: one block request {job, offset, length}; the device paces
    ota/data      ctrl -> device    binary: a 40-byte header (:data:`BLOCK_HEADER`) then the bytes
    ota/progress  device -> ctrl    JSON: the device's OTA state machine

Every JSON payload carries ``"schema": 1``; decoders accept unknown keys (newer senders) and
raise :class:`PayloadError` on anything they cannot use. Model bytes never travel retained.

Device-side code: standard library and paho-mqtt only (imported when a client is made).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import ssl
import struct
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lepton_edge.errors import BadInput

TOPIC_ROOT = "lepton/v1"
PAYLOAD_SCHEMA = 1
DEFAULT_FLEET = "default"
# Fleet names and device ids are topic levels: no '/', '+', '#', spaces (same rule as the agent's config).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

STATUS, TELEMETRY, OTA_JOB, OTA_GET, OTA_DATA, OTA_PROGRESS = (
    "status", "telemetry", "ota/job", "ota/get", "ota/data", "ota/progress")
KINDS = (STATUS, TELEMETRY, OTA_JOB, OTA_GET, OTA_DATA, OTA_PROGRESS)

# The device's OTA state machine, as reported on ota/progress.
OTA_STATES = ("accepted", "downloading", "verifying", "activating", "healthy", "rolled_back", "failed")
TERMINAL_OTA_STATES = frozenset({"healthy", "rolled_back", "failed"})

DEFAULT_BLOCK_SIZE = 64 * 1024
MAX_BLOCK_SIZE = 1024 * 1024
DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883
PROTOCOLS = ("5", "3.1.1")


class PayloadError(BadInput):
    """A message that does not follow the schema (wrong JSON, missing field, bad header)."""


# --- topics ------------------------------------------------------------------------------------

def check_name(value: str, what: str = "device id") -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise BadInput(f"{what} {value!r}: use 1 to 64 letters, digits, '.', '_' or '-' (it names MQTT topics)")
    return value


@dataclass(frozen=True)
class DeviceTopics:
    """The six topics of one device."""

    fleet: str
    device: str

    def __post_init__(self) -> None:
        check_name(self.fleet, "fleet")
        check_name(self.device, "device id")

    @property
    def prefix(self) -> str:
        return f"{TOPIC_ROOT}/{self.fleet}/{self.device}"

    def topic(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.prefix}/{kind}"

    status = property(lambda self: self.topic(STATUS))
    telemetry = property(lambda self: self.topic(TELEMETRY))
    ota_job = property(lambda self: self.topic(OTA_JOB))
    ota_get = property(lambda self: self.topic(OTA_GET))
    ota_data = property(lambda self: self.topic(OTA_DATA))
    ota_progress = property(lambda self: self.topic(OTA_PROGRESS))


def fleet_filter(fleet: str, kind: str) -> str:
    """The subscription filter for one kind of message from every device of a fleet."""
    check_name(fleet, "fleet")
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{TOPIC_ROOT}/{fleet}/+/{kind}"


@dataclass(frozen=True)
class TopicParts:
    fleet: str
    device: str
    kind: str


def parse_topic(topic: str) -> TopicParts | None:
    """``lepton/v1/F/D/ota/get`` -> TopicParts(F, D, 'ota/get'); None for anything else."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:2]) != TOPIC_ROOT:
        return None
    kind = "/".join(parts[4:])
    if kind not in KINDS or not NAME_PATTERN.match(parts[2]) or not NAME_PATTERN.match(parts[3]):
        return None
    return TopicParts(parts[2], parts[3], kind)


# --- JSON payloads -----------------------------------------------------------------------------

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
                   float(_get(obj, "expires_at", (int, float), what)), float(_get(obj, "issued_at", (int, float), what)))


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


# --- broker URLs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. The password never appears in ``repr`` or :attr:`display_url`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    protocol: str = "5"
    keepalive: int = 60

    @property
    def display_url(self) -> str:
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_broker_url(url: str, *, ca: str | Path | None = None, cert: str | Path | None = None,
                     key: str | Path | None = None, protocol: str = "5", keepalive: int = 60) -> BrokerConfig:
    """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (with ``ca``, ``cert``, ``key``) -> BrokerConfig."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"broker URL {_redact(url)}: {exc}") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BadInput(f"broker URL {_redact(url)}: expected mqtt://[user:pass@]host[:port] or mqtts://...")
    if not parts.hostname:
        raise BadInput(f"broker URL {_redact(url)}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadInput(f"broker URL {_redact(url)}: a broker URL has no path or query")
    tls = parts.scheme == "mqtts"
    if (ca or cert or key) and not tls:
        raise BadInput(f"broker URL {_redact(url)}: --ca, --cert and --key need an mqtts:// URL")
    if key and not cert:
        raise BadInput("--key needs --cert")
    files = {}
    for name, value in (("ca", ca), ("cert", cert), ("key", key)):
        if value is not None:
            path = Path(value).expanduser()
            if not path.is_file():
                raise BadInput(f"--{name} {value}: no such file")
            files[name] = path
    protocol = {"5": "5", "5.0": "5", "v5": "5", "3.1.1": "3.1.1", "311": "3.1.1", "v311": "3.1.1"}.get(str(protocol), "")
    if not protocol:
        raise BadInput("MQTT protocol must be 5 or 3.1.1")
    if not 5 <= keepalive <= 65535:
        raise BadInput(f"keepalive {keepalive}: must be 5 to 65535 seconds")
    return BrokerConfig(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls,
                        unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password is not None else None,
                        files.get("ca"), files.get("cert"), files.get("key"), protocol, keepalive)


def _redact(url: str) -> str:
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


# --- the paho client ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class SessionOptions:
    """Connection settings that are not about where the broker is."""

    clean_start: bool = True
    session_expiry_s: int | None = None   # MQTT 5 only: keep the session (and queued QoS 1) this long
    max_inflight: int = 20                # our outgoing QoS 1 messages awaiting PUBACK
    max_queued: int = 0                   # more outgoing QoS 1 messages kept while offline (0: no limit)
    connect_timeout_s: float = 5.0
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0


def tls_context(config: BrokerConfig) -> ssl.SSLContext:
    """Verify the broker against ``ca`` (the system's CAs without it); present a client cert if given."""
    try:
        ctx = ssl.create_default_context(cafile=str(config.ca) if config.ca else None)
        if config.cert:
            ctx.load_cert_chain(str(config.cert), str(config.key) if config.key else None)
    except (ssl.SSLError, OSError) as exc:
        raise BadInput(f"TLS files: {exc}") from None
    return ctx


def make_paho_client(config: BrokerConfig, client_id: str, *, will: Will | None = None,
                     session: SessionOptions = SessionOptions()) -> Any:
    """A configured ``paho.mqtt.client.Client`` (not connected: :class:`lepton_edge.mqtt_client.MqttClient`
    drives it). MQTT 5 by default, 3.1.1 by ``config.protocol``; callbacks use API version 2."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    v5 = config.protocol == "5"
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                         clean_session=None if v5 else session.clean_start)
    if config.username is not None:
        client.username_pw_set(config.username, config.password)
    if config.tls:
        client.tls_set_context(tls_context(config))
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    client.reconnect_delay_set(max(1, int(session.min_backoff_s)), max(1, int(session.max_backoff_s)))
    client.max_inflight_messages_set(session.max_inflight)
    client.max_queued_messages_set(session.max_queued)
    client.connect_timeout = session.connect_timeout_s
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)
        if session.session_expiry_s:
            properties.SessionExpiryInterval = session.session_expiry_s
        client.connect_async(config.host, config.port, config.keepalive, clean_start=session.clean_start,
                             properties=properties)
    else:
        client.connect_async(config.host, config.port, config.keepalive)
    return client
