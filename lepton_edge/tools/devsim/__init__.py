"""Simulated device agents that speak the real MQTT protocol (tests, benchmarks, demos, people trying a fleet).

* :mod:`.device`: :class:`SimDevice`, one agent: status, telemetry, OTA through the agent's own
  ``OtaRunner``/``UpdateMachine`` with the device as the ``UpdateTarget``;
* :mod:`.slots`: its two model slots, the built-in factory model, staged holds, revert and confirm;
* :mod:`.workload`: the inferences, errors and latency its telemetry reports;
* :mod:`.eventlog`: the devices' own JSONL log (jobs, commands, blocks, states);
* :mod:`.fleet`: :class:`SimFleet`, many devices on one network loop, and the fleet plan (which fail,
  which are slow, which process runs which);
* :mod:`.simulate`: ``lepton-edge fleet simulate``, a fleet over several processes;
* ``python -m lepton_edge.tools.devsim``: the benchmarks' driver (``--control``).

Hundreds of devices share one :class:`~lepton_edge.mqtt.NetworkLoop` thread; ``fleet simulate`` spreads
thousands over processes (``--processes auto``: one per 800 devices) and raises each process's open-file
limit (:mod:`.limits`).
"""

from lepton_edge.tools.devsim.device import SimDevice, SimOptions
from lepton_edge.tools.devsim.eventlog import EventLog, read_events
from lepton_edge.tools.devsim.fleet import FLEET_OPTIONS, FleetPlan, SimFleet, device_id, plan_fleet
from lepton_edge.tools.devsim.slots import FACTORY_MODEL, FACTORY_SHA256

__all__ = ["FACTORY_MODEL", "FACTORY_SHA256", "FLEET_OPTIONS", "EventLog", "FleetPlan", "SimDevice", "SimFleet",
           "SimOptions", "device_id", "plan_fleet", "read_events"]
