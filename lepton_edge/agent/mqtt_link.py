"""The agent's MQTT side: status, telemetry and OTA over one connection (``[mqtt]`` in AGENT.toml).

    link = start_mqtt(agent)      # after Agent.start(); None when the config has no [mqtt] section
    ...
    link.stop()                   # before Agent.stop(): says offline, then disconnects

On every connect it publishes a retained ``status`` (online, the model's name, version, sha256 and
slot, the device's ``[device] tags``, its profile's name and the served model's latency budget:
the manifest's ``self_test.latency_budget_ms``, else ``[health] latency_budget_ms``); its Last
Will says offline. Telemetry goes out every ``telemetry_interval_s`` (default 10 s) with this start's
boot id, and is resent until the controller acknowledges it (:mod:`lepton_edge.agent.telemetry_buffer`:
``telemetry_resend_s``, default 30 s, and after every reconnect, once an ack has been seen; at most
``telemetry_buffer`` records kept, default 360).
OTA jobs run in :class:`lepton_edge.agent.ota.OtaClient`. The client reconnects with backoff and
restores its subscriptions (:mod:`lepton_edge.mqtt.client`).

``lepton-edge agent`` starts it from :meth:`Agent.run` when the configuration has ``[mqtt]``.

Device-side code: standard library, paho-mqtt and the project's device-side modules.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lepton_edge.agent.health import latency_budget_ms
from lepton_edge.agent.member import FleetMember
from lepton_edge.agent.ota import OtaClient, model_info, route_ota
from lepton_edge.agent.telemetry import TelemetrySampler
from lepton_edge.agent.telemetry_buffer import DEFAULT_CAPACITY, DEFAULT_RESEND_S, TelemetrySender
from lepton_edge.agent.update import OtaOptions
from lepton_edge.mqtt import (
    DeviceTopics,
    MqttClient,
    SessionOptions,
    Status,
    Will,
    offline_will_payload,
    parse_broker_url,
)

if TYPE_CHECKING:
    from lepton_edge.agent.config import MqttConfig

log = logging.getLogger("lepton_edge.agent.mqtt")

DEFAULT_TELEMETRY_INTERVAL_S = 10.0


@dataclass(frozen=True)
class LinkOptions:
    telemetry_interval_s: float = DEFAULT_TELEMETRY_INTERVAL_S
    telemetry_resend_s: float = DEFAULT_RESEND_S
    telemetry_buffer: int = DEFAULT_CAPACITY
    protocol: str = "5"
    ota: OtaOptions = OtaOptions()
    session: SessionOptions = SessionOptions(max_queued=1000, max_backoff_s=30.0)


class MqttLink:
    """Owns the agent's MQTT client, its OTA worker and its telemetry thread."""

    def __init__(self, agent: FleetMember, options: LinkOptions | None = None) -> None:
        cfg = agent.config.mqtt
        if cfg is None:
            raise ValueError("the agent's configuration has no [mqtt] section")
        options = options or options_from_config(cfg)
        self.agent, self.options = agent, options
        device = agent.config.device
        self.topics = DeviceTopics(device.fleet, device.id)
        broker = parse_broker_url(cfg.brokers, ca=cfg.ca, cert=cfg.cert, key=cfg.key, protocol=options.protocol,
                                  keepalive=cfg.keepalive, subscribe_qos=cfg.subscribe_qos)
        self.client = MqttClient(broker, cfg.client_id or device.id,
                                 will=Will(self.topics.status, offline_will_payload(), qos=1, retain=True),
                                 session=options.session, on_connect=self._on_connect,
                                 on_disconnect=lambda reason: log.warning("lost the broker (%s); reconnecting", reason))
        self.ota = OtaClient(agent, self.topics, self.client.publish, connected=lambda: self.client.connected,
                             model_changed=self.publish_status, options=options.ota)
        self.router = route_ota(self.client, self.topics, self.ota.on_job, self.ota.on_data, label="OTA")
        self.telemetry = TelemetrySender(self.client, self.topics, capacity=options.telemetry_buffer,
                                         resend_s=options.telemetry_resend_s)
        self.sampler = TelemetrySampler(agent, self._stats)
        self._stop = threading.Event()
        self._telemetry = threading.Thread(target=self._telemetry_loop, name="telemetry", daemon=True)

    def start(self) -> None:
        self.ota.start()
        self.client.start()
        if self.options.telemetry_interval_s > 0:
            self._telemetry.start()
        log.info("MQTT: %s as %s", self.client.config.display_url, self.topics.prefix)

    def stop(self) -> None:
        self._stop.set()
        if self._telemetry.is_alive():
            self._telemetry.join(5)
        self.telemetry.stop()
        self.ota.stop()
        self.client.stop(final=((self.topics.status, self._status(False, "shutdown"), 1, True),))

    def publish_status(self) -> None:
        self.client.publish(self.topics.status, self._status(True), qos=1, retain=True)

    def _status(self, online: bool, reason: str | None = None) -> bytes:
        served = self.agent.current()
        if online:
            reason = self.agent.offline_reason()  # a gateway whose serial device does not answer
            online = reason is None
        config = self.agent.config
        budget = None if served is None else latency_budget_ms(served.artifact.manifest,
                                                               config.health.latency_budget_ms)
        return Status(online, model_info(served), self.agent.software(), time.time(), reason,
                      tags=config.device.tags, profile=config.device.profile.name,
                      latency_budget_ms=budget).to_bytes()

    def _on_connect(self) -> None:  # loop thread
        log.info("MQTT: connected to %s", self.client.broker.display_url)
        self.publish_status()
        self.ota.on_reconnect()
        self.telemetry.on_reconnect()

    def _stats(self) -> dict[str, Any]:
        return {**self.client.stats(), "telemetry_dropped": self.telemetry.counts.dropped}

    def _telemetry_loop(self) -> None:
        interval = self.options.telemetry_interval_s
        while not self._stop.wait(interval):
            try:
                self.telemetry.send(self.sampler.sample())
            except Exception:  # telemetry must never take the agent down
                log.exception("telemetry sample failed")


def options_from_config(cfg: MqttConfig) -> LinkOptions:
    """LinkOptions from the ``[mqtt]`` section of the agent's configuration."""
    return LinkOptions(telemetry_interval_s=cfg.telemetry_interval_s, telemetry_resend_s=cfg.telemetry_resend_s,
                       telemetry_buffer=cfg.telemetry_buffer, protocol=cfg.protocol,
                       ota=OtaOptions(block_size=cfg.ota_block_size, max_bytes_per_s=cfg.ota_max_bytes_per_s))


def start_mqtt(agent: FleetMember, options: LinkOptions | None = None) -> MqttLink | None:
    """The daemon's hook: start the MQTT side when the configuration has an ``[mqtt]`` section."""
    if agent.config.mqtt is None:
        return None
    link = MqttLink(agent, options or options_from_config(agent.config.mqtt))
    link.start()
    return link
