"""The agent's configuration file (``AGENT.toml``): read, validate, resolve paths.

Every mistake is one :class:`~lepton_edge.errors.BadInput` line naming the file, the section and the
key. Relative paths (store directory, trusted keys, TLS files, a profile ``.toml``) are resolved
against the configuration file's directory, so a config works wherever the agent is started from.

Keys (``examples/agent.toml`` shows them all)::

    [device]    id, fleet, profile                        (required), tags = ["site:berlin", "hw:pi4"]
    [runtime]   backend = "auto"|"tflm"|"litert", threads = 1
    [store]     dir                                       (required)
    [api]       listen = "127.0.0.1:8787" | "[::1]:8787" | "unix:/run/lepton-edge/agent.sock",
                max_body_bytes = 16777216, max_connections = 64, idle_timeout_s = 30
    [health]    latency_budget_ms = 1000, runs = 5
    [security]  require_signature = true, trusted_keys = ["signing.pub" | base64 raw key, ...]
    [mqtt]      broker = "mqtt[s]://[user:pass@]host[:port]" | brokers = ["mqtt://a:1883", "mqtt://b:1883"]
                (a list to fail over between, in that order), ca, cert, key, client_id, keepalive = 60,
                protocol = "5" | "3.1.1", telemetry_interval_s = 10, telemetry_resend_s = 30,
                telemetry_buffer = 360, ota_block_size, ota_max_bytes_per_s
                (optional; validated and kept for the OTA and telemetry client, unused by the agent itself)

Device-side: standard library (``tomli`` on Python 3.10) and the project's own modules.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload
from urllib.parse import urlsplit

from lepton_edge.errors import BadInput
from lepton_edge.mqtt.messages import MAX_TAGS, valid_tag
from lepton_edge.profiles import Profile, load_profile
from lepton_edge.runtime.factory import BACKENDS
from lepton_edge.tomlfile import read_toml

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

DEFAULT_LISTEN = "127.0.0.1:8787"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_LATENCY_BUDGET_MS = 1000.0
# Device ids and fleet names become MQTT topic levels: no '/', '+', '#', spaces.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Listen:
    """Where the local API listens: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def url(self, port: int | None = None) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}"


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    fleet: str
    profile: Profile
    tags: tuple[str, ...] = ()  # the groups a rollout selects by; sent in ``status``


@dataclass(frozen=True)
class RuntimeConfig:
    backend: str = "auto"
    threads: int = 1


@dataclass(frozen=True)
class ApiConfig:
    listen: Listen
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_connections: int = 64
    idle_timeout_s: float = 30.0


@dataclass(frozen=True)
class HealthConfig:
    """The activation health check. A manifest's ``self_test.latency_budget_ms`` wins over the budget here."""

    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS
    runs: int = 5


@dataclass(frozen=True)
class SecurityConfig:
    require_signature: bool
    trusted_keys: tuple[Ed25519PublicKey, ...]
    trusted_key_sources: tuple[str, ...]


@dataclass(frozen=True)
class MqttConfig:
    broker: str                   # the first broker (``broker =``, or the first of ``brokers =``)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    client_id: str | None = None
    keepalive: int = 60
    protocol: str = "5"  # MQTT 5, or "3.1.1" for older brokers
    subscribe_qos: int = 1  # 0 on NATS (its QoS 1 subscriptions are JetStream consumers)
    telemetry_interval_s: float = 10.0
    telemetry_resend_s: float = 30.0  # an unacknowledged record is sent again after this long
    telemetry_buffer: int = 360       # unacknowledged records kept (the oldest dropped first)
    ota_block_size: int | None = None  # None: the controller's hint
    ota_max_bytes_per_s: float = 0.0  # pace downloads on a shared link (0: no limit)
    brokers: tuple[str, ...] = ()  # every broker, in failover order (``broker`` alone when empty)

    def __post_init__(self) -> None:
        if not self.brokers:
            object.__setattr__(self, "brokers", (self.broker,))


@dataclass(frozen=True)
class AgentConfig:
    path: Path
    device: DeviceConfig
    runtime: RuntimeConfig
    store_dir: Path
    api: ApiConfig
    health: HealthConfig
    security: SecurityConfig
    mqtt: MqttConfig | None


_SECTIONS: dict[str, tuple[str, ...]] = {
    "device": ("id", "fleet", "profile", "tags"),
    "runtime": ("backend", "threads"),
    "store": ("dir",),
    "api": ("listen", "max_body_bytes", "max_connections", "idle_timeout_s"),
    "health": ("latency_budget_ms", "runs"),
    "security": ("require_signature", "trusted_keys"),
    "mqtt": ("broker", "brokers", "ca", "cert", "key", "client_id", "keepalive", "protocol", "subscribe_qos",
             "telemetry_interval_s", "telemetry_resend_s", "telemetry_buffer", "ota_block_size", "ota_max_bytes_per_s"),
}
_REQUIRED_SECTIONS = ("device", "store")


class _Reader:
    """Typed access to one table of the config, with errors that name file, section and key."""

    def __init__(self, path: Path, section: str, table: Any) -> None:
        self.path, self.section = path, section
        if not isinstance(table, dict):
            raise BadInput(f"{path}: [{section}] must be a table")
        allowed = _SECTIONS[section]
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise BadInput(f"{path}: unknown key '{key}' in [{section}]{hint}")
        self.table = table

    def bad(self, key: str, expected: str) -> BadInput:
        return BadInput(f"{self.path}: [{self.section}] {key} must be {expected}, got {self.table[key]!r}")

    @overload
    def text(self, key: str, default: str) -> str: ...
    @overload
    def text(self, key: str, *, required: Literal[True]) -> str: ...
    @overload
    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None: ...

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if key not in self.table:
            if required:
                raise BadInput(f"{self.path}: [{self.section}] {key} is missing")
            return default
        value = self.table[key]
        if not isinstance(value, str) or not value.strip():
            raise self.bad(key, "a non-empty string")
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise self.bad(key, f"an integer from {low} to {high}")
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or not low < value <= high):
            raise self.bad(key, f"a number > {low:g} and <= {high:g}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            raise self.bad(key, "true or false")
        return value

    def name(self, key: str) -> str:
        value = self.text(key, required=True)
        if not _NAME.match(value):
            raise self.bad(key, "1 to 64 letters, digits, '.', '_' or '-' (it names MQTT topics)")
        return value

    def tags(self, key: str) -> tuple[str, ...]:
        value = self.table.get(key, [])
        if (not isinstance(value, list) or len(value) > MAX_TAGS
                or not all(isinstance(t, str) and valid_tag(t) for t in value)):
            raise self.bad(key, f"an array of at most {MAX_TAGS} tags of 1 to 64 printable characters without "
                                "spaces (e.g. [\"site:berlin\", \"hw:pi4\"])")
        duplicates = sorted({t for t in value if value.count(t) > 1})
        if duplicates:
            raise BadInput(f"{self.path}: [{self.section}] {key} lists {duplicates[0]!r} more than once")
        return tuple(value)

    def file(self, key: str) -> Path | None:
        value = self.text(key)
        if value is None:
            return None
        resolved = _resolve(self.path, value)
        if not resolved.is_file():
            raise BadInput(f"{self.path}: [{self.section}] {key}: no such file {resolved}")
        return resolved


def _resolve(config_path: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (config_path.parent / p).resolve()


def parse_listen(text: str, config_path: Path | None = None) -> Listen:
    """``host:port``, ``[v6]:port``, ``unix:/path`` or an absolute socket path. Port 0 picks a free port."""
    if text.startswith("unix:") or text.startswith("/"):
        raw = text[5:] if text.startswith("unix:") else text
        if not raw:
            raise BadInput("listen: 'unix:' needs a socket path")
        path = Path(raw).expanduser()
        if not path.is_absolute() and config_path is not None:
            path = (config_path.parent / path).resolve()
        return Listen(path=path)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise BadInput(f"listen {text!r}: expected HOST:PORT, [IPv6]:PORT or unix:/path/to/socket")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadInput(f"listen {text!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise BadInput(f"listen {text!r}: write an IPv6 address in brackets, e.g. [::1]:8787")
    return Listen(host=host, port=int(port_text))


def _trusted_keys(r: _Reader) -> tuple[tuple[Ed25519PublicKey, ...], tuple[str, ...]]:
    from lepton_edge.artifact import load_public_key

    raw = r.table.get("trusted_keys", [])
    if not isinstance(raw, list) or not all(isinstance(k, str) and k.strip() for k in raw):
        raise r.bad("trusted_keys", "an array of PEM file paths or base64 Ed25519 keys")
    keys, sources = [], []
    for entry in raw:
        candidate = _resolve(r.path, entry)
        source = str(candidate) if candidate.is_file() else entry  # else: a base64 raw key
        try:
            keys.append(load_public_key(source))
        except BadInput as exc:
            raise BadInput(f"{r.path}: [security] {exc}") from None
        sources.append(source)
    return tuple(keys), tuple(sources)


def _broker_urls(r: _Reader) -> tuple[str, ...]:
    """``broker = "url"`` or ``brokers = ["url", ...]`` (one of them), each a valid URL, one scheme."""
    if "broker" in r.table and "brokers" in r.table:
        raise BadInput(f"{r.path}: [mqtt] has both broker and brokers; keep one (brokers = [...] for a list)")
    if "brokers" in r.table:
        key, raw = "brokers", r.table["brokers"]
        if not isinstance(raw, list) or not raw or not all(isinstance(u, str) and u.strip() for u in raw):
            raise r.bad("brokers", 'a non-empty array of URLs, e.g. ["mqtt://a:1883", "mqtt://b:1883"]')
        urls = tuple(raw)
    else:
        key, urls = "broker", (r.text("broker", required=True),)
    for broker in urls:
        url = urlsplit(broker)
        if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
            what = "a URL" if key == "broker" else "URLs"
            raise BadInput(f"{r.path}: [mqtt] {key} must be {what} mqtt://[user:pass@]host[:port] or mqtts://..., "
                           f"got {broker!r}")
        try:
            url.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise BadInput(f"{r.path}: [mqtt] {key}: {broker!r} needs a port from 1 to 65535") from None
    if len({urlsplit(u).scheme for u in urls}) > 1:
        raise BadInput(f"{r.path}: [mqtt] brokers are all mqtt:// or all mqtts://, not a mix")
    if len(set(urls)) < len(urls):
        raise BadInput(f"{r.path}: [mqtt] brokers lists a URL twice")
    return urls


def _mqtt(r: _Reader) -> MqttConfig:
    brokers = _broker_urls(r)
    protocol = r.text("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        raise r.bad("protocol", '"5" or "3.1.1"')
    block = r.integer("ota_block_size", 0, 0, 1 << 20)  # 0: the controller's hint
    return MqttConfig(broker=brokers[0], brokers=brokers, ca=r.file("ca"), cert=r.file("cert"), key=r.file("key"),
                      client_id=r.text("client_id"), keepalive=r.integer("keepalive", 60, 5, 3600),
                      protocol=protocol, subscribe_qos=r.integer("subscribe_qos", 1, 0, 1),
                      telemetry_interval_s=r.number("telemetry_interval_s", 10.0, 0.1, 86400.0),
                      telemetry_resend_s=r.number("telemetry_resend_s", 30.0, 0.1, 86400.0),
                      telemetry_buffer=r.integer("telemetry_buffer", 360, 1, 100_000),
                      ota_block_size=block or None,
                      ota_max_bytes_per_s=r.number("ota_max_bytes_per_s", 1.0, 0.0, 1e12)
                      if "ota_max_bytes_per_s" in r.table else 0.0)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent configuration file."""
    cfg_path = Path(path).expanduser().resolve()
    raw = read_toml(cfg_path, "config")
    for section in raw:
        if section not in _SECTIONS:
            close = difflib.get_close_matches(section, list(_SECTIONS), n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            raise BadInput(f"{cfg_path}: unknown section [{section}]{hint}")
    for section in _REQUIRED_SECTIONS:
        if section not in raw:
            raise BadInput(f"{cfg_path}: section [{section}] is missing")
    reader = {name: _Reader(cfg_path, name, raw.get(name, {})) for name in _SECTIONS if name != "mqtt"}

    dev = reader["device"]
    profile_name = dev.text("profile", required=True)
    if profile_name.endswith(".toml"):
        profile_name = str(_resolve(cfg_path, profile_name))
    try:
        profile = load_profile(profile_name)
    except BadInput as exc:
        raise BadInput(f"{cfg_path}: [device] profile: {exc}") from None
    device = DeviceConfig(id=dev.name("id"), fleet=dev.name("fleet"), profile=profile, tags=dev.tags("tags"))

    rt = reader["runtime"]
    backend = rt.text("backend", "auto")
    if backend not in BACKENDS:
        raise rt.bad("backend", " or ".join(f'"{b}"' for b in BACKENDS))
    runtime = RuntimeConfig(backend=backend, threads=rt.integer("threads", 1, 1, 64))

    store_dir = _resolve(cfg_path, reader["store"].text("dir", required=True))

    api_r = reader["api"]
    try:
        listen = parse_listen(api_r.text("listen", DEFAULT_LISTEN), cfg_path)
    except BadInput as exc:
        raise BadInput(f"{cfg_path}: [api] {exc}") from None
    api = ApiConfig(listen=listen,
                    max_body_bytes=api_r.integer("max_body_bytes", DEFAULT_MAX_BODY_BYTES, 1024, 1 << 30),
                    max_connections=api_r.integer("max_connections", 64, 1, 4096),
                    idle_timeout_s=api_r.number("idle_timeout_s", 30.0, 0.0, 3600.0))

    h = reader["health"]
    health = HealthConfig(latency_budget_ms=h.number("latency_budget_ms", DEFAULT_LATENCY_BUDGET_MS, 0.0, 3.6e6),
                          runs=h.integer("runs", 5, 1, 1000))

    sec = reader["security"]
    require = sec.flag("require_signature", True)
    keys, sources = _trusted_keys(sec)
    if require and not keys:
        raise BadInput(f"{cfg_path}: [security] require_signature = true needs at least one entry in trusted_keys")
    security = SecurityConfig(require_signature=require, trusted_keys=keys, trusted_key_sources=sources)

    mqtt = _mqtt(_Reader(cfg_path, "mqtt", raw["mqtt"])) if "mqtt" in raw else None
    return AgentConfig(path=cfg_path, device=device, runtime=runtime, store_dir=store_dir, api=api,
                       health=health, security=security, mqtt=mqtt)
