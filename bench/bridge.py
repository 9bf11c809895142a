"""Benchmark the serial bridge: flashing time and payload efficiency on the simulated device.

    .venv/bin/python bench/bridge.py [--baud 115200 921600] [--models kws ic ad] [--json]
                                     [--drop-rate P --corrupt-rate P]

The simulator (``lepton-edge device-sim``, a child process on a pseudo-terminal) paces its line at
the given baud (10 bits a byte) on a clean line. Flashing time runs from MODEL_BEGIN to the check
after the commit; efficiency is model bytes over all bytes on the line, both directions; line use is
the time the model's bytes alone need at that baud over the flashing time. Exit 1 if any efficiency
is below 0.9 on a clean line. With ``--drop-rate``/``--corrupt-rate`` the line is noisy (both ways)
and the table shows where the frame size settled.
"""

from __future__ import annotations

import argparse
import select
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firmware_bridge.host import connect  # noqa: E402
from firmware_bridge.link import PortOptions  # noqa: E402
from firmware_bridge.payload import load_payload  # noqa: E402
from lepton_edge.console import human_bytes, print_json, render_table  # noqa: E402

MLPERF = REPO.parent / "shared" / "models" / "mlperf-tiny"
MODELS = {"kws": MLPERF / "kws" / "kws_ref_model_int8.tflite",
          "ic": MLPERF / "ic" / "pretrainedResnet_int8.tflite",
          "ad": MLPERF / "ad" / "ad01_int8.tflite"}
PROFILE = "stm32h743"  # room for every MLPerf Tiny model
TARGET_EFFICIENCY = 0.9


def start_simulator(baud: int, state_dir: Path, noise: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "lepton_edge", "device-sim", "--profile", PROFILE,
                             "--print-port", "--baud", str(baud), "--state-dir", str(state_dir), *noise],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    port = proc.stdout.readline().decode().strip() if ready else ""
    if not port:
        proc.kill()
        raise SystemExit("device-sim did not start")
    return proc, port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baud", type=int, nargs="+", default=[115200, 921600])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--drop-rate", type=float, default=0.0)
    ap.add_argument("--corrupt-rate", type=float, default=0.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    noisy = args.drop_rate > 0 or args.corrupt_rate > 0
    noise = ["--drop-rate", str(args.drop_rate), "--corrupt-rate", str(args.corrupt_rate), "--seed", "1"]
    present = [m for m in args.models if MODELS[m].exists()]
    if not present:
        print(f"no MLPerf Tiny models under {MLPERF}", file=sys.stderr)
        return 2
    payloads = {m: load_payload(MODELS[m]) for m in present}  # planning is not part of flashing
    rows, records = [], []
    for baud in args.baud:
        with tempfile.TemporaryDirectory() as state:
            proc, port = start_simulator(baud, Path(state), noise if noisy else [])
            try:
                with connect(PortOptions(port, baud)) as device:
                    for name in present:
                        r = device.flash(payloads[name], force=True)
                        ideal_s = r.model_bytes * 10 / baud
                        rows.append((f"{baud:,}", name, human_bytes(r.model_bytes), f"{r.seconds:.2f}",
                                     f"{r.model_bytes / r.seconds / 1024:.1f}", f"{ideal_s / r.seconds:.3f}",
                                     f"{r.bytes_out + r.bytes_in:,}", f"{r.efficiency:.4f}", r.final_payload))
                        records.append({"baud": baud, "model": name, "model_bytes": r.model_bytes,
                                        "seconds": round(r.seconds, 3), "line_bytes_out": r.bytes_out,
                                        "line_bytes_in": r.bytes_in, "efficiency": round(r.efficiency, 4),
                                        "line_use": round(ideal_s / r.seconds, 4), "frames": r.frames,
                                        "lost_frames": r.lost_frames, "frame_payload": r.final_payload})
            finally:
                proc.terminate()
                proc.wait(10)
    if args.json:
        print_json(records)
    else:
        print(render_table(["baud", "model", "size", "flash s", "KiB/s", "line use", "line bytes",
                            "efficiency", "frame"], rows, align="llrrrrrrr"))
    worst = min(r["efficiency"] for r in records)
    if worst < TARGET_EFFICIENCY and not noisy:
        print(f"efficiency {worst:.3f} is below {TARGET_EFFICIENCY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
