"""``lepton-edge demo``: the main job end to end, on a model the project makes itself.

Each step runs the same code as the command it names and prints what that command prints, so the
demo is also a tour of the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_PROFILE = "stm32l4r5"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job end to end on a sample model",
                       description="Make a small keyword-spotting model, inspect it and plan its arena "
                                   "for a device profile, and draw the plan.")
    p.add_argument("--profile", default=DEFAULT_PROFILE, metavar="NAME", help=f"device profile (default {DEFAULT_PROFILE})")
    p.add_argument("--out", default="demo-out", metavar="DIR", help="where the demo writes its files (default demo-out)")
    p.set_defaults(func=run)


def _heading(text: str) -> None:
    print(f"\n\033[1m$ {text}\033[0m" if sys.stdout.isatty() else f"\n$ {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.commands import inspect as inspect_cmd
    from lepton_edge.commands import plan as plan_cmd
    from lepton_edge.profiles import load_profile
    from lepton_edge.samples import make_sample

    profile = load_profile(args.profile)  # fail early, with one line, on a wrong name
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"lepton-edge demo: a keyword-spotting model for {profile.name} ({profile.board})", flush=True)
    _heading("make the sample model (Keras -> int8 TFLite)")
    model = make_sample("tiny-kws", out)
    print(f"{model} ({model.stat().st_size:,} bytes)")

    _heading(f"lepton-edge inspect {model} --profile {profile.name}")
    inspect_cmd.run(argparse.Namespace(model=str(model), profile=profile.name, json=False))

    planned, picture = out / "tiny-kws.planned.tflite", out / "tiny-kws.plan.png"
    _heading(f"lepton-edge plan {model} --profile {profile.name} --embed {planned} --plot {picture}")
    plan_cmd.run(argparse.Namespace(model=str(model), profile=profile.name, embed=str(planned), plot=str(picture),
                                    no_measure=False, json=False))

    print(f"\nThe picture of the arena plan: {picture.resolve()}")
    return 0
