"""``lepton-edge validate``: the device's outputs against TFLite Micro on the host, on random inputs."""

from __future__ import annotations

import argparse

from lepton_edge.commands.serial_args import add_port_arguments, port_options
from lepton_edge.console import ProgressBar, print_json, render_table
from lepton_edge.errors import BadInput, CheckFailed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a device's outputs against TFLite Micro on the host",
                       description="Run N random inputs on the device and on TFLite Micro on the host (same "
                                   "model bytes, same arena). Integer outputs must match bit for bit, float "
                                   "outputs within --atol + --rtol * |reference|. Exit 1 when any sample is out.")
    p.add_argument("model", metavar="MODEL.tflite|ARTIFACT_DIR", help="the model the device runs")
    add_port_arguments(p)
    p.add_argument("--samples", type=int, default=10, metavar="N", help="random inputs to run (default 10)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the random inputs (default 0)")
    p.add_argument("--atol", type=float, default=None, metavar="X", help="absolute tolerance for float outputs")
    p.add_argument("--rtol", type=float, default=None, metavar="X", help="relative tolerance for float outputs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.host import connect
    from firmware_bridge.payload import reference_for
    from firmware_bridge.validation import DEFAULT_ATOL, DEFAULT_RTOL, validate_on_device

    if args.samples < 1:
        raise BadInput(f"--samples must be >= 1, got {args.samples}")
    atol = DEFAULT_ATOL if args.atol is None else args.atol
    rtol = DEFAULT_RTOL if args.rtol is None else args.rtol
    if atol < 0 or rtol < 0:
        raise BadInput("--atol and --rtol must be >= 0")
    options = port_options(args)
    with connect(options, hello_timeout=args.hello_timeout) as device:
        info = device.info()
        active = info.active
        if active is None:
            raise CheckFailed(f"{device.hello.profile} on {options.url} has no model; flash {args.model} first")
        found = reference_for(args.model, active.sha256)
        if found is None:
            raise CheckFailed(f"{device.hello.profile} on {options.url} runs {active.name or 'another model'} "
                              f"(sha256 {active.sha256[:16]}), not {args.model}; flash it first")
        model, host_arena = found
        # The host reference sizes its own arena from the host measurement, never from the device's.
        reference_arena = host_arena or active.arena_bytes
        bar = ProgressBar("validating", args.samples)
        try:
            report = validate_on_device(device, model, reference_arena, samples=args.samples, seed=args.seed,
                                        atol=atol, rtol=rtol, progress=lambda done, total: bar.update(done))
        finally:
            bar.close()
        hello = device.hello
    out = report.to_dict()
    out.update(model=str(args.model), sha256=active.sha256, profile=hello.profile, firmware=hello.firmware,
               arena_bytes=active.arena_bytes, reference_arena_bytes=reference_arena)
    if args.json:
        print_json(out)
    else:
        kind = "bit-exact (integer outputs)" if report.integer_outputs else f"within atol {atol:g} + rtol {rtol:g}"
        rows = [("samples", report.samples),
                ("bit-exact", f"{report.bit_exact} / {report.samples}"),
                ("within tolerance" if not report.integer_outputs else "matching", f"{report.within_tolerance} / "
                 f"{report.samples}"),
                ("largest difference", f"{report.max_abs_diff:g}"),
                (_latency_label(hello.firmware),
                 f"{out['device_latency_us_p50']:,} / {out['device_latency_us_p90']:,} us"),
                ("host TFLite Micro p50", f"{out['host_latency_us_p50']:,} us")]
        print(f"{args.model} on {hello.profile} ({hello.firmware}, {options.url}): required {kind}")
        print(render_table(["check", "value"], rows, align="lr"))
    if not report.ok:
        raise CheckFailed(f"{report.failed} of {report.samples} sample(s) out of tolerance ({report.first_failure})")
    return 0


def _latency_label(firmware: str) -> str:
    """An emulated board's microseconds are the emulator's, not a chip's: say so where they are shown."""
    if "qemu" in firmware.lower():
        return "device latency p50 / p90 (QEMU emulator time, not a board's)"
    return "device latency p50 / p90"
