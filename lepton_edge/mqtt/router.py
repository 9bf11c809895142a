"""One way to receive messages: parse the topic and the payload, count what is bad, dispatch the rest.

    router = Router(log, label="OTA")
    router.on(OTA_JOB, OtaJob.from_bytes, ota.on_job)            # handler(device, job)
    router.subscribe(client, lambda kind: topics.topic(kind))   # or fleet_filter(fleet, kind)

Handlers run on the client's loop thread. A message on a topic that names no device, an empty
payload (the way a retained message is cleared) and a payload that does not follow its schema are
counted in :attr:`Router.bad` by reason and never reach a handler; only schema errors are logged.

Device-side code: standard library only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lepton_edge.mqtt.messages import PayloadError
from lepton_edge.mqtt.topics import parse_topic

if TYPE_CHECKING:
    from lepton_edge.mqtt.client import MqttClient

# Why a message was dropped (the keys of Router.bad).
BAD_TOPIC, EMPTY, BAD_PAYLOAD = "topic", "empty", "payload"


@dataclass(frozen=True)
class Route:
    kind: str
    parse: Callable[[bytes], Any]
    handle: Callable[[str, Any], None]
    qos: int = 1


class Router:
    """Routes by topic kind (``status``, ``ota/get``...); one router per client."""

    def __init__(self, log: logging.Logger, *, label: str | None = None, level: int = logging.DEBUG) -> None:
        self.routes: dict[str, Route] = {}
        self.messages: dict[str, int] = {}   # kind -> messages received, bad ones included
        self.bad: Counter[str] = Counter()   # reason -> messages dropped
        self._log, self._label, self._level = log, label, level

    def on(self, kind: str, parse: Callable[[bytes], Any], handle: Callable[[str, Any], None], *,
           qos: int = 1) -> None:
        """``handle(device, parse(payload))`` for every good message of ``kind``."""
        self.routes[kind] = Route(kind, parse, handle, qos)
        self.messages.setdefault(kind, 0)

    def subscribe(self, client: MqttClient, topic_filter: Callable[[str], str]) -> None:
        """Subscribe ``client`` to ``topic_filter(kind)`` for each route."""
        for route in self.routes.values():
            client.subscribe(topic_filter(route.kind), self.handler(route.kind), qos=route.qos)

    def handler(self, kind: str) -> Callable[[str, bytes], None]:
        """The ``(topic, payload)`` callback for one kind (what :meth:`MqttClient.subscribe` takes)."""
        route = self.routes[kind]
        return lambda topic, payload: self.dispatch(route, topic, payload)

    @property
    def bad_payloads(self) -> int:
        return self.bad[BAD_PAYLOAD]

    def dispatch(self, route: Route, topic: str, payload: bytes) -> None:
        self.messages[route.kind] += 1
        parts = parse_topic(topic)
        if parts is None:
            self.bad[BAD_TOPIC] += 1
            return
        if not payload:
            self.bad[EMPTY] += 1
            return
        try:
            message = route.parse(payload)
        except PayloadError as exc:
            self.bad[BAD_PAYLOAD] += 1
            self._log.log(self._level, "%s: %s", self._label or topic, exc)
            return
        route.handle(parts.device, message)
