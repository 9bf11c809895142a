"""What the MQTT side (status, telemetry, OTA) needs of the process it speaks for.

The agent (:class:`lepton_edge.agent.daemon.Agent`) and the serial gateway
(:class:`lepton_edge.gateway.daemon.Gateway`) are fleet members. The types are imported for the type
checker only: this module is imported by the MQTT side, which the daemon imports lazily.

Device-side code: standard library only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lepton_edge.agent.config import AgentConfig
    from lepton_edge.agent.health import HealthReport
    from lepton_edge.agent.metrics import AgentMetrics
    from lepton_edge.agent.served import ServedModel
    from lepton_edge.agent.store import ModelStore


class FleetMember(Protocol):
    config: AgentConfig           # [device] and [mqtt]
    backend: str                  # the runtime the model runs on: "tflm" or "litert"
    store: ModelStore | None      # None until opened
    metrics: AgentMetrics

    def current(self) -> ServedModel | None: ...
    def activate(self, slot: str, *, staged: bool = False) -> HealthReport: ...  # health check, confirm or roll back
    def revert(self, sha256: str | None) -> HealthReport | None: ...  # back to the held slot (store.revert)
    def confirm_floor(self, sha256: str) -> None: ...               # end a staged hold: raise the version floor
    def check_update(self, manifest: dict[str, Any]) -> None: ...   # CheckFailed: refused from the manifest alone
    def offline_reason(self) -> str | None: ...
    def software(self) -> str: ...
    def telemetry_extra(self) -> dict[str, Any]: ...
