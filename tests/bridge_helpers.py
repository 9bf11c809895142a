"""Helpers for the serial-bridge tests: the simulated device as a process (``lepton-edge device-sim``)."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path

from conftest import REPO


class SimProcess:
    def __init__(self, state_dir: Path, *args: str, profile: str = "arduino-nano-33-ble") -> None:
        cmd = [sys.executable, "-m", "lepton_edge", "device-sim", "--profile", profile, "--print-port",
               "--state-dir", str(state_dir), *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        self.port = self.proc.stdout.readline().decode().strip() if ready else ""
        assert self.port, self.proc.stderr.read1(4096) if self.proc.poll() is not None else "no port"

    def stats(self):
        from firmware_bridge.host import connect
        from firmware_bridge.link import PortOptions

        with connect(PortOptions(self.port)) as device:
            return device.stats(), device.info()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
