"""Benchmark the reference firmware on the emulated boards: arena figures measured on the target,
firmware size, emulator invoke time and bit-exactness against the host build.

    .venv/bin/python bench/firmware.py [--models kws ic ad] [--samples 20] [--json]

For each MLPerf Tiny int8 model (../shared/models/mlperf-tiny), planned once as ``flash`` plans it:
the recommended arena measured on the host (x86-64 TFLite Micro, reference kernels: the ``tflite-micro``
wheel) and on the target (the qemu-m4 firmware, Cortex-M4 + CMSIS-NN, its own arena probe), their ratio,
the target's head and tail, and the qemu-m7 figure. Then every model is flashed to qemu-m4, qemu-m7 and
the host build, each with the arena measured on that build (``flash --arena-bytes`` = the figure),
and the same random inputs run on all three: the boards' outputs must equal the host build's (TFLM
reference kernels, same pinned tree) byte for byte, and the host reference of ``validate`` (the
wheel). Invoke times on QEMU are EMULATOR time (TCG on this machine), not a board's. Exit 1 on any
mismatch; exit 2 when the models or the firmware builds are missing (``lepton-edge firmware build
--board qemu-m4`` and so on build them).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from firmware_bridge.host import connect  # noqa: E402
from firmware_bridge.link import PortOptions  # noqa: E402
from firmware_bridge.payload import ModelPayload  # noqa: E402
from firmware_bridge.validation import random_inputs, validate_on_device  # noqa: E402
from lepton_edge.console import print_json, render_table  # noqa: E402

MLPERF = REPO.parent / "shared" / "models" / "mlperf-tiny"
MODELS = {"kws": MLPERF / "kws" / "kws_ref_model_int8.tflite",
          "ic": MLPERF / "ic" / "pretrainedResnet_int8.tflite",
          "ad": MLPERF / "ad" / "ad01_int8.tflite"}
BOARDS = ("qemu-m4", "qemu-m7", "host")
PROFILE = "stm32l4r5"  # qemu-m4 plays it


def _builds() -> dict:
    from lepton_edge.firmware_build.build import cached_build

    return {b: cached_build(b) for b in BOARDS}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    present = [m for m in args.models if MODELS[m].exists()]
    if not present:
        print(f"no MLPerf Tiny models under {MLPERF}", file=sys.stderr)
        return 2
    builds = _builds()
    missing = [b for b, fw in builds.items() if fw is None]
    if missing or shutil.which("qemu-system-arm") is None:
        print("firmware builds missing: " + ", ".join(missing or ["qemu-system-arm"]) + "; run "
              + " && ".join(f"lepton-edge firmware build --board {b}" for b in missing or BOARDS), file=sys.stderr)
        return 2

    from lepton_edge.firmware_build.boards import BOARDS as SPECS
    from lepton_edge.firmware_build.launch import run_probe, start_board
    from lepton_edge.firmware_build.target import FirmwareTarget
    from lepton_edge.plan.planner import plan_model
    from lepton_edge.profiles import load_profile
    from lepton_edge.runtime.base import io_specs
    from lepton_edge.tflite.reader import parse_model

    profile = load_profile(PROFILE)
    m4 = FirmwareTarget(SPECS["qemu-m4"], builds["qemu-m4"])
    records: dict[str, dict] = {}
    for name in present:
        # Planned as flash plans a bare .tflite (deterministic), measured on the host and on qemu-m4.
        plan = plan_model(MODELS[name].read_bytes(), name, profile=profile, search_seconds=0.0, target=m4)
        if not plan.on_target:
            print(f"{name}: the qemu-m4 firmware could not measure it: {plan.target_error}", file=sys.stderr)
            return 1
        per_board = {"qemu-m4": plan.recommended_arena_bytes}
        for board in ("qemu-m7", "host"):
            per_board[board] = run_probe(builds[board], plan.planned_model).min_arena
        records[name] = {
            "model": name, "model_bytes": len(plan.planned_model),
            "host_recommended_bytes": plan.host_recommended_arena_bytes,
            "target_recommended_bytes": plan.recommended_arena_bytes,
            "ratio": round(plan.recommended_arena_bytes / plan.host_recommended_arena_bytes, 4),
            "target_head_bytes": plan.target_head_bytes, "target_tail_bytes": plan.tail_bytes,
            "host_tail_bytes": plan.host_tail_bytes, "measured_on": plan.measured_on,
            "arena_by_board": per_board, "_model": plan.planned_model,
        }

    outputs: dict[str, dict[str, list[bytes]]] = {n: {} for n in present}
    times: dict[str, dict[str, list[int]]] = {n: {} for n in present}
    reference: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lepton-bench-fw-") as tmp:
        for board in BOARDS:
            running = start_board(builds[board], Path(tmp) / f"{board}.state")
            try:
                with connect(PortOptions(running.port)) as device:
                    for name in present:
                        rec = records[name]
                        payload = ModelPayload(rec["_model"], rec["arena_by_board"][board], 0, name, name=name)
                        device.flash(payload, force=True)
                        specs, _ = io_specs(parse_model(rec["_model"]))
                        rng = np.random.default_rng(0)
                        outs, us = [], []
                        for _ in range(args.samples):
                            answer = device.invoke(random_inputs(specs, rng))
                            outs.append(answer.outputs)
                            us.append(answer.device_us)
                        outputs[name][board], times[name][board] = outs, us
                        if board == "qemu-m4":  # validate's own check: against the tflite-micro wheel
                            report = validate_on_device(device, rec["_model"], rec["host_recommended_bytes"],
                                                        samples=args.samples)
                            reference[name] = {"bit_exact": report.bit_exact, "samples": report.samples}
            finally:
                running.stop()

    failed = False
    rows = []
    for name in present:
        rec = records[name]
        host_outs = outputs[name]["host"]
        for board in ("qemu-m4", "qemu-m7"):
            same = sum(a == b for a, b in zip(outputs[name][board], host_outs, strict=False))
            rec[f"bit_exact_{board.replace('-', '_')}_vs_host_build"] = same
            failed |= same != args.samples
        rec["bit_exact_qemu_m4_vs_tflite_micro_wheel"] = reference[name]["bit_exact"]
        failed |= reference[name]["bit_exact"] != args.samples
        for board in BOARDS:
            rec[f"invoke_us_p50_{board.replace('-', '_')}"] = int(statistics.median(times[name][board]))
        rows.append((name, f"{rec['host_recommended_bytes']:,}", f"{rec['target_recommended_bytes']:,}",
                     f"{rec['ratio']:.3f}", f"{rec['target_head_bytes']:,}", f"{rec['target_tail_bytes']:,}",
                     f"{rec['arena_by_board']['qemu-m7']:,}",
                     f"{rec['invoke_us_p50_qemu_m4'] / 1000:.1f}", f"{rec['invoke_us_p50_qemu_m7'] / 1000:.1f}",
                     f"{rec['bit_exact_qemu_m4_vs_host_build']}/{args.samples}",
                     f"{rec['bit_exact_qemu_m7_vs_host_build']}/{args.samples}",
                     f"{rec['bit_exact_qemu_m4_vs_tflite_micro_wheel']}/{args.samples}"))
        rec.pop("_model")
    sizes = [(b, SPECS[b].measured_on(), f"{fw.text_bytes:,}", f"{fw.data_bytes:,}", f"{fw.bss_bytes:,}",
              f"{fw.arena_capacity_bytes:,}") for b, fw in builds.items()]
    if args.json:
        print_json({"models": list(records.values()), "samples": args.samples,
                    "firmware": {b: {"text_bytes": fw.text_bytes, "data_bytes": fw.data_bytes,
                                     "bss_bytes": fw.bss_bytes, "arena_capacity_bytes": fw.arena_capacity_bytes}
                                 for b, fw in builds.items()},
                    "invoke_time_note": "QEMU emulator time (TCG on this machine), not a board's",
                    "ok": not failed})
        return 1 if failed else 0
    print(f"Arena: recommended by the host (x86-64 TFLite Micro, reference kernels) vs measured on the target "
          f"({records[present[0]]['measured_on']}); the model planned once, as flash plans it")
    print(render_table(["model", "host rec. B", "qemu-m4 rec. B", "m4/host", "m4 head B", "m4 tail B",
                        "qemu-m7 rec. B", "m4 invoke ms*", "m7 invoke ms*", "m4 = host build",
                        "m7 = host build", "m4 = wheel"], rows, align="lrrrrrrrrrrr"))
    print("* EMULATOR time: QEMU (TCG) on this machine, SysTick at 25 MHz; not a board's timing.")
    print(f"bit-exact: {args.samples} seeded random inputs; each board flashed with --arena-bytes = its own "
          "measured figure; 'host build' = the firmware's host port (same TFLM tree, reference kernels), "
          "'wheel' = validate's reference (the tflite-micro wheel)")
    print()
    print(render_table(["firmware", "core, kernels", "text B", "data B", "bss B", "arena capacity B"], sizes,
                       align="llrrrr"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
