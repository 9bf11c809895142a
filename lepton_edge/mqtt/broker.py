"""Where and how to connect: broker URLs, TLS, the MQTT protocol version, session options, Last Will.

Device-side code: standard library only.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lepton_edge.errors import BadInput

DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883


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
    versions = {"5": "5", "5.0": "5", "v5": "5", "3.1.1": "3.1.1", "311": "3.1.1", "v311": "3.1.1"}
    protocol = versions.get(str(protocol), "")
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


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us when the connection is lost."""

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
