"""Benchmark the converter on the MLPerf Tiny float models against the benchmark's own int8 models.

    .venv/bin/python bench/convert.py [--json] [--profile NAME]

For each model in ../shared/models/mlperf-tiny with a float source (.h5 or SavedModel): convert it to
int8 with calibration data resembling real inputs, then on the same held-out inputs compare ours and
the reference int8 model with the float model: size, SQNR of the outputs, top-1 agreement.
Targets (issue 3): size <= 1.05x the reference; SQNR >= reference - 1 dB; agreement >= reference - 2 points.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from lepton_edge.console import print_json, render_table  # noqa: E402

SHARED = REPO.parent / "shared"
MLPERF = SHARED / "models" / "mlperf-tiny"


def cases(tmp: Path) -> list[dict]:
    """(label, source, reference int8, calibration file, eval file) for each model present."""
    import mlperf_inputs as mi

    found = []

    def add(label: str, source: Path, reference: Path, make) -> None:
        if not (source.exists() and reference.exists()):
            return
        cal, ev = make()
        np.save(tmp / f"{label}_cal.npy", cal)
        np.savez(tmp / f"{label}_eval.npz", x=ev)
        found.append({"label": label, "source": source, "reference": reference,
                      "calibration": tmp / f"{label}_cal.npy", "eval": tmp / f"{label}_eval.npz"})

    add("kws (SavedModel)", MLPERF / "kws" / "kws_ref_model_savedmodel", MLPERF / "kws" / "kws_ref_model_int8.tflite",
        lambda: (mi.kws_features(200, 1), mi.kws_features(200, 2)))
    photos = SHARED / "data" / "photos32.npz"
    if photos.exists():
        add("ic (.h5)", MLPERF / "ic" / "pretrainedResnet.h5", MLPERF / "ic" / "pretrainedResnet_int8.tflite",
            lambda: (mi.ic_images(photos)[:128], mi.ic_images(photos)[128:]))
    add("ad (.h5)", MLPERF / "ad" / "ad01.h5", MLPERF / "ad" / "ad01_int8.tflite",
        lambda: (mi.ad_features(200, 1), mi.ad_features(200, 2)))
    return found


def run_case(case: dict, profile: str, out: Path) -> dict:
    from lepton_edge.convert.calibration import load_dataset
    from lepton_edge.convert.fidelity import compare, run_converted
    from lepton_edge.convert.load import float_predictor, load_source
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.pipeline import convert

    started = time.perf_counter()
    result = convert(ConvertOptions(model=str(case["source"]), profile=profile, outdir=str(out),
                                    calibration=str(case["calibration"]), eval=str(case["eval"]), force=True))
    seconds = time.perf_counter() - started
    ours = result.chosen
    ref_bytes = case["reference"].read_bytes()
    with load_source(case["source"]) as source:
        data = load_dataset(str(case["eval"]), source.inputs, what="eval")
        reference_float = float_predictor(source)(data.xs)
    ref = compare(reference_float, run_converted(ref_bytes, data), data, reference_label="float")
    return {"model": case["label"], "seconds": round(seconds, 1), "written": result.written,
            "size_bytes": len(ours.model_bytes), "reference_bytes": len(ref_bytes),
            "size_ratio": round(len(ours.model_bytes) / len(ref_bytes), 4),
            "arena_bytes": ours.fit.arena["total_bytes"],
            "sqnr_db": ours.fidelity.sqnr_db, "reference_sqnr_db": ref.sqnr_db,
            "agreement": ours.fidelity.top1_agreement, "reference_agreement": ref.top1_agreement,
            "samples": len(data)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", default="stm32h743")
    args = ap.parse_args()
    from lepton_edge.convert.tfenv import tensorflow

    tensorflow()  # imported quietly once, before the feature makers use it
    with tempfile.TemporaryDirectory(prefix="lepton-bench-convert-") as tmp:
        records = [run_case(c, args.profile, Path(tmp) / f"out{i}") for i, c in enumerate(cases(Path(tmp)))]
    if args.json:
        print_json(records)
        return 0
    if not records:
        print(f"no MLPerf Tiny models found under {MLPERF}")
        return 0

    def verdict(r: dict) -> str:
        ok = (r["size_ratio"] <= 1.05 and r["sqnr_db"] >= r["reference_sqnr_db"] - 1.0
              and r["agreement"] >= r["reference_agreement"] - 2.0)
        return "ok" if ok else "MISSED"

    rows = [(r["model"], f"{r['seconds']:.1f}", f"{r['size_bytes']:,}", f"{r['reference_bytes']:,}",
             f"{r['size_ratio']:.3f}x", f"{r['sqnr_db']:.1f}", f"{r['reference_sqnr_db']:.1f}",
             f"{r['agreement']:.1f}%", f"{r['reference_agreement']:.1f}%", f"{r['arena_bytes']:,}", verdict(r))
            for r in records]
    print(render_table(["model", "convert s", "ours B", "reference B", "size", "SQNR dB", "ref SQNR dB",
                        "top-1 agree", "ref agree", "arena B", "targets"], rows, align="lrrrrrrrrrl"))
    print(f"\nheld-out inputs: {records[0]['samples']} per model (KWS/AD: MFCC and log-mel features of synthetic "
          "sounds; IC: real photo crops, pixel values 0..255); fidelity against the float model (Keras / SavedModel).")
    print("convert s: the whole `lepton-edge convert` pipeline (load, quantize, plan with TFLite Micro, fidelity, "
          "self-test, write).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
