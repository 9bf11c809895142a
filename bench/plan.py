"""Benchmark the arena planner: our head against TFLite Micro's own and the lower bound.

    .venv/bin/python bench/plan.py [--json]

Models: the MLPerf Tiny models in ../shared (when present) and the project's own sample models.
TFLite Micro's default head is measured by running the model as given (no offline plan).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lepton_edge.console import print_json, render_table  # noqa: E402
from lepton_edge.errors import LeptonError  # noqa: E402
from lepton_edge.plan.planner import plan_model  # noqa: E402

MLPERF = REPO.parent / "shared" / "models" / "mlperf-tiny"


def models() -> list[tuple[str, Path]]:
    found = [(f"mlperf/{p.parent.name}/{p.stem}", p) for p in sorted(MLPERF.glob("*/*.tflite"))]
    from lepton_edge.tools.samples import SAMPLES, make_sample

    out = Path(tempfile.gettempdir()) / "lepton-edge-bench-samples"
    found += [(f"sample/{name}", make_sample(name, out)) for name in SAMPLES]
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows, records = [], []
    for label, path in models():
        started = time.perf_counter()
        try:
            plan = plan_model(path.read_bytes(), str(path))
        except LeptonError as exc:
            rows.append((label, "-", "-", "-", "-", "-", "-", "-", "-", f"error: {exc}"))
            continue
        total_s = time.perf_counter() - started
        stock = plan.tflm_default_head_bytes
        ratio = f"{plan.head_bytes / stock:.3f}" if stock else "-"
        rows.append((label, plan.operators, plan.planned_tensors, f"{plan.lower_bound_bytes:,}",
                     f"{plan.lower_bound_with_scratch_bytes:,}",
                     f"{stock:,}" if stock else "n/a", f"{plan.head_bytes:,}", ratio,
                     f"{plan.planning_ms:.2f}", f"{total_s:.2f}"))
        records.append({"model": label, "operators": plan.operators, "tensors": plan.planned_tensors,
                        "lower_bound_bytes": plan.lower_bound_bytes, "tflm_default_head_bytes": stock,
                        "head_bytes": plan.head_bytes, "ratio": plan.head_bytes / stock if stock else None,
                        "planning_ms": plan.planning_ms, "with_measurement_s": round(total_s, 3),
                        "recommended_arena_bytes": plan.recommended_arena_bytes, "notes": plan.notes})
    if args.json:
        print_json(records)
        return 0
    print(render_table(["model", "ops", "tensors", "lower bound", "+ scratch", "TFLM head", "our head", "ours/TFLM",
                        "plan ms", "with TFLM s"], rows, align="lrrrrrrrrr"))
    print("\n+ scratch: the bound with kernels' scratch buffers (TRANSPOSE_CONV's int32 accumulators) counted.")
    print("plan ms: offsets only; with TFLM s: plus measuring tail and arena with real TFLite Micro (two runs).")
    print("TFLM head n/a: TFLite Micro cannot run the model (e.g. MLPerf's hybrid float KWS); the plan still stands.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
