"""``lepton-edge inspect``: what a .tflite model contains and whether a device profile can run it."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path
from typing import Any

from lepton_edge.console import human_bytes, print_json, render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="summarise a .tflite model (operators, MACs, memory, inputs, outputs)",
                       description="Summarise a .tflite model: size, operators by kind with their MACs, weights, "
                                   "activations, inputs and outputs; with --profile, the operators and tensor "
                                   "types its runtime lacks and an estimated latency.")
    p.add_argument("model", metavar="MODEL.tflite",
                   help="a .tflite file, or an artifact directory (its manifest's preprocessing spec is shown too)")
    p.add_argument("--profile", metavar="NAME", help="check operators and types against a device profile")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.inspection import inspect_model
    from lepton_edge.profiles import load_optional_profile
    from lepton_edge.tflite.reader import read_model_file

    profile = load_optional_profile(args.profile)
    model_path, preprocess = _artifact_parts(Path(args.model))
    model = read_model_file(model_path)
    report = inspect_model(model, profile=profile, source=str(args.model))
    if preprocess is not None:
        report = dataclasses.replace(report, preprocess=preprocess)
    if args.json:
        print_json(report.to_dict())
    else:
        _print_human(report)
    sys.stdout.flush()
    return 0


def _artifact_parts(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """The model file to read and the preprocessing spec of the artifact it belongs to (if any).

    An artifact directory: its model.tflite and manifest.json. A .tflite file: the manifest.json beside
    it, when that manifest describes this very file (its sha256)."""
    from lepton_edge.artifact import MANIFEST_FILE, MODEL_FILE, parse_manifest
    from lepton_edge.errors import BadInput

    directory = path.is_dir()
    model_path = path / MODEL_FILE if directory else path
    manifest_path = (path if directory else path.parent) / MANIFEST_FILE
    if directory and not manifest_path.is_file():
        raise BadInput(f"{path}: is a directory without {MANIFEST_FILE}, not an artifact")
    if not manifest_path.is_file() or not model_path.is_file():
        return model_path, None
    try:
        manifest = parse_manifest(manifest_path.read_bytes(), str(manifest_path))
    except (BadInput, OSError):
        if directory:
            raise
        return model_path, None
    if manifest["model"]["sha256"] != hashlib.sha256(model_path.read_bytes()).hexdigest():
        if directory:
            raise BadInput(f"{model_path}: sha256 does not match {manifest_path}")
        return model_path, None
    spec = manifest.get("preprocess")
    return model_path, spec if isinstance(spec, dict) else None


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
    if r.preprocess is not None:
        from lepton_edge.preprocess.spec import parse_spec, spec_to_inline

        spec = parse_spec(r.preprocess, "manifest.json")
        print(f"\npreprocess (manifest.json, signed with the model): {spec_to_inline(spec)}")
        print("  " + ", ".join(f"{k} = {v}" for k, v in r.preprocess.items()))

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
