"""``lepton-edge demo``: the whole story on one machine, each step the real command a user would type.

Train a small keyword spotter, convert it for a microcontroller (int8, planned arena, signed), flash
it to a simulated board over a pseudo-terminal and validate it bit for bit; then start Mosquitto, the
fleet controller, an agent (a Linux board) and a gateway (a simulated microcontroller on a serial
line), deploy the model over the air to both, query the agent, watch telemetry, and deploy a second
version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

DEFAULT_PROFILE = "stm32l4r5"
FLEET = "demo"
DEVICE = "demo-pi"
MCU = "demo-mcu"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on a model the demo trains",
                       description=__doc__.splitlines()[0])
    p.add_argument("--profile", default=DEFAULT_PROFILE, metavar="NAME",
                   help=f"microcontroller profile to convert for (default {DEFAULT_PROFILE})")
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="where the demo writes its files (default demo-out)")
    p.set_defaults(func=run)


def _heading(text: str) -> None:
    print(f"\n\033[1m$ {text}\033[0m" if sys.stdout.isatty() else f"\n$ {text}", flush=True)


def _cli(*args: object, check: bool = True) -> None:
    """Run ``lepton-edge ARGS`` as a user would, its output on this terminal."""
    words = [str(a) for a in args]
    _heading("lepton-edge " + " ".join(words))
    code = subprocess.call([sys.executable, "-m", "lepton_edge", *words])
    if check and code != 0:
        from lepton_edge.errors import CheckFailed

        raise CheckFailed(f"demo step 'lepton-edge {words[0]}' failed with exit code {code}")


def _daemon(stack: ExitStack, logs: Path, name: str, args: list[str], ready: str, timeout: float = 60) -> list[str]:
    """Start ``lepton-edge ARGS`` in the background; return its stdout lines up to the one containing ``ready``."""
    log = open(logs / f"{name}.log", "w")
    stack.callback(log.close)
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", *args], stdout=subprocess.PIPE, stderr=log,
                            text=True)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    stack.callback(stop)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if ready in line:
            print("\n".join(f"  [{name}] {x}" for x in lines), flush=True)
            return lines
    from lepton_edge.errors import CheckFailed

    raise CheckFailed(f"demo: {name} did not start; see {logs / (name + '.log')}")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from lepton_edge.profiles import load_profile
    from lepton_edge.tools.mosquitto import Broker
    from lepton_edge.tools.ports import free_port
    from lepton_edge.tools.samples import keyword_data, train_keyword_model

    profile = load_profile(args.profile)  # fail early, with one line, on a wrong name
    out = Path(args.out).resolve()
    for stale in ("kws-v1", "kws-v2", "fleet", "agent-store", "gateway-store", "sim-state", "mcu-state", "logs"):
        shutil.rmtree(out / stale, ignore_errors=True)
    logs = out / "logs"
    logs.mkdir(parents=True)
    print(f"lepton-edge demo: a keyword spotter for {profile.name} ({profile.board}) and a Linux board fleet; "
          f"files in {out}", flush=True)

    _heading("train the sample model (Keras, synthetic 49x10 keyword features, 12 classes)")
    keras_model = train_keyword_model(out / "kws.keras")
    x, y = keyword_data(256, seed=1)
    np.save(out / "calibration.npy", x[:128])
    np.savez(out / "eval.npz", x=x[128:], y=y[128:])
    np.savez(out / "train.npz", **dict(zip("xy", keyword_data(1200, seed=2), strict=True)))
    print(f"{keras_model}; calibration {out / 'calibration.npy'}, held-out {out / 'eval.npz'}, "
          f"fine-tuning {out / 'train.npz'}")

    keys = out / "keys"
    if not (keys / "signing.key").exists():
        _cli("keys", "generate", keys)
    v1 = out / "kws-v1"
    _cli("convert", keras_model, "--profile", profile.name, "-o", v1, "--name", "kws", "--version", "1",
         "--calibration", out / "calibration.npy", "--eval", out / "eval.npz", "--sign-key", keys / "signing.key")
    _cli("plan", v1 / "model.tflite", "--profile", profile.name, "--plot", out / "kws-v1.plan.png")

    device = _microcontroller(profile.name)
    with ExitStack() as stack:
        lines = _daemon(stack, logs, "device-sim", device.args(out / "sim-state"), ready="/")
        port = lines[-1].split()[-1]
        _cli("flash", v1, "--port", port)
        _cli("validate", v1 / "model.tflite", "--port", port, "--samples", "5")

    with ExitStack() as stack:
        broker = stack.enter_context(Broker(logs / "mosquitto"))
        broker_url = broker.url()
        print(f"\n  [mosquitto] {broker_url}", flush=True)
        http = f"127.0.0.1:{free_port()}"
        _daemon(stack, logs, "controller", ["fleet", "serve", "--broker", broker_url, "--fleet", FLEET,
                                            "--store", str(out / "fleet"), "--http", http], ready="fleet controller")
        agent_config = _write_agent_config(out / "agent.toml", DEVICE, "raspberry-pi-4", "litert", out / "agent-store",
                                           broker_url, f"127.0.0.1:{free_port()}", keys / "signing.pub")
        lines = _daemon(stack, logs, "agent", ["agent", "--config", str(agent_config)], ready="listening on")
        agent_url = lines[-1].split()[-1]
        lines = _daemon(stack, logs, "mcu", device.args(out / "mcu-state"), ready="/")
        gateway_config = _write_agent_config(out / "gateway.toml", MCU, profile.name, "tflm", out / "gateway-store",
                                             broker_url, f"127.0.0.1:{free_port()}", keys / "signing.pub")
        lines = _daemon(stack, logs, "gateway", ["gateway", "--config", str(gateway_config), "--port",
                                                 lines[-1].split()[-1]], ready="listening on")
        gateway_url = lines[-1].split()[-1]
        devices = ["--device", DEVICE, "--device", MCU]

        _cli("deploy", v1, "--controller", f"http://{http}", *devices, "--wait", "--timeout", "60")
        _infer(agent_url, x[128:], y[128:])
        _infer(gateway_url, x[128:160], y[128:160])  # run on the microcontroller, over the serial line
        time.sleep(2.5)  # a couple of telemetry intervals
        _cli("fleet", "watch", "--broker", broker_url, "--fleet", FLEET, "--once", "--wait", "2")

        v2 = out / "kws-v2"
        _cli("convert", keras_model, "--profile", profile.name, "-o", v2, "--name", "kws", "--version", "2",
             "--calibration", out / "calibration.npy", "--eval", out / "eval.npz", "--prune", "0.5",
             "--train", out / "train.npz", "--sign-key", keys / "signing.key")
        _cli("deploy", v2, "--controller", f"http://{http}", *devices, "--wait", "--timeout", "60")
        _infer(agent_url, x[128:], y[128:])
        time.sleep(2.5)
        _cli("fleet", "watch", "--broker", broker_url, "--fleet", FLEET, "--once", "--wait", "2")

    print(f"\nDone. The arena plan's picture: {out / 'kws-v1.plan.png'}; logs of the daemons: {logs}")
    return 0


class _Device:
    """What plays the microcontroller: the reference firmware on an emulated board, or the Python simulator."""

    def __init__(self, profile: str, board: str | None) -> None:
        self.profile, self.board = profile, board

    def args(self, state: Path) -> list[str]:
        if self.board:
            return ["device-sim", "--board", self.board, "--print-port", "--state", str(state / "slots.bin")]
        return ["device-sim", "--profile", self.profile, "--print-port", "--baud", "921600", "--state-dir",
                str(state)]


def _microcontroller(profile: str) -> _Device:
    """The board that plays ``profile`` when its firmware build is cached and QEMU is here; say which."""
    from lepton_edge.firmware_build.boards import board_for_profile
    from lepton_edge.firmware_build.build import cached_build

    board = board_for_profile(profile)
    if board is None:
        print(f"\nthe microcontroller: the Python simulator playing {profile} (no emulated board plays it)",
              flush=True)
        return _Device(profile, None)
    fw = cached_build(board.name)
    if fw is not None and shutil.which("qemu-system-arm"):
        print(f"\nthe microcontroller: the reference firmware on {board.name} ({board.core}, {board.kernels}, "
              f"under QEMU {board.machine}; it plays {fw.profile}), from the cached build {fw.executable}",
              flush=True)
        return _Device(profile, board.name)
    why = "QEMU is not installed" if fw is not None else f"no cached {board.name} firmware build"
    print(f"\nthe microcontroller: the Python simulator playing {profile} ({why}); "
          f"`lepton-edge firmware build --board {board.name}` builds the firmware, then the demo runs it under "
          f"QEMU (make test builds it too)", flush=True)
    return _Device(profile, None)


def _write_agent_config(path: Path, device: str, profile: str, backend: str, store: Path, broker_url: str,
                        listen: str, public_key: Path) -> Path:
    """The configuration of the agent or of the gateway (they take the same file)."""
    path.write_text(f"""# written by lepton-edge demo
[device]
id = "{device}"
fleet = "{FLEET}"
profile = "{profile}"

[runtime]
backend = "{backend}"

[store]
dir = {json.dumps(str(store))}

[api]
listen = "{listen}"

[security]
require_signature = true
trusted_keys = [{json.dumps(str(public_key))}]

[mqtt]
broker = "{broker_url}"
telemetry_interval_s = 1
""")
    return path


def _infer(agent_url: str, samples, labels) -> None:
    """Ask the agent's local API about held-out samples, as an application on the board would."""
    import http.client
    from urllib.parse import urlsplit

    _heading(f"curl -s {agent_url}/v1/infer -d '{{\"inputs\": [...490 floats...]}}'   # x {len(samples)}")
    url = urlsplit(agent_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)  # one keep-alive connection
    correct, latencies, first = 0, [], None
    for sample, label in zip(samples, labels, strict=True):
        conn.request("POST", "/v1/infer", json.dumps({"inputs": sample.reshape(-1).round(4).tolist()}),
                     {"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        scores = answer["outputs"][0]
        first = first or [round(v, 3) for v in scores]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == int(label))
        latencies.append(answer["latency_ms"])
    conn.close()
    latencies.sort()
    print(f"first answer: outputs {first}")
    print(f"{len(samples)} requests: {correct} right ({correct / len(samples):.0%}), "
          f"invoke latency p50 {latencies[len(latencies) // 2]:.3f} ms")
    with urllib.request.urlopen(f"{agent_url}/v1/status", timeout=10) as response:
        status = json.loads(response.read())
    model = status.get("model") or {}
    print(f"GET /v1/status: device {status['device']['id']}, model {model.get('name')} v{model.get('version')} "
          f"(sha256 {str(model.get('sha256'))[:12]}), slot {status.get('slot')}, backend {status.get('backend')}, "
          f"{status.get('inferences')} inferences")
