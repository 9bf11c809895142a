"""``lepton-edge convert``: prune, quantize and fit a model to a device profile; write the artifact."""

from __future__ import annotations

import argparse
import sys

from lepton_edge.commands.measure_args import add_measure_argument
from lepton_edge.console import human_bytes, print_json, render_table, step
from lepton_edge.errors import CheckFailed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a model into a signed artifact for a device profile",
                       description="Load a Keras, SavedModel, ONNX or float TFLite model; prune and quantize it; "
                                   "plan its arena and check it fits the profile; measure fidelity; write "
                                   "model.tflite, manifest.json (+ manifest.sig) and firmware/ sources.")
    p.add_argument("model", metavar="MODEL", help=".keras, .h5, SavedModel directory, .onnx or float .tflite")
    p.add_argument("--profile", required=True, metavar="NAME", help="device profile (name or .toml path)")
    p.add_argument("-o", "--out", dest="outdir", required=True, metavar="OUTDIR", help="artifact directory to create")
    p.add_argument("--name", help="artifact name (default: the model file's stem)")
    p.add_argument("--version", type=int, default=1, metavar="N", help="artifact version, an integer (default 1)")
    p.add_argument("--calibration", metavar="DATA",
                   help="X.npy, X.npz (key x) or a directory of .npy files or images; 'synthetic' for random data; "
                        "with --preprocess raw data: images of any size, WAV files, unscaled .npy")
    p.add_argument("--eval", metavar="DATA.npz", help="held-out data (keys x, optional y) for the fidelity report "
                                                      "(raw, like --calibration, with --preprocess)")
    p.add_argument("--preprocess", metavar="SPEC",
                   help="what the model's input expects, recorded in the manifest and applied to raw --calibration/"
                        "--eval data: a TOML file with a [preprocess] table, or inline, e.g. "
                        "kind=image,size=96x96,scale=1/255 (docs/PREPROCESS.md)")
    p.add_argument("--quantize", default="int8", choices=("int8", "float16", "dynamic", "none"),
                   help="int8 (default; full integer), float16 or dynamic (LiteRT boards only), none")
    p.add_argument("--io", default="int8", choices=("int8", "float"), help="int8 model's edges (default int8)")
    p.add_argument("--prune", type=float, default=0.0, metavar="SPARSITY",
                   help="zero this fraction of each kernel's smallest weights (compresses; does not shrink)")
    p.add_argument("--prune-channels", type=float, default=0.0, metavar="FRACTION",
                   help="remove this fraction of the weakest channels (smaller flash, RAM and time)")
    p.add_argument("--train", metavar="DATA.npz", help="fine-tune after pruning on this data (keys x, y)")
    p.add_argument("--epochs", type=int, default=5, metavar="N", help="fine-tuning epochs (default 5)")
    p.add_argument("--learning-rate", type=float, default=5e-4, metavar="LR", help="fine-tuning rate (default 5e-4)")
    p.add_argument("--auto-fit", action="store_true",
                   help="when it does not fit: try int8, then channel pruning 0.25 and 0.5")
    p.add_argument("--max-drop", type=float, metavar="POINTS",
                   help="refuse to write an artifact that loses more accuracy (or top-1 agreement) than this")
    p.add_argument("--min-sqnr", type=float, metavar="DB",
                   help="refuse to write an artifact whose outputs' SQNR against the float model is below this")
    p.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (lepton-edge keys generate) to sign with")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUTDIR")
    add_measure_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lepton_edge.convert.pipeline import ConvertOptions, convert

    opts = ConvertOptions(model=args.model, profile=args.profile, outdir=args.outdir, name=args.name,
                          version=args.version, calibration=args.calibration, eval=args.eval,
                          quantize=args.quantize, io=args.io, prune=args.prune, prune_channels=args.prune_channels,
                          train=args.train, epochs=args.epochs, learning_rate=args.learning_rate,
                          auto_fit=args.auto_fit, sign_key=args.sign_key, max_drop=args.max_drop, force=args.force,
                          measure=args.measure, preprocess=args.preprocess, min_sqnr=args.min_sqnr)
    result = convert(opts, announce=(lambda _m: None) if args.json else step)
    if args.json:
        print_json(result.to_dict())
    else:
        print_report(result)
    sys.stdout.flush()
    if result.failure:
        raise CheckFailed(result.failure)
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _db(fid) -> str:
    if fid is None:
        return "-"
    return "exact" if fid.exact else ("-" if fid.sqnr_db is None else f"{fid.sqnr_db:.1f} dB")


def print_report(result) -> None:
    for w in result.warnings:
        print(w)
    profile = result.profile
    rows = []
    for i, a in enumerate(result.attempts, 1):
        v = a.fit.verdict
        ram = f"{v.ram_needed_bytes:,} / {v.ram_budget_bytes:,}" + (" (est.)" if v.ram_estimated else "")
        rows.append((i, a.settings.label, f"{len(a.model_bytes):,}", f"{a.fit.arena['total_bytes']:,}", ram,
                     f"{v.flash_budget_bytes:,}", _db(a.fidelity),
                     _pct(a.fidelity.top1_agreement if a.fidelity else None),
                     "yes" if v.fits else "NO", f"{a.seconds:.1f}"))
    print(f"convert {result.options.model} ({result.source_format}) for {profile.name} "
          f"({profile.runtime}, {profile.kernel_library})")
    if result.preprocess is not None:
        from lepton_edge.preprocess.spec import parse_spec, spec_to_inline

        print(f"preprocess: {spec_to_inline(parse_spec(result.preprocess, 'manifest'))} (recorded in the manifest)")
    print(render_table(["step", "settings", "size B", "arena B", "RAM needed / budget B", "flash budget B", "SQNR",
                        "top-1 agree", "fits", "s"], rows, align="rlrrrrrrlr"))
    chosen = result.chosen
    fid = chosen.fidelity
    if fid is not None:
        print(f"\nfidelity on {fid.data}, reference: {fid.reference}, converted model run with {fid.runtime}")
        frows = [("SQNR of the outputs", "", _db(fid)), ("top-1 agreement with float", "", _pct(fid.top1_agreement))]
        if fid.accuracy_float is not None:
            frows.append(("accuracy", _pct(fid.accuracy_float), _pct(fid.accuracy_converted)))
            frows.append(("accuracy drop (points)", "", f"{fid.accuracy_drop:.2f}"))
        print(render_table(["metric", "float", "converted"], frows, align="lrr"))
        if fid.worst_layers:
            print("layers that lose the most (quantization debugger, RMSE in quantization steps):")
            for loss in fid.worst_layers:
                print(f"  {loss['op']:<18} {loss['tensor']}  rmse/scale {loss['rmse_over_scale']:.2f}")
    for p in chosen.pruning:
        how = f"fine-tuned {p['fine_tuned_epochs']} epochs" if p["fine_tuned_epochs"] else "one shot (no --train)"
        if p["kind"] == "channels":
            pruned = ", ".join(f"{layer['layer']} {layer['channels']}->{layer['kept']}" for layer in p["layers"])
            print(f"\nchannel pruning {p['amount']:g} ({how}): {pruned}")
            if p["skipped"]:
                print("  left whole: " + "; ".join(f"{s['layer']} ({s['reason']})" for s in p["skipped"]))
        else:
            sparsity = p.get("artifact_kernel_sparsity")
            extra = f"; {sparsity:.1%} of the large kernels' int8 weights are zero" if sparsity is not None else ""
            print(f"\nweight pruning {p['amount']:g} ({how}){extra}")
    arena = chosen.fit.arena
    print(f"\narena: recommended {arena['recommended_bytes']:,} B + margin {arena['margin_bytes']:,} B = "
          f"kTensorArenaSize {arena['total_bytes']:,} B ({arena['measured']['recommended_bytes']})")
    if arena.get("host_recommended_bytes") and arena.get("measured_on", "").startswith("cortex"):
        print(f"arena measured on {arena['measured_on']}; on the host (x86-64) it is "
              f"{arena['host_recommended_bytes']:,} B")
    print(f"model: {len(chosen.model_bytes):,} B ({human_bytes(len(chosen.model_bytes))}), "
          f"{chosen.compressed_bytes:,} B compressed")
    for note in result.notes:
        print(f"note: {note}")
    if result.written and result.manifest is not None:
        m = result.manifest
        digests = ", ".join(sorted(m["self_test"]["output_sha256"])) if m.get("self_test") else "none"
        print(f"\nwrote {result.options.outdir}: model.tflite, manifest.json"
              f"{', manifest.sig' if result.options.sign_key else ''}, firmware/ "
              f"(name {m['name']}, version {m['version']}, layout {m['layout']}, self-test on {digests}) "
              f"in {result.seconds:.1f} s")
    for w in result.warnings:
        print(w)
