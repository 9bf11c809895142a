"""Where and how to connect: broker URLs, TLS, the MQTT protocol version, session options, Last Will.

A :class:`BrokerConfig` names one broker or an ordered list of them (a cluster's nodes, or a
primary and its standbys): :class:`~lepton_edge.mqtt.client.MqttClient` connects to the first that
answers and fails over round robin. The brokers of one list share the scheme (all ``mqtt://`` or
all ``mqtts://``), the TLS files, the protocol and the keepalive; each URL may carry its own
``user:pass@``.

Device-side code: standard library only.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

from lepton_edge.errors import BadInput

DEFAULT_PORT, DEFAULT_TLS_PORT = 1883, 8883


@dataclass(frozen=True)
class BrokerAddress:
    """One broker of a list: where it is and the credentials its URL carries."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. The password never appears in ``repr`` or :attr:`display_url`.

    ``host``, ``port``, ``username`` and ``password`` are the first broker's; ``more`` lists the
    others, tried in turn when the one in use does not answer."""

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
    more: tuple[BrokerAddress, ...] = ()
    subscribe_qos: int = 1  # the highest QoS asked for in subscriptions (0 on NATS: no JetStream consumers)

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        """Every broker of the list, the first one first."""
        return (BrokerAddress(self.host, self.port, self.username, self.password), *self.more)

    def at(self, index: int) -> BrokerConfig:
        """The one broker at ``index`` (modulo the list's length), with the list's shared settings."""
        a = self.addresses[index % len(self.addresses)]
        return replace(self, host=a.host, port=a.port, username=a.username, password=a.password, more=())

    def rotated(self, start: int) -> BrokerConfig:
        """The same list starting at broker ``start`` (modulo its length): spreads clients over the brokers."""
        addresses = self.addresses
        first, *rest = addresses[start % len(addresses):] + addresses[:start % len(addresses)]
        return replace(self, host=first.host, port=first.port, username=first.username, password=first.password,
                       more=tuple(rest))

    @property
    def display_url(self) -> str:
        """``mqtt://host:port`` (the user name, never the password); a list's URLs joined by commas."""
        if self.more:
            return ",".join(self.at(i).display_url for i in range(len(self.addresses)))
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"


def parse_broker_url(url: str | Sequence[str], *, ca: str | Path | None = None, cert: str | Path | None = None,
                     key: str | Path | None = None, protocol: str = "5", keepalive: int = 60,
                     subscribe_qos: int = 1) -> BrokerConfig:
    """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...`` (with ``ca``, ``cert``, ``key``) -> BrokerConfig.

    A list of URLs gives a list of brokers (tried in that order); they must share the scheme."""
    if not isinstance(url, str):
        urls = list(url)
        if not urls:
            raise BadInput("no broker URL given")
        configs = [parse_broker_url(u, ca=ca, cert=cert, key=key, protocol=protocol, keepalive=keepalive,
                                    subscribe_qos=subscribe_qos) for u in urls]
        if len({c.tls for c in configs}) > 1:
            raise BadInput("brokers " + ", ".join(_redact(u) for u in urls)
                           + ": one list is all mqtt:// or all mqtts://, not a mix")
        seen: set[tuple[str, int]] = set()
        for c in configs:
            if (c.host, c.port) in seen:
                raise BadInput(f"broker {c.display_url} is listed twice")
            seen.add((c.host, c.port))
        return replace(configs[0], more=tuple(c.addresses[0] for c in configs[1:]))
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
    if subscribe_qos not in (0, 1):
        raise BadInput(f"subscribe QoS {subscribe_qos}: must be 0 or 1")
    return BrokerConfig(parts.hostname, port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT), tls,
                        unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password is not None else None,
                        files.get("ca"), files.get("cert"), files.get("key"), protocol, keepalive,
                        subscribe_qos=subscribe_qos)


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
    connect_timeout_s: float = 5.0        # the TCP connect and TLS handshake
    connack_timeout_s: float = 10.0       # then the broker's answer to CONNECT (next broker when none)
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
