"""The converter end to end: check inputs -> load -> (prune, fine-tune) -> quantize -> plan and fit
-> fidelity -> self-test -> manifest, firmware sources, signature -> one output directory, whole or not at all.

Every check that needs no model (options, profile, output directory, key, formats) runs before
TensorFlow is imported, so bad input fails fast. With ``auto_fit`` the given settings are tried first,
then int8, then channel pruning of 0.25 and 0.5, until the model fits the profile.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.convert import package
from lepton_edge.convert.calibration import MAX_CALIBRATION_SAMPLES, SYNTHETIC, Dataset, load_dataset, synthetic_dataset
from lepton_edge.convert.fidelity import (
    POOR_SQNR_DB,
    Fidelity,
    compare,
    is_poor,
    looks_like_probabilities,
    run_converted,
)
from lepton_edge.convert.fit import fit_to_profile
from lepton_edge.convert.load import QUANTIZABLE_FORMATS, SourceModel, detect_format
from lepton_edge.convert.mismatch import PROBE_SAMPLES, Diagnosis, diagnose
from lepton_edge.convert.options import ConvertOptions, Settings
from lepton_edge.convert.quantize import IO_TYPES, LITERT_ONLY_MODES, QUANTIZE_MODES
from lepton_edge.convert.result import Attempt, ConversionResult
from lepton_edge.errors import BadInput
from lepton_edge.preprocess import PreprocessSpec, check_against_input, load_spec, spec_to_dict
from lepton_edge.profiles import Profile, load_profile

#: The stronger settings ``--auto-fit`` tries after the given ones: int8, then channel pruning.
AUTO_FIT_CHANNELS = (0.25, 0.5)
MAX_FIDELITY_SAMPLES = 2000
RANDOM_FIDELITY_SAMPLES = 32

Announce = Callable[[str], None]


# --- checks before any model is loaded ---------------------------------------------------------

def check_options(opts: ConvertOptions) -> tuple[Profile, str]:
    """Everything that can be refused without TensorFlow; returns the profile and the source format."""
    if opts.quantize not in QUANTIZE_MODES:
        raise BadInput(f"--quantize {opts.quantize}: choose from {', '.join(QUANTIZE_MODES)}")
    if opts.io not in IO_TYPES:
        raise BadInput(f"--io {opts.io}: choose from {', '.join(IO_TYPES)}")
    for flag, value in (("--prune", opts.prune), ("--prune-channels", opts.prune_channels)):
        if not 0.0 <= value < 1.0:
            raise BadInput(f"{flag} {value:g}: a fraction from 0 up to (not including) 1")
    if opts.version < 0:
        raise BadInput(f"--version {opts.version}: must be 0 or more")
    if opts.epochs < 1:
        raise BadInput(f"--epochs {opts.epochs}: must be 1 or more")
    if opts.max_drop is not None and opts.max_drop < 0:
        raise BadInput(f"--max-drop {opts.max_drop:g}: must be 0 or more points")
    if opts.min_sqnr is not None and not np.isfinite(opts.min_sqnr):
        raise BadInput(f"--min-sqnr {opts.min_sqnr:g}: must be a number of dB")
    if opts.preprocess:
        load_spec(opts.preprocess)
    if opts.train and not (opts.prune or opts.prune_channels or opts.auto_fit):
        raise BadInput("--train fine-tunes a pruned model: give --prune, --prune-channels or --auto-fit too")
    profile = load_profile(opts.profile)
    if opts.quantize in LITERT_ONLY_MODES and profile.runtime == "tflm":
        raise BadInput(f"--quantize {opts.quantize}: {profile.name} runs TFLite Micro, which has no kernels for "
                       f"{'float16 weights' if opts.quantize == 'float16' else 'dynamic-range (hybrid) operators'}; "
                       "use int8 (or none for float32)")
    package.check_outdir(Path(opts.outdir), opts.force)
    fmt = detect_format(Path(opts.model))
    if fmt not in QUANTIZABLE_FORMATS:
        if opts.quantize != "none":
            raise BadInput(f"{opts.model}: a .tflite model cannot be quantized to {opts.quantize}; give the float "
                           "source to quantize (Keras .keras or .h5, a SavedModel directory, or ONNX), "
                           "or use --quantize none")
        if opts.prune or opts.prune_channels:
            raise BadInput(f"{opts.model}: pruning needs the float source (Keras .keras or .h5, or a Keras SavedModel)")
    if opts.quantize == "int8" and not opts.calibration:
        raise BadInput("--quantize int8 needs --calibration data (X.npy, X.npz or a directory) to set the int8 "
                       "ranges; --calibration synthetic uses random values instead (poor accuracy)")
    for flag, data in (("--calibration", opts.calibration), ("--eval", opts.eval), ("--train", opts.train)):
        if data and data != SYNTHETIC and not Path(data).exists():
            raise BadInput(f"{flag} {data}: no such file or directory")
    if opts.sign_key:
        from lepton_edge.artifact import load_private_key

        load_private_key(opts.sign_key)
    return profile, fmt


# --- the pipeline ------------------------------------------------------------------------------

def convert(opts: ConvertOptions, announce: Announce = lambda _m: None) -> ConversionResult:
    """Run the whole conversion; write the artifact when the model fits and fidelity is acceptable."""
    started = time.perf_counter()
    profile, fmt = check_options(opts)
    from lepton_edge.convert.load import load_source
    from lepton_edge.firmware_build.target import resolve_measure

    target = resolve_measure(opts.measure, profile)  # before TensorFlow: --measure target fails fast
    if target is not None:
        announce(f"the arena will be measured on {target.label} ({target.board.name} firmware under QEMU)")
    announce(f"loading {opts.model} ({fmt})")
    spec = load_spec(opts.preprocess) if opts.preprocess else None
    with load_source(opts.model) as source:
        result = _convert_loaded(opts, profile, source, announce, target, spec)
    result.seconds = time.perf_counter() - started
    return result


def _convert_loaded(opts: ConvertOptions, profile: Profile, source: SourceModel, announce: Announce,
                    target: Any = None, spec: PreprocessSpec | None = None) -> ConversionResult:
    result = ConversionResult(opts, profile, source.format, source.layout, source.source_layout, [])
    result.notes += source.notes
    if spec is not None:
        if len(source.inputs) != 1:
            raise BadInput(f"--preprocess: {opts.model} has {len(source.inputs)} inputs; a spec describes one")
        check_against_input(spec, (1, *source.inputs[0].shape[1:]), Path(opts.model).name)
        result.preprocess = spec_to_dict(spec)
    calibration, evaluation, train = _load_data(opts, source, result, spec)
    keras_model, flavor = _keras_for_pruning(opts, source)
    fid_data = _fidelity_data(source, evaluation, calibration)
    reference = _reference(source, fid_data)
    diagnoses = _diagnose(source, spec, fid_data, evaluation, calibration, reference[1])
    result.warnings += [d.warning() for d in diagnoses]

    for settings in _candidates(opts, calibration is not None, keras_model is not None, result):
        announce(f"converting: {settings.label}")
        attempt = _attempt(opts, profile, source, settings, calibration, train, keras_model, flavor,
                           fid_data, reference, announce, target)
        result.attempts.append(attempt)
        if attempt.fit.fits:
            break
    chosen = result.chosen
    result.notes += [n for n in chosen.fit.notes if n not in result.notes]
    if any(p.get("kind") == "weights" for p in chosen.pruning):
        result.notes.append(f"--prune zeroes weights but TFLite stores them densely: the file does not shrink "
                            f"({len(chosen.model_bytes):,} bytes); it compresses to {chosen.compressed_bytes:,} "
                            "bytes (smaller OTA transfers)")
    if not chosen.fit.fits:
        result.failure = f"does not fit {profile.name}: " + "; ".join(chosen.fit.verdict.reasons)
        return result
    if chosen.fidelity is not None and chosen.settings.quantize == "int8" and source.quantizable \
            and is_poor(chosen.fidelity, looks_like_probabilities(reference[1][0])) and calibration is not None:
        announce("fidelity is poor: asking the quantization debugger which layers lose the most")
        from lepton_edge.convert.quantize import layer_losses

        losses = layer_losses(source, calibration, fid_data.head(64), keras_model=chosen.keras_model)
        chosen.fidelity.worst_layers = [loss.to_dict() for loss in losses]
    cause = f"; {diagnoses[0].short()}" if diagnoses else ""
    sqnr = chosen.fidelity.sqnr_db if chosen.fidelity is not None else None
    if sqnr is not None and sqnr < POOR_SQNR_DB and chosen.settings.quantize != "none":
        result.warnings.append(
            f"WARNING: SQNR {sqnr:.1f} dB (below {POOR_SQNR_DB:g} dB): the converted model departs from the float "
            + ("one" + cause if diagnoses else _low_sqnr_hint(chosen.settings)))
    drop = _drop(chosen.fidelity)
    if opts.max_drop is not None and drop is not None and drop > opts.max_drop:
        metric = ("accuracy" if chosen.fidelity and chosen.fidelity.accuracy_drop is not None
                  else "top-1 agreement")
        result.failure = (f"fidelity: loses {drop:.2f} points "
                          f"({metric}), "
                          f"more than --max-drop {opts.max_drop:g}{cause}")
        return result
    if opts.min_sqnr is not None and sqnr is not None and sqnr < opts.min_sqnr:
        result.failure = f"fidelity: SQNR {sqnr:.1f} dB is below --min-sqnr {opts.min_sqnr:g} dB{cause}"
        return result
    announce("self-test: running the artifact's model on its runtimes")
    manifest_self_test = package.self_test(chosen, fid_data, profile)
    result.manifest = package.build_manifest(opts, profile, source, chosen, calibration, manifest_self_test,
                                             result.preprocess)
    announce(f"writing {opts.outdir}")
    package.write_artifact(opts, result.manifest, chosen)
    result.written = True
    return result


def _load_data(opts: ConvertOptions, source: SourceModel, result: ConversionResult,
               preprocess: PreprocessSpec | None = None) -> tuple[Dataset | None, Dataset | None, Dataset | None]:
    def load(spec: str, what: str, need_labels: bool = False) -> Dataset:
        return load_dataset(spec, source.inputs, what=what, source_layout=source.source_layout, layout=source.layout,
                            need_labels=need_labels, preprocess=preprocess)

    calibration = None
    if opts.calibration == SYNTHETIC:
        calibration = synthetic_dataset(source.inputs)
        result.warnings.append("WARNING: int8 ranges come from SYNTHETIC random data (--calibration synthetic), "
                               "not from real inputs: expect poor accuracy; the manifest records it")
    elif opts.calibration:
        calibration = load(opts.calibration, "calibration")
        if len(calibration) > MAX_CALIBRATION_SAMPLES:
            calibration = calibration.head(MAX_CALIBRATION_SAMPLES)
            result.notes.append(f"calibration: the first {MAX_CALIBRATION_SAMPLES} samples are used")
        result.notes += calibration.notes
    evaluation = load(opts.eval, "eval") if opts.eval else None
    train = load(opts.train, "train", need_labels=True) if opts.train else None
    return calibration, evaluation, train


def _diagnose(source: SourceModel, spec: PreprocessSpec | None, fid_data: Dataset, evaluation: Dataset | None,
              calibration: Dataset | None, reference: list[np.ndarray]) -> list[Diagnosis]:
    """Whether the float model behaves untrained on the data it is calibrated and evaluated with."""
    from lepton_edge.convert.load import float_predictor

    loaded: list[Any] = []

    def predict(xs: Any) -> list[np.ndarray]:  # the float model, loaded only if a diagnosis needs it
        if not loaded:
            loaded.append(float_predictor(source))
        return loaded[0](xs)

    found = []
    if evaluation is not None or calibration is not None:
        what = "eval data" if evaluation is not None else "calibration data"
        head = [r[:PROBE_SAMPLES] for r in reference]
        d = diagnose(predict, fid_data, spec, what, outputs=head)
        if d is not None:
            found.append(d)
    if evaluation is not None and calibration is not None:
        d = diagnose(predict, calibration, spec, "calibration data")
        if d is not None:
            found.insert(0, d)
    return found


def _keras_for_pruning(opts: ConvertOptions, source: SourceModel) -> tuple[Any, str | None]:
    if not (opts.prune or opts.prune_channels or opts.auto_fit):
        return None, None
    if source.keras_model is not None:
        return source.keras_model, source.keras_flavor
    from lepton_edge.convert.load import keras_from_saved_model

    model, detail = keras_from_saved_model(source)
    if model is not None:
        return model, detail
    if opts.prune or opts.prune_channels:
        raise BadInput(f"{opts.model}: pruning needs a Keras model (.keras, .h5 or a Keras-made SavedModel); "
                       f"{detail}")
    return None, None


def _fidelity_data(source: SourceModel, evaluation: Dataset | None, calibration: Dataset | None) -> Dataset:
    if evaluation is not None:
        return evaluation.head(MAX_FIDELITY_SAMPLES)
    if calibration is not None:
        data = calibration.head(MAX_FIDELITY_SAMPLES)
        data.origin = f"calibration data (not held out): {data.origin}"
        return data
    data = synthetic_dataset(source.inputs, RANDOM_FIDELITY_SAMPLES, seed=1)
    data.origin = f"random inputs ({RANDOM_FIDELITY_SAMPLES}, seeded; no --eval data)"
    return data


def _reference(source: SourceModel, data: Dataset) -> tuple[str, list[np.ndarray]]:
    from lepton_edge.convert.load import float_predictor

    label = {"keras": "Keras model", "h5": "Keras model", "savedmodel": "SavedModel (TensorFlow)",
             "onnx": "ONNX model (onnxruntime)", "tflite": "source .tflite (LiteRT)"}[source.format]
    if source.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            label = "onnx2tf's TensorFlow model"
    outputs = float_predictor(source)(data.xs)
    return label, [o.reshape(len(o), -1) for o in outputs]


def _candidates(opts: ConvertOptions, have_calibration: bool, have_keras: bool, result: ConversionResult):
    given = Settings(opts.quantize, opts.prune, opts.prune_channels)
    yield given
    if not opts.auto_fit:
        return
    quantize = given.quantize
    if quantize != "int8":
        if have_calibration:
            quantize = "int8"
            yield Settings("int8", given.prune, given.prune_channels)
        else:
            result.notes.append("--auto-fit: int8 needs --calibration data; that step was skipped")
    if not have_keras:
        result.notes.append("--auto-fit: channel pruning needs a Keras model; those steps were skipped")
        return
    for fraction in AUTO_FIT_CHANNELS:
        if fraction > given.prune_channels:
            yield Settings(quantize, given.prune, fraction)


def _attempt(opts: ConvertOptions, profile: Profile, source: SourceModel, settings: Settings,
             calibration: Dataset | None, train: Dataset | None, keras_model: Any, flavor: str | None,
             fid_data: Dataset, reference: tuple[str, list[np.ndarray]], announce: Announce,
             target: Any = None) -> Attempt:
    from lepton_edge.convert.quantize import convert_to_tflite

    started = time.perf_counter()
    pruning: list[dict] = []
    model = None
    if settings.prune or settings.prune_channels:
        model, pruning = _pruned(opts, settings, keras_model, flavor, train, announce)
    mode = settings.quantize
    model_bytes = convert_to_tflite(source, mode, opts.io if mode == "int8" else "float", calibration,
                                    keras_model=model)
    announce(f"planning the arena and checking the fit to {profile.name}")
    fit = fit_to_profile(model_bytes, f"{Path(opts.model).name} ({settings.label})", profile, target)
    announce(f"measuring fidelity on {fid_data.origin}")  # always some data: _fidelity_data falls back to random
    label, ref = reference
    fidelity = compare(ref, run_converted(fit.model_bytes, fid_data), fid_data, reference_label=label)
    if model is not None and any(p["kind"] == "weights" for p in pruning):
        from lepton_edge.convert.prune import kernel_sparsity

        pruning[-1]["artifact_kernel_sparsity"] = kernel_sparsity(fit.model_bytes)
    return Attempt(settings, fit.model_bytes, fit, fidelity, pruning, len(zlib.compress(fit.model_bytes, 9)),
                   time.perf_counter() - started, keras_model=model)


def _pruned(opts: ConvertOptions, settings: Settings, keras_model: Any, flavor: str | None,
            train: Dataset | None, announce: Announce) -> tuple[Any, list[dict]]:
    from lepton_edge.convert import prune
    from lepton_edge.convert.tfenv import keras_module, quiet

    assert keras_model is not None and flavor is not None
    reports = []
    model = keras_model
    if settings.prune_channels:
        announce(f"pruning {settings.prune_channels:.0%} of the channels")
        model, rep = prune.prune_channels(model, flavor, settings.prune_channels)
        reports.append(rep)
    else:
        k = keras_module(flavor)
        with quiet():
            model = k.models.clone_model(keras_model)
            model.set_weights(keras_model.get_weights())
    masks: dict[str, np.ndarray] = {}
    if settings.prune:
        announce(f"zeroing the smallest {settings.prune:.0%} of each kernel's weights")
        masks, rep = prune.prune_weights(model, settings.prune)
        reports.append(rep)
    if train is not None:
        announce(f"fine-tuning {opts.epochs} epochs on {train.origin}")
        prune.fine_tune(model, flavor, train, epochs=opts.epochs, learning_rate=opts.learning_rate, masks=masks)
        for rep in reports:
            rep.fine_tuned_epochs = opts.epochs
    return model, [r.to_dict() for r in reports]


def _low_sqnr_hint(settings: Any) -> str:
    """What to look at when SQNR is low and the data look right: pruning changes the weights, so against
    the float model before pruning a low SQNR is expected; otherwise the data or the layers."""
    if settings.prune or settings.prune_channels:
        return ("one; it was pruned, and the float reference is the model before pruning, so the SQNR includes "
                "what pruning changed: judge it by the accuracy figures")
    return "one; check the calibration data's range and channel order (--preprocess) and the layers listed below"


def _drop(fid: Fidelity | None) -> float | None:
    if fid is None:
        return None
    if fid.accuracy_drop is not None:
        return fid.accuracy_drop
    if fid.top1_agreement is not None:
        return round(100.0 - fid.top1_agreement, 4)
    return None
