"""What the hardware-in-the-loop tests share: the simulator process, the target, host references."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared").resolve()
MLPERF_INT8 = {
    "kws": SHARED / "models" / "mlperf-tiny" / "kws" / "kws_ref_model_int8.tflite",
    "ic": SHARED / "models" / "mlperf-tiny" / "ic" / "pretrainedResnet_int8.tflite",
    "ad": SHARED / "models" / "mlperf-tiny" / "ad" / "ad01_int8.tflite",
}
DEFAULT_SIM_PROFILE = "arduino-nano-33-ble"
DEFAULT_SIM_BAUD = 921600  # fast enough for the suite, slow enough for a reset to land mid-transfer


def require_model(name: str) -> Path:
    path = MLPERF_INT8[name]
    if path.exists():
        return path
    message = f"{path} is missing: the MLPerf Tiny models live in ../shared beside the repo"
    if os.environ.get("LEPTON_REQUIRE_SHARED") == "1":
        pytest.fail(message + " (LEPTON_REQUIRE_SHARED=1)")
    pytest.skip(message)


@dataclass
class Simulator:
    """``lepton-edge device-sim`` in a child process; its slots outlive it in ``state_dir``."""

    profile: str
    baud: int
    state_dir: Path
    proc: subprocess.Popen | None = None
    port: str = ""
    log: Path = field(init=False)
    extra_args: tuple = ()  # more device-sim options (--trusted-key ...)

    def __post_init__(self) -> None:
        self.log = self.state_dir.parent / "device-sim.log"

    def start(self, timeout: float = 30.0) -> str:
        self.stop()
        cmd = [sys.executable, "-m", "lepton_edge", "device-sim", "--profile", self.profile, "--print-port",
               "--baud", str(self.baud), "--state-dir", str(self.state_dir), *self.extra_args]
        err = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        err.close()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"device-sim did not print its port within {timeout} s; see {self.log}")
        self.port = line
        return line

    def kill(self) -> None:
        """Pull the plug: no goodbye, the pseudo-terminal just vanishes."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None


@dataclass
class Target:
    """The device under test: a board on ``port``, or the simulator."""

    port: str
    baud: int
    profile: str | None
    sim: Simulator | None = None

    @property
    def simulated(self) -> bool:
        return self.sim is not None

    def restart_sim(self) -> None:
        assert self.sim is not None
        self.port = self.sim.start()

    def connect(self, **kwargs):
        from firmware_bridge.host import connect
        from firmware_bridge.link import PortOptions

        device = connect(PortOptions(self.port, self.baud), **kwargs)
        if self.profile and not self.simulated and device.hello.profile != self.profile:
            device.close()
            pytest.fail(f"the board on {self.port} says it is {device.hello.profile}, not {self.profile}")
        return device

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = dict(os.environ)
        env.pop("LEPTON_DEBUG", None)
        return subprocess.run([sys.executable, "-m", "lepton_edge", *args, "--port", self.port,
                               "--baud", str(self.baud)], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)


def reference_outputs(payload, inputs: bytes) -> bytes:
    """TFLite Micro on the host, same bytes, the device's arena or the manifest's host figure when that is
    larger (a recommendation measured on a 32-bit target can be too small for x86-64): what the device
    must answer."""
    import numpy as np

    from firmware_bridge.payload import host_arena_bytes
    from firmware_bridge.validation import split_outputs
    from lepton_edge.runtime.tflm import load_tflm

    arena = host_arena_bytes(payload.manifest, payload.arena_bytes) or payload.arena_bytes
    runner = load_tflm(payload.model, arena)
    try:
        arrays = split_outputs(inputs, runner.inputs)
        return b"".join(np.ascontiguousarray(o).tobytes() for o in runner.run(arrays))
    finally:
        runner.close()


def wait_for(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
