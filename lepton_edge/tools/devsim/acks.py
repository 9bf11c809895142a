"""A device's MQTT client that counts its telemetry's PUBACKs, for the simulator's loss count.

:class:`~lepton_edge.mqtt.MqttClient` keeps the ids of the QoS 1 messages awaiting a PUBACK but does not
say which were telemetry; this subclass notes the ids of the messages published on one topic and
counts the ones the broker acknowledged. Sent minus acknowledged is what the broker never confirmed
(lost, or still in flight); the controller's rows are counted against the sent ones by bench/scale.py.
Runs on the loop thread only, like every call into paho.
"""

from __future__ import annotations

from typing import Any

from lepton_edge.mqtt import MqttClient


class AckCountingClient(MqttClient):
    """``acked``: PUBACKs (or, at QoS 0, successful sends) of the messages published on ``counted_topic``."""

    def __init__(self, *args: Any, counted_topic: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counted_topic = counted_topic
        self.acked = 0
        self._counted_mids: set[int] = set()

    def _do_publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic != self.counted_topic:
            super()._do_publish(topic, payload, qos, retain)
            return
        before, published = set(self._outstanding), self.published
        super()._do_publish(topic, payload, qos, retain)
        if qos == 0:
            self.acked += self.published - published
        else:
            self._counted_mids |= self._outstanding - before

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid in self._counted_mids and mid in self._outstanding:
            self._counted_mids.discard(mid)
            self.acked += 1
        super()._on_publish(client, userdata, mid, reason, properties)
