"""``fleet serve`` and ``fleet simulate`` as subprocesses, and the telemetry rows they leave, for benches
and tests that drive whole fleets (bench/scale.py, tests/replica_fixtures.py). Host-side.

:class:`ServeProcess` starts one controller replica and knows its HTTP URL, its pid and CPU time;
:class:`SimProcess` runs ``fleet simulate --json`` and keeps its latest progress and its summary;
:class:`TelemetryRows` counts what a controller's database holds (SQLite file or PostgreSQL URL).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[2]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (fields 14 and 15 of /proc/<pid>/stat); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def _broker_flags(brokers: Sequence[str], mqtt_version: str, subscribe_qos: int) -> list[str]:
    flags = []
    for url in brokers:
        flags += ["--broker", url]
    return [*flags, "--mqtt-version", mqtt_version, "--subscribe-qos", str(subscribe_qos)]


class ServeProcess:
    """``lepton-edge fleet serve`` on ``brokers`` (in this order) with ``db`` (None: SQLite in ``store``).

    ``client_id`` None leaves the controller's default. ``log``: where its stderr goes."""

    def __init__(self, brokers: Sequence[str], store: Path, log: IO[str], *, fleet: str, db: str | None = None,
                 mqtt_version: str = "5", subscribe_qos: int = 1, client_id: str | None = None,
                 extra: Sequence[str] = ()) -> None:
        self.store, self.db = store, db
        argv = [sys.executable, "-m", "lepton_edge", "fleet", "serve",
                *_broker_flags(brokers, mqtt_version, subscribe_qos),
                "--fleet", fleet, "--store", str(store), "--http", "127.0.0.1:0", *extra]
        if db is not None:
            argv += ["--db", db]
        if client_id is not None:
            argv += ["--client-id", client_id]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
                                     stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("fleet controller: "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"fleet serve did not start: {line!r} (its log: {getattr(log, 'name', '?')})")
        self.url = line.split()[2]
        self._out = threading.Thread(target=self._drain, daemon=True)  # the pipe never fills
        self._out.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def api(self, method: str, path: str, body: Any = None, timeout: float = 120.0) -> Any:
        """One HTTP call to the API; RuntimeError on a status of 300 or more."""
        conn = http.client.HTTPConnection(self.url.split("://", 1)[1], timeout=timeout)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        finally:
            conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data}")
        return data

    def upload(self, artifact: Path) -> str:
        """Upload the artifact directory (manifest, model, signature if any); its id."""
        sig = artifact / "manifest.sig"
        uploaded = self.api("POST", "/v1/artifacts", {
            "manifest_b64": base64.b64encode((artifact / "manifest.json").read_bytes()).decode(),
            "signature_b64": base64.b64encode(sig.read_bytes()).decode() if sig.exists() else None,
            "model_b64": base64.b64encode((artifact / "model.tflite").read_bytes()).decode()})
        return str(uploaded["artifact"])

    def kill(self) -> None:
        """SIGKILL: no goodbye to the broker or the database, as when a machine dies."""
        if self.running:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SimProcess:
    """``lepton-edge fleet simulate --json``: ``devices`` devices ``<prefix>00000 ..`` spread round-robin
    over ``brokers``, in ``processes`` processes ("auto": one per 800 devices)."""

    def __init__(self, brokers: Sequence[str], devices: int, log: IO[str], *, fleet: str, prefix: str,
                 interval: float, mqtt_version: str = "5", subscribe_qos: int = 1, processes: str = "auto",
                 extra: Sequence[str] = ()) -> None:
        self.devices = devices
        self.progress: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lepton_edge", "fleet", "simulate",
             *_broker_flags(brokers, mqtt_version, subscribe_qos),
             "--fleet", fleet, "--devices", str(devices), "--processes", processes, "--telemetry-interval",
             str(interval), "--id-prefix", prefix, "--json", *extra],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "progress":
                self.progress = event
            elif event.get("event") == "summary":
                self.summary = event

    @property
    def connected(self) -> int:
        return int(self.progress.get("connected", 0))

    def wait_for(self, what: str, done: Any, timeout: float) -> float:
        """Seconds until ``done(progress)`` holds; RuntimeError naming ``what`` after ``timeout``."""
        started = time.monotonic()
        while not done(self.progress):
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleet simulate exited with {self.proc.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{what} not within {timeout:.0f} s (last progress: "
                                   f"{ {k: v for k, v in self.progress.items() if k != 'processes'} })")
            time.sleep(0.2)
        return time.monotonic() - started

    def wait_connected(self, timeout: float) -> float:
        return self.wait_for(f"{self.devices} devices connected", lambda p: int(p.get("connected", 0)) >= self.devices,
                             timeout)

    def stop(self, timeout: float = 180.0) -> dict[str, Any]:
        """SIGINT (every device stops cleanly); the summary."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout)
        self._reader.join(10)
        if self.summary is None:
            raise RuntimeError(f"fleet simulate gave no summary (exit {self.proc.returncode})")
        return self.summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the children stop with their parent
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class TelemetryRows:
    """Counts of the ``telemetry`` table of a controller's database: a SQLite file or a PostgreSQL URL."""

    def __init__(self, db: str | Path) -> None:
        self.db = str(db)
        self.pg = self.db.startswith(("postgresql://", "postgres://"))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.pg:
            import psycopg

            with psycopg.connect(self.db, autocommit=True) as conn:
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30) as db:
            return list(db.execute(sql, params).fetchall())

    def has_boot(self) -> bool:
        """Whether the table has the ``boot`` column (acknowledged telemetry, schema of issue 13)."""
        if self.pg:
            return bool(self.query("SELECT 1 FROM information_schema.columns WHERE table_name='telemetry' "
                                   "AND column_name='boot'"))
        return any(r[1] == "boot" for r in self.query("PRAGMA table_info(telemetry)"))

    def rows(self) -> tuple[int, int]:
        """Telemetry rows, and distinct records among them: (device, boot, seq), or (device, seq) without boot."""
        key = "device, boot, seq" if self.has_boot() else "device, seq"
        total, distinct = self.query(f"SELECT COUNT(*), (SELECT COUNT(*) FROM (SELECT DISTINCT {key} FROM "
                                     "telemetry) AS d) FROM telemetry")[0]
        return int(total), int(distinct)

    def count(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM telemetry")[0][0])

    def settle(self, quiet_s: float = 3.0, timeout: float = 120.0) -> tuple[int, int]:
        """:meth:`rows` once the count has not changed for ``quiet_s`` (the controllers drained their queues)."""
        deadline = time.monotonic() + timeout
        last, since = self.rows(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
            time.sleep(0.5)
            now = self.rows()
            if now != last:
                last, since = now, time.monotonic()
        return last
