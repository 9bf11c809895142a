"""``lepton-edge plan``: the static arena plan of a .tflite model."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from lepton_edge.commands.measure_args import add_measure_argument
from lepton_edge.console import human_bytes, print_json, render_table
from lepton_edge.errors import BadInput, CheckFailed
from lepton_edge.fsio import atomic_write_bytes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="plan a model's tensor arena (and embed the plan)",
                       description="Compute tensor lifetimes and arena offsets, measure the arena under TFLite "
                                   "Micro, and optionally embed the plan so stock TFLite Micro uses it.")
    p.add_argument("model", metavar="MODEL.tflite")
    p.add_argument("--profile", metavar="NAME", help="check the arena and model against a device profile")
    p.add_argument("--embed", metavar="OUT.tflite", help="write a copy of the model with the plan embedded")
    p.add_argument("--plot", metavar="PLAN.png", help="draw the plan")
    p.add_argument("--no-measure", action="store_true", help="estimate tail and arena instead of running TFLite Micro")
    add_measure_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.firmware_build.target import resolve_measure
    from lepton_edge.plan.planner import plan_model
    from lepton_edge.profiles import load_optional_profile
    from lepton_edge.tflite.reader import read_model_file

    profile = load_optional_profile(args.profile)
    source = Path(args.model)
    read_model_file(source)  # one-line errors for missing, unreadable and corrupt files
    if args.embed and _same_file(source, Path(args.embed)):
        raise BadInput(f"--embed {args.embed}: would overwrite the input model; choose another path")
    target = None if args.no_measure else resolve_measure(args.measure, profile)
    plan = plan_model(source.read_bytes(), str(source), profile=profile, measure=not args.no_measure, target=target)
    if args.embed:
        atomic_write_bytes(args.embed, plan.planned_model)
    if args.plot:
        from lepton_edge.tools.plan_plot import save_plan_png

        save_plan_png(plan, args.plot)

    if args.json:
        out = plan.to_dict()
        out["embedded_to"] = args.embed
        out["plot"] = args.plot
        print_json(out)
    else:
        _print_human(plan, args)
    if plan.fit is not None and not plan.fit.fits:
        raise CheckFailed(f"does not fit {plan.fit.profile}: " + "; ".join(plan.fit.reasons))
    return 0


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _print_human(plan, args: argparse.Namespace) -> None:
    rows = [
        ("operators / tensors planned", f"{plan.operators} / {plan.planned_tensors}", ""),
        ("lower bound", f"{plan.lower_bound_bytes:,} B", plan.measured["lower_bound_bytes"]),
        ("head (our plan)", f"{plan.head_bytes:,} B", f"planned, strategy {plan.strategy}, {plan.planning_ms:.1f} ms"),
    ]
    if plan.tflm_default_head_bytes is not None:
        gain = plan.tflm_default_head_bytes - plan.head_bytes
        rows.append(("head (TFLite Micro's own)", f"{plan.tflm_default_head_bytes:,} B",
                     f"measured; ours saves {gain:,} B" if gain > 0 else "measured"))
    rows += [
        ("tail (persistent)", f"{plan.tail_bytes:,} B", plan.measured["tail_bytes"]),
        ("recommended arena", f"{plan.recommended_arena_bytes:,} B ({human_bytes(plan.recommended_arena_bytes)})",
         plan.measured["recommended_arena_bytes"]),
    ]
    if plan.on_target and plan.target_head_bytes is not None:
        rows.insert(-2, ("head (on the target)", f"{plan.target_head_bytes:,} B",
                         "measured (TFLite Micro's non-persistent bytes, its kernels' scratch included)"))
    if plan.on_target and plan.host_recommended_arena_bytes is not None:
        rows.append(("recommended arena (host)", f"{plan.host_recommended_arena_bytes:,} B",
                     "measured (TFLite Micro, x86-64 reference kernels; sizes the host's own interpreters)"))
    rows.append(("measured on", plan.measured_on, ""))
    print(render_table(["figure", "value", "source"], rows, align="lrl"))
    if plan.fit is not None:
        f = plan.fit
        print()
        ram_label = "RAM (estimate)" if f.ram_estimated else "RAM"
        print(render_table(
            ["profile", "check", "needed", "budget", "verdict"],
            [(f.profile, f"{ram_label}" + (" (measured on the target, no margin)" if plan.on_target and
                                           f.runtime == "tflm" else
                                           f", margin {f.arena_margin_bytes:,} B incl." if f.runtime == "tflm" else ""),
              f"{f.ram_needed_bytes:,} B", f"{f.ram_budget_bytes:,} B",
              "ok" if f.ram_needed_bytes <= f.ram_budget_bytes else "TOO BIG"),
             (f.profile, "flash (model)", f"{f.flash_needed_bytes:,} B", f"{f.flash_budget_bytes:,} B",
              "ok" if f.flash_needed_bytes <= f.flash_budget_bytes else "TOO BIG")],
            align="llrrl"))
    for note in plan.notes:
        print(f"note: {note}")
    if args.embed:
        print(f"\nplan embedded in {args.embed} (metadata OfflineMemoryAllocation)")
    if args.plot:
        print(f"picture of the plan: {args.plot}")
    sys.stdout.flush()
