"""``lepton-edge flash``: send a model to a microcontroller over serial, then check it is active."""

from __future__ import annotations

import argparse

from lepton_edge.commands.serial_args import add_port_arguments, port_options
from lepton_edge.console import ProgressBar, human_bytes, print_json, step


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flash", help="flash a model to a microcontroller over serial",
                       description="Send an artifact (or a .tflite, planned on the way) to the device's inactive "
                                   "slot; the device verifies the hash, loads it and swaps slots. A model whose "
                                   "arena does not fit the RAM the device reports is refused before any byte "
                                   "of it is sent (exit 1).")
    p.add_argument("target", metavar="ARTIFACT_DIR|MODEL.tflite")
    add_port_arguments(p)
    p.add_argument("--force", action="store_true", help="send the model even if the device already runs it")
    p.add_argument("--arena-bytes", type=int, metavar="N",
                   help="the arena the device gives this model (default: the manifest's recommended arena, or the "
                        "planned one for a .tflite); the same model with another arena is a new flash")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from firmware_bridge.host import connect
    from firmware_bridge.payload import load_payload

    options = port_options(args)
    step(f"reading {args.target}")
    payload = load_payload(args.target)
    if args.arena_bytes is not None:
        payload = payload.with_arena(args.arena_bytes)
    with connect(options, hello_timeout=args.hello_timeout) as device:
        hello = device.hello
        fit = device.check_fit(payload)
        step(f"{hello.profile} ({hello.firmware}): arena {fit.ram_needed_bytes:,} of {hello.arena_ram_bytes:,} B")
        bar = ProgressBar("flashing", len(payload.model))
        try:
            result = device.flash(payload, force=args.force, progress=lambda done, total: bar.update(done))
        finally:
            bar.close()
    if args.json:
        print_json({
            "model": str(args.target), "sha256": result.sha256, "model_bytes": result.model_bytes,
            "profile": hello.profile, "firmware": hello.firmware, "slot": result.slot,
            "arena_bytes": result.arena_bytes, "ram_needed_bytes": result.ram_needed_bytes,
            "device_ram_bytes": hello.arena_ram_bytes, "already_active": result.already_active,
            "seconds": round(result.seconds, 3), "line_bytes_out": result.bytes_out,
            "line_bytes_in": result.bytes_in, "efficiency": round(result.efficiency, 4),
            "frames": result.frames, "lost_frames": result.lost_frames, "final_payload_bytes": result.final_payload,
            "self_test": result.self_test, "verified": True,
        })
        return 0
    if result.already_active:
        print(f"{args.target}: {hello.profile} on {options.url} already runs this model "
              f"(sha256 {result.sha256[:16]}, slot {result.slot}); nothing sent (--force to send anyway)")
        return 0
    rate = result.model_bytes / result.seconds if result.seconds > 0 else 0.0
    print(f"flashed {args.target} ({human_bytes(result.model_bytes)}, sha256 {result.sha256[:16]}) to "
          f"{hello.profile} on {options.url}: slot {result.slot} active, arena {result.arena_bytes:,} B; "
          f"{result.seconds:.2f} s, {human_bytes(rate)}/s, line efficiency {result.efficiency:.3f}, "
          f"{result.lost_frames} frame(s) resent" + ("; self-test passed" if result.self_test == "passed" else ""))
    return 0
