"""The board joins a fleet through ``lepton-edge gateway`` and takes two signed updates, every step the
command a user would type: ``keys``, ``convert``, ``fleet serve`` (with a real Mosquitto), ``gateway``,
``deploy --wait``. Afterwards the board runs the second model, confirmed."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from hil_tests.support import REPO, require_model
from lepton_edge.tools.mosquitto import Broker, free_port

DEVICE = "hil-board"


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LEPTON_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "lepton_edge", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _daemon(*args: str, ready: str, timeout: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    # A thread reads the output for as long as the daemon runs: select() on the pipe misses lines that a
    # readline() already pulled into the file's buffer, and an unread pipe would block the daemon's logging.
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name=f"{args[0]}-output", daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if ready in line:
            return proc
    proc.kill()
    raise AssertionError(f"lepton-edge {args[0]} did not start: " + "".join(seen))


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def test_the_board_takes_signed_updates_through_the_gateway(target, tmp_path):
    if not target.profile:
        pytest.skip("the gateway test needs --profile for a board (it goes into the gateway's configuration)")
    assert _cli("keys", "generate", str(tmp_path / "keys")).returncode == 0
    artifacts = []
    for version, name in enumerate(("kws", "ad"), start=1):
        out = tmp_path / f"{name}-v{version}"
        made = _cli("convert", str(require_model(name)), "--profile", target.profile, "-o", str(out), "--quantize",
                    "none", "--version", str(version), "--sign-key", str(tmp_path / "keys" / "signing.key"))
        assert made.returncode == 0, made.stderr
        artifacts.append(out)

    with Broker(tmp_path / "broker") as broker:
        http = f"127.0.0.1:{free_port()}"
        controller = _daemon("fleet", "serve", "--broker", broker.url(), "--fleet", "hil", "--store",
                             str(tmp_path / "fleet"), "--http", http, ready="fleet controller")
        config = tmp_path / "gateway.toml"
        config.write_text(f"""
[device]
id = "{DEVICE}"
fleet = "hil"
profile = {json.dumps(target.profile)}

[store]
dir = {json.dumps(str(tmp_path / "gateway-store"))}

[api]
listen = "127.0.0.1:0"

[security]
trusted_keys = [{json.dumps(str(tmp_path / "keys" / "signing.pub"))}]

[mqtt]
broker = "{broker.url()}"
telemetry_interval_s = 1
""")
        gateway = _daemon("gateway", "--config", str(config), "--port", target.port, "--baud", str(target.baud),
                          ready="listening on")
        try:
            for artifact in artifacts:
                deployed = _cli("deploy", str(artifact), "--controller", f"http://{http}", "--device", DEVICE,
                                "--wait", "--timeout", "180", "--json")
                assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        finally:
            assert _stop(gateway) == 0
            _stop(controller)

    manifest = json.loads((artifacts[-1] / "manifest.json").read_bytes())
    with target.connect() as device:
        active = device.info().active
    assert active is not None and active.sha256 == manifest["model"]["sha256"]
    assert active.version == 2 and active.confirmed
