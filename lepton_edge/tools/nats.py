"""A private NATS cluster with MQTT: N ``nats-server`` nodes on free loopback ports, for tests and trials.

Host-side: a real fleet runs its own cluster (docs/BROKERS.md has the production configuration).

    with NatsCluster(tmp_path) as cluster:       # three nodes, JetStream, an MQTT listener each
        cluster.urls()                           # ["mqtt://127.0.0.1:P1", "mqtt://127.0.0.1:P2", ...]
        cluster.nodes[0].kill()                  # SIGKILL one node; .start() brings it back

Each node has its own ``server_name``, JetStream store directory, client, cluster-route, monitoring
and MQTT ports; the routes list the other nodes. JetStream keeps the MQTT sessions, retained messages
and QoS 1 state, replicated on every node (``stream_replicas``: left to itself, NATS picks the
replica count from the peers it knows when the first MQTT client connects, and a stream on two
replicas stops when one of them dies). ``max_payload`` is raised to 2 MiB: NATS's default of
1 MB is smaller than an OTA block of 1 MiB plus its header. NATS speaks MQTT 3.1.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from lepton_edge.errors import LeptonError
from lepton_edge.tools.mosquitto import _accepts
from lepton_edge.tools.ports import free_port, free_ports

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
INSTALL = "apt-get install -y nats-server (or make setup)"
MAX_PAYLOAD = 2 * 1024 * 1024
# Every MQTT QoS 1 subscription is a JetStream consumer; by default each is replicated like the streams (its
# own Raft group on three nodes) and on disk. A thousand devices connecting at once then time out creating
# them ("Unable to add JetStream consumer ... timeout"). Clean-session clients (devices, controller
# replicas) lose nothing with one in-memory replica: their consumers go with the connection anyway.
LIGHT_CONSUMERS = "consumer_replicas: 1\n  consumer_memory_storage: true"


class NatsMissing(LeptonError):
    """nats-server is not installed (exit 1)."""

    exit_code = 1


def require_nats() -> str:
    if not os.access(NATS_SERVER, os.X_OK):
        raise NatsMissing(f"nats-server is not installed ({INSTALL})")
    return NATS_SERVER


class NatsNode:
    """One ``nats-server`` process of a cluster, with its ports and its own store directory."""

    def __init__(self, directory: Path, name: str, cluster_name: str, ports: tuple[int, int, int, int]) -> None:
        self.name, self.cluster_name = name, cluster_name
        self.dir = directory / name
        self.dir.mkdir(parents=True)
        self.client_port, self.route_port, self.http_port, self.mqtt_port = ports
        self.log_path = self.dir / "nats.log"
        self.conf = self.dir / "nats.conf"
        self.proc: subprocess.Popen | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        auth = "" if user is None else f"{user}:{password}@" if password is not None else f"{user}@"
        return f"mqtt://{auth}127.0.0.1:{self.mqtt_port}"

    def write_config(self, peers: list[NatsNode], extra: str = "", max_payload: int | None = MAX_PAYLOAD,
                     mqtt_extra: str = "") -> None:
        """``max_payload=None`` keeps NATS's default (1 MB); a single node has no cluster block; ``mqtt_extra``
        goes into the ``mqtt`` block (e.g. :data:`LIGHT_CONSUMERS`)."""
        routes = ", ".join(f'"nats://127.0.0.1:{p.route_port}"' for p in peers if p is not self)
        cluster = f"""cluster {{{{
  name: {self.cluster_name}
  listen: 127.0.0.1:{self.route_port}
  routes: [{routes}]
}}}}""".replace("{{", "{").replace("}}", "}") if len(peers) > 1 else ""
        payload = f"max_payload: {max_payload}" if max_payload else ""
        self.conf.write_text(f"""server_name: {self.name}
listen: 127.0.0.1:{self.client_port}
http: 127.0.0.1:{self.http_port}
{payload}
jetstream {{
  store_dir: "{self.dir / 'jetstream'}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
{cluster}
mqtt {{
  listen: 127.0.0.1:{self.mqtt_port}
  stream_replicas: {len(peers)}
  {mqtt_extra}
}}
{extra}
""")

    def start(self) -> None:
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf), "-l", str(self.log_path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"nats-server {self.name} exited with {self.proc.returncode}: {err}{self.log()[-2000:]}")

    def healthy(self) -> bool:
        """JetStream is up on this node (its MQTT listener can keep sessions) and MQTT accepts."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=0.5) as resp:
                ok = json.loads(resp.read() or b"{}").get("status") == "ok"
        except (OSError, ValueError):
            return False
        return ok and _accepts(self.mqtt_port)

    def varz(self) -> dict:
        """The node's /varz monitoring page (``connections`` counts its MQTT clients too)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/varz", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def connections(self) -> int:
        """Clients connected to this node now (MQTT and NATS), 0 when it does not answer."""
        try:
            return int(self.varz().get("connections", 0))
        except (OSError, ValueError):
            return 0

    def kill(self) -> None:
        """SIGKILL: no goodbye to clients or routes, as when a machine dies."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(5)
        self._close_pipes()

    def stop(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close_pipes()

    def _close_pipes(self) -> None:
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """``size`` NATS nodes routed to each other on loopback, each with JetStream and MQTT; a context manager."""

    def __init__(self, directory: Path, size: int = 3, *, name: str = "lepton", extra: str = "",
                 max_payload: int | None = MAX_PAYLOAD, mqtt_extra: str = "") -> None:
        require_nats()
        self.dir = Path(directory) / f"nats-{free_port()}"
        ports = free_ports(4 * size)
        self.nodes = [NatsNode(self.dir, f"n{i + 1}", name, (ports[4 * i], ports[4 * i + 1], ports[4 * i + 2],
                                                               ports[4 * i + 3])) for i in range(size)]
        self._config = (extra, max_payload, mqtt_extra)
        for node in self.nodes:
            node.write_config(self.nodes, *self._config)

    def _new_ports(self) -> None:
        """Other free ports for every node, and a fresh JetStream store (nothing has run on it yet)."""
        ports = free_ports(4 * len(self.nodes))
        for i, node in enumerate(self.nodes):
            node.client_port, node.route_port, node.http_port, node.mqtt_port = ports[4 * i:4 * i + 4]
            shutil.rmtree(node.dir / "jetstream", ignore_errors=True)
        for node in self.nodes:
            node.write_config(self.nodes, *self._config)

    def urls(self) -> list[str]:
        """Every node's MQTT URL, node 1 first."""
        return [n.url() for n in self.nodes]

    def start(self, timeout: float = 30.0, attempts: int = 3) -> NatsCluster:
        """Start the nodes not running; a port taken between picking and binding it (another process on this
        machine) makes a first start pick new ports, up to ``attempts`` times."""
        for attempt in range(attempts):
            for node in self.nodes:
                if not node.running:
                    node.start()
            try:
                self.wait_healthy(timeout)
                return self
            except RuntimeError as exc:
                if "address already in use" not in str(exc) or attempt == attempts - 1:
                    self.stop()
                    raise
                self.stop()
                self._new_ports()
        return self

    def wait_healthy(self, timeout: float = 30.0, nodes: list[NatsNode] | None = None) -> None:
        """Until every running node (or ``nodes``) reports JetStream healthy and its MQTT port accepts."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in (nodes or self.nodes) if n.running]
        while waiting:
            for node in waiting:
                node.check_alive()
            waiting = [n for n in waiting if not n.healthy()]
            if waiting and time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"NATS nodes {[n.name for n in waiting]} not healthy within {timeout} s: "
                                   + waiting[0].log()[-2000:])
            if waiting:
                time.sleep(0.1)

    def busiest(self) -> NatsNode:
        """The running node with the most clients connected."""
        return max((n for n in self.nodes if n.running), key=lambda n: n.connections())

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
