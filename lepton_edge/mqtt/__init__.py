"""MQTT for the fleet: topics, message payloads, broker settings, the client and the router.

    topics    the six topic kinds of a device, fleet filters, topic parsing (:mod:`.topics`)
    messages  JSON payloads with their schema version, the binary ota/data block (:mod:`.messages`)
    broker    broker URLs, TLS, protocol version, session options, Last Will (:mod:`.broker`)
    client    the paho client with its one owner thread (:mod:`.client`)
    router    parse, count bad messages, dispatch (:mod:`.router`)

docs/MQTT.md is the wire contract. Device-side code: standard library and paho-mqtt (imported
when a client is made).
"""

from __future__ import annotations

from lepton_edge.mqtt.broker import (
                                     DEFAULT_PORT,
                                     DEFAULT_TLS_PORT,
                                     BrokerConfig,
                                     SessionOptions,
                                     Will,
                                     parse_broker_url,
                                     tls_context,
)
from lepton_edge.mqtt.client import MqttClient, NetworkLoop, TimerHandle, make_paho_client
from lepton_edge.mqtt.messages import (
                                     BLOCK_BAD_RANGE,
                                     BLOCK_EXPIRED,
                                     BLOCK_HEADER,
                                     BLOCK_OK,
                                     BLOCK_STATUS_TEXT,
                                     BLOCK_UNAVAILABLE,
                                     BLOCK_UNKNOWN_JOB,
                                     BOOT_ID_HEX,
                                     CONFIRM,
                                     DEFAULT_BLOCK_SIZE,
                                     MAX_ACKED_SEQS,
                                     MAX_BLOCK_SIZE,
                                     MAX_TAGS,
                                     OTA_COMMANDS,
                                     OTA_STATES,
                                     PAYLOAD_SCHEMA,
                                     REVERT,
                                     TELEMETRY_FIELDS,
                                     TERMINAL_OTA_STATES,
                                     Block,
                                     BlockRequest,
                                     ModelInfo,
                                     OtaCommand,
                                     OtaJob,
                                     OtaState,
                                     PayloadError,
                                     Progress,
                                     Status,
                                     Telemetry,
                                     TelemetryAck,
                                     decode_json,
                                     encode_json,
                                     new_boot_id,
                                     new_job_id,
                                     offline_will_payload,
                                     parse_ota_message,
                                     valid_tag,
)
from lepton_edge.mqtt.router import Router
from lepton_edge.mqtt.topics import (
                                     DEFAULT_FLEET,
                                     KINDS,
                                     OTA_DATA,
                                     OTA_GET,
                                     OTA_JOB,
                                     OTA_PROGRESS,
                                     STATUS,
                                     TELEMETRY,
                                     TELEMETRY_ACK,
                                     TOPIC_ROOT,
                                     DeviceTopics,
                                     TopicParts,
                                     check_name,
                                     fleet_filter,
                                     parse_topic,
                                     topic_matches,
)

__all__ = [  # noqa: RUF022 - grouped by module, as the imports above
    # topics
    "DEFAULT_FLEET", "KINDS", "OTA_DATA", "OTA_GET", "OTA_JOB", "OTA_PROGRESS", "STATUS", "TELEMETRY", "TELEMETRY_ACK",
    "TOPIC_ROOT",
    "DeviceTopics", "TopicParts", "check_name", "fleet_filter", "parse_topic", "topic_matches",
    # messages
    "BLOCK_BAD_RANGE", "BLOCK_EXPIRED", "BLOCK_HEADER", "BLOCK_OK", "BLOCK_STATUS_TEXT", "BLOCK_UNAVAILABLE",
    "BLOCK_UNKNOWN_JOB", "BOOT_ID_HEX", "CONFIRM", "DEFAULT_BLOCK_SIZE", "MAX_ACKED_SEQS", "MAX_BLOCK_SIZE",
    "MAX_TAGS", "OTA_COMMANDS", "OTA_STATES",
    "PAYLOAD_SCHEMA", "REVERT", "TELEMETRY_FIELDS", "TERMINAL_OTA_STATES", "Block", "BlockRequest", "ModelInfo",
    "OtaCommand", "OtaJob", "OtaState", "PayloadError", "Progress", "Status", "Telemetry", "TelemetryAck",
    "decode_json", "encode_json", "new_boot_id", "new_job_id", "offline_will_payload", "parse_ota_message", "valid_tag",
    # broker
    "DEFAULT_PORT", "DEFAULT_TLS_PORT", "BrokerConfig", "SessionOptions", "Will", "parse_broker_url", "tls_context",
    # client and router
    "MqttClient", "NetworkLoop", "Router", "TimerHandle", "make_paho_client",
]
