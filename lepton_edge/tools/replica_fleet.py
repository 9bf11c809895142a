"""The clustered set-up of issue 13 on one machine: a private PostgreSQL, a three-node NATS cluster with
MQTT, and ``fleet serve`` replicas on both; for bench/scale.py's second row and the failover test.

    with ReplicaFleet(tmp, replicas=2) as rf:     # PostgreSQL, NATS, replicas started and answering
        sim = rf.simulate(1000, interval=10)      # fleet simulate over all the nodes (round-robin)
        rf.replicas[0].api("GET", "/v1/health")
        rf.telemetry.rows()                       # what the database holds

Replica ``i`` lists the NATS nodes starting at node ``i mod N`` (so two replicas start on different nodes
and each fails over to the next), MQTT 3.1.1 (NATS has no MQTT 5), subscriptions at QoS 0 (on NATS
every QoS 1 subscription is a JetStream consumer, and a node's death broke them: nothing here relies on
the broker keeping a message; devices resend telemetry and retry blocks, the controller resends jobs),
OTA blocks published at QoS 0 (``--block-qos 0``: a QoS 1 publish is a JetStream write, replicated).
Every replica has its own ``--store`` directory unless ``shared_store`` (artifacts then need not be in
the database). Logs: ``replica-<i>.log`` per replica, ``processes.log`` for the simulators. Host-side.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from lepton_edge.tools.fleet_procs import ServeProcess, SimProcess, TelemetryRows
from lepton_edge.tools.nats import LIGHT_CONSUMERS, NatsCluster
from lepton_edge.tools.postgres import PostgresServer, missing, pg_bin

MQTT_VERSION = "3.1.1"
SUBSCRIBE_QOS = 0
BLOCK_QOS = 0  # OTA blocks: on NATS a QoS 1 publish is a replicated JetStream write; a lost block is re-asked


class ReplicaFleet:
    """PostgreSQL + ``nats_nodes`` NATS nodes + ``replicas`` ``fleet serve`` processes; a context manager.

    ``serve_args``: more ``fleet serve`` flags for every replica."""

    def __init__(self, directory: Path, *, replicas: int = 2, nats_nodes: int = 3, fleet: str = "scale",
                 shared_store: bool = False, serve_args: Sequence[str] = (),
                 nats_extra: str = "", nats_mqtt: str = LIGHT_CONSUMERS) -> None:
        why = missing(pg_bin())
        if why is not None:
            raise RuntimeError(why)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fleet, self.count, self.shared_store = fleet, replicas, shared_store
        self.serve_args = tuple(serve_args)
        self.log: IO[str] = open(self.dir / "processes.log", "a")  # closed in stop()
        self.pg: PostgresServer | None = None
        self.nats = NatsCluster(self.dir, nats_nodes, extra=nats_extra, mqtt_extra=nats_mqtt)
        self.replicas: list[ServeProcess] = []
        self.db_url = ""
        self._sims: list[SimProcess] = []
        self._logs: list[IO[str]] = []

    def start(self) -> ReplicaFleet:
        try:
            self.pg = PostgresServer(pg_bin())
            self.db_url = self.pg.create_database()
            self.nats.start()
            for i in range(self.count):
                self.replicas.append(self.start_replica(i))
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def brokers(self) -> list[str]:
        return self.nats.urls()

    def brokers_from(self, i: int) -> list[str]:
        urls = self.brokers
        k = i % len(urls)
        return urls[k:] + urls[:k]

    def start_replica(self, i: int) -> ServeProcess:
        """Replica ``i`` (not added to :attr:`replicas`: :meth:`start` does that)."""
        store = self.dir / ("store" if self.shared_store else f"store-{i}")
        log = open(self.dir / f"replica-{i}.log", "a")  # the process writes it; closed in stop()
        self._logs.append(log)
        return ServeProcess(self.brokers_from(i), store, log, fleet=self.fleet, db=self.db_url,
                            mqtt_version=MQTT_VERSION, subscribe_qos=SUBSCRIBE_QOS,
                            extra=("--block-qos", str(BLOCK_QOS), *self.serve_args))

    def simulate(self, devices: int, *, interval: float, prefix: str = "sim-", processes: str = "auto",
                 extra: Sequence[str] = ()) -> SimProcess:
        """``fleet simulate`` with every node as a ``--broker`` (device i starts on node i mod N)."""
        sim = SimProcess(self.brokers, devices, self.log, fleet=self.fleet, prefix=prefix, interval=interval,
                         mqtt_version=MQTT_VERSION, subscribe_qos=SUBSCRIBE_QOS, processes=processes, extra=extra)
        self._sims.append(sim)
        return sim

    @property
    def telemetry(self) -> TelemetryRows:
        return TelemetryRows(self.db_url)

    def cpu(self) -> float:
        """CPU seconds of every replica started so far (a killed one keeps what it had when last read)."""
        return sum(r.cpu() for r in self.replicas)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.telemetry.query(sql, params)

    def stop(self) -> None:
        """Stop everything started (again: nothing)."""
        sims, replicas, pg = self._sims, self.replicas, self.pg
        self._sims, self.replicas, self.pg = [], [], None
        try:
            for sim in sims:
                sim.kill()
            for r in replicas:
                r.stop()
            self.nats.stop()
        finally:
            if pg is not None:
                pg.stop()
            for log in [self.log, *self._logs]:
                log.close()

    def __enter__(self) -> ReplicaFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
