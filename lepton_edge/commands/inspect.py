"""``lepton-edge inspect``: what a .tflite model contains and whether a device profile can run it."""

from __future__ import annotations

import argparse
import sys

from lepton_edge.console import human_bytes, print_json, render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a .tflite model (operators, MACs, memory, inputs, outputs)",
                       description="Summarise a .tflite model: size, operators by kind with their MACs, weights, "
                                   "activations, inputs and outputs; with --profile, the operators and tensor "
                                   "types its runtime lacks and an estimated latency.")
    p.add_argument("model", metavar="MODEL.tflite")
    p.add_argument("--profile", metavar="NAME", help="check operators and types against a device profile")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.inspection import inspect_model
    from lepton_edge.profiles import load_optional_profile
    from lepton_edge.tflite.reader import read_model_file

    profile = load_optional_profile(args.profile)
    model = read_model_file(args.model)
    report = inspect_model(model, profile=profile, source=str(args.model))
    if args.json:
        print_json(report.to_dict())
    else:
        _print_human(report)
    sys.stdout.flush()
    return 0


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join(str(d) for d in shape) + "]"


def _quant(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return f"per-channel ({len(value)})"
    return f"{value:.6g}"


def _print_human(r) -> None:
    summary = [
        ("model", r.source),
        ("file size", f"{r.file_size:,} B ({human_bytes(r.file_size)})"),
        ("schema version", r.version),
        ("subgraphs", r.subgraph_count),
        ("operators / tensors", f"{r.operator_count} / {r.tensor_count}"),
        ("weights (constant data)", f"{r.weight_bytes:,} B ({human_bytes(r.weight_bytes)})"),
        ("activations (sum, not peak)", f"{r.activation_bytes:,} B ({human_bytes(r.activation_bytes)})"),
        ("MACs", f"{r.total_macs:,}"),
        ("metadata", ", ".join(r.metadata) or "-"),
    ]
    print(render_table(["property", "value"], summary, align="ll"))

    print()
    total = r.total_macs or 1
    print(render_table(
        ["operator", "count", "MACs", "share"],
        [(k.opcode, k.count, f"{k.macs:,}", f"{100.0 * k.macs / total:.1f}%") for k in r.ops_by_kind],
        align="lrrr"))

    print()
    rows = [("input", t.name, _shape(t.shape), t.dtype, _quant(t.scale), _quant(t.zero_point)) for t in r.inputs]
    rows += [("output", t.name, _shape(t.shape), t.dtype, _quant(t.scale), _quant(t.zero_point)) for t in r.outputs]
    print(render_table(["", "name", "shape", "dtype", "scale", "zero point"], rows, align="llllrr"))

    if r.profile is not None:
        p = r.profile
        latency = "-" if p.latency_ms_estimate is None else f"{p.latency_ms_estimate:.3g} ms (estimate)"
        print()
        print(render_table(
            ["profile", "runtime", "unsupported operators", "unsupported types", "latency estimate"],
            [(p.profile, f"{p.runtime} ({p.kernel_library})", ", ".join(p.unsupported_ops) or "none",
              ", ".join(p.unsupported_types) or "none", latency)],
            align="lllll"))
        for why in p.unsupported_reasons:
            print(f"not run on {p.profile}: {why}")
        print("latency is an estimate: total MACs / (clock x MACs per cycle), no memory stalls, "
              "non-MAC operators free")
