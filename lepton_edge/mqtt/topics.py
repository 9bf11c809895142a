"""Topic names: one prefix per device, ``lepton/v1/<fleet>/<device>/``, seven kinds of message.

    status        device -> all     JSON, retained; the Last Will sets it offline
    telemetry     device -> ctrl    JSON, QoS 1; resent until acknowledged when it carries a boot id
    telemetry/ack ctrl -> device    JSON, QoS 0: the seqs committed to the database
    ota/job       ctrl -> device    JSON: the manifest's exact bytes (base64) and its signature
    ota/get       device -> ctrl    JSON: one block request {job, offset, length}; the device paces
    ota/data      ctrl -> device    binary: a 40-byte header then the bytes
    ota/progress  device -> ctrl    JSON: the device's OTA state machine

Device-side code: standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lepton_edge.errors import BadInput

TOPIC_ROOT = "lepton/v1"
DEFAULT_FLEET = "default"
# Fleet names and device ids are topic levels: no '/', '+', '#', spaces (same rule as the agent's config).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

STATUS, TELEMETRY, TELEMETRY_ACK, OTA_JOB, OTA_GET, OTA_DATA, OTA_PROGRESS = (
    "status", "telemetry", "telemetry/ack", "ota/job", "ota/get", "ota/data", "ota/progress")
KINDS = (STATUS, TELEMETRY, TELEMETRY_ACK, OTA_JOB, OTA_GET, OTA_DATA, OTA_PROGRESS)


def check_name(value: str, what: str = "device id") -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise BadInput(f"{what} {value!r}: use 1 to 64 letters, digits, '.', '_' or '-' (it names MQTT topics)")
    return value


@dataclass(frozen=True)
class DeviceTopics:
    """The seven topics of one device."""

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
    telemetry_ack = property(lambda self: self.topic(TELEMETRY_ACK))
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


def topic_matches(filter_levels: list[str], topic_levels: list[str], topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); like paho's topic_matches_sub without
    building a matcher per call. Topics starting with ``$`` match no leading wildcard."""
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels) or (level != "+" and level != topic_levels[i]):
            return False
    return len(filter_levels) == len(topic_levels)
