"""Load a source model of any accepted format, and run it in float as the reference for fidelity.

Formats: Keras 3 ``.keras``; Keras 2 era ``.h5`` (Keras 3 first, ``tf_keras`` where Keras 3 cannot
read the file); TensorFlow SavedModel directories; ONNX (through :mod:`onnx_import`: its NCHW inputs
become NHWC); float ``.tflite`` (packaging only). Every failure is one :class:`BadInput` line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.convert.tfenv import keras_module, quiet, short_error, tensorflow
from lepton_edge.errors import BadInput

SOURCE_FORMATS = ("keras", "h5", "savedmodel", "onnx", "tflite")
#: Formats the converter can quantize and prune (it needs the float graph, not a flatbuffer).
QUANTIZABLE_FORMATS = ("keras", "h5", "savedmodel", "onnx")
_SUFFIXES = {".keras": "keras", ".h5": "h5", ".hdf5": "h5", ".onnx": "onnx", ".tflite": "tflite"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"
_TF_LAYOUTS = {1: "N", 2: "NC", 3: "NWC", 4: "NHWC", 5: "NDHWC"}
_ONNX_LAYOUTS = {1: "N", 2: "NC", 3: "NCW", 4: "NCHW", 5: "NCDHW"}
FORMATS_HELP = ("Keras .keras, Keras 2 .h5, a TensorFlow SavedModel directory, ONNX .onnx, "
                "or a float .tflite (--quantize none)")


@dataclass(frozen=True)
class InputInfo:
    """One model input as the converted model takes it (batch 1, artifact layout)."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class SourceModel:
    """A loaded source. ``layout`` is what the artifact's input expects; ``source_layout`` the original's."""

    path: Path
    format: str
    inputs: list[InputInfo]
    layout: str
    source_layout: str
    keras_model: Any = None
    keras_flavor: str | None = None  # "keras3" | "tf_keras"
    saved_model_dir: Path | None = None
    tflite_bytes: bytes | None = None
    notes: list[str] = field(default_factory=list)
    _workdir: tempfile.TemporaryDirectory | None = None
    _saved_model: Any = None

    @property
    def quantizable(self) -> bool:
        return self.format in QUANTIZABLE_FORMATS

    @property
    def transposed(self) -> bool:
        """Whether the artifact's input layout differs from the source's (ONNX NCHW -> NHWC)."""
        return self.layout != self.source_layout

    def close(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect_format(path: Path) -> str:
    """The source format of ``path`` from its kind and suffix; :class:`BadInput` when not accepted."""
    if not path.exists():
        raise BadInput(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise BadInput(f"{path}: a directory but not a TensorFlow SavedModel (no saved_model.pb); "
                       f"accepted: {FORMATS_HELP}")
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise BadInput(f"{path}: unknown model format '{path.suffix or '(no suffix)'}'; accepted: {FORMATS_HELP}")
    try:
        head = path.read_bytes()[:8]
    except OSError as exc:
        raise BadInput(f"{path}: cannot read: {exc.strerror or exc}") from None
    if fmt == "h5" and head != _HDF5_MAGIC:
        raise BadInput(f"{path}: not an HDF5 file (a Keras .h5 model starts with the HDF5 signature)")
    if fmt == "keras" and head[:4] != _ZIP_MAGIC:
        raise BadInput(f"{path}: not a Keras 3 .keras archive (a zip file)")
    return fmt


def load_source(path: str | Path) -> SourceModel:
    """Load ``path``; raise :class:`BadInput` with one line when it cannot be used."""
    p = Path(path)
    fmt = detect_format(p)
    if fmt == "tflite":
        return _load_tflite(p)
    if fmt in ("keras", "h5"):
        return _load_keras(p, fmt)
    if fmt == "savedmodel":
        return _load_saved_model(p, p, "savedmodel", source_layout=None)
    return _load_onnx(p)


# --- formats -----------------------------------------------------------------------------------

def _load_tflite(path: Path) -> SourceModel:
    from lepton_edge.runtime.base import io_specs
    from lepton_edge.tflite.reader import read_model_file

    data = path.read_bytes()
    model = read_model_file(path)
    inputs, _ = io_specs(model)
    infos = [InputInfo(s.name, tuple(s.shape), s.dtype) for s in inputs]
    layout = _TF_LAYOUTS.get(len(infos[0].shape), "?") if infos else "?"
    return SourceModel(path, "tflite", infos, layout, layout, tflite_bytes=data)


def _load_keras(path: Path, fmt: str) -> SourceModel:
    tensorflow()
    errors = []
    for flavor in ("keras3", "tf_keras") if fmt == "h5" else ("keras3",):
        k = keras_module(flavor)
        try:
            with quiet():
                model = k.models.load_model(str(path), compile=False)
        except Exception as exc:  # Keras raises anything from TypeError to OSError
            errors.append(f"{'Keras 3' if flavor == 'keras3' else 'tf_keras'}: {short_error(exc, 160)}")
            continue
        src = SourceModel(path, fmt, _keras_inputs(model, path), "", "", keras_model=model, keras_flavor=flavor)
        src.layout = src.source_layout = _TF_LAYOUTS.get(len(src.inputs[0].shape), "?")
        if flavor == "tf_keras":
            src.notes.append("loaded with tf_keras (Keras 3 cannot read this Keras 2 era file)")
        return src
    raise BadInput(f"{path}: cannot load as a Keras model ({'; '.join(errors)})")


def _keras_inputs(model: Any, path: Path) -> list[InputInfo]:
    infos = []
    for t in model.inputs:
        shape = list(t.shape)
        if shape and shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise BadInput(f"{path}: input '{_tensor_name(t)}' has unknown dimensions {list(t.shape)}; "
                           "a device model needs a fixed input shape (rebuild it with one)")
        dtype = getattr(t.dtype, "name", None) or str(t.dtype)
        infos.append(InputInfo(_tensor_name(t), tuple(int(d) for d in shape), dtype))
    return infos


def _tensor_name(t: Any) -> str:
    name = getattr(t, "name", "input")
    return name.split(":")[0]


def _load_saved_model(path: Path, model_dir: Path, fmt: str, source_layout: str | None) -> SourceModel:
    tf = tensorflow()
    try:
        with quiet():
            loaded = tf.saved_model.load(str(model_dir))
    except Exception as exc:  # tf_keras fails in many ways (ValueError, OSError, KeyError, ...)
        raise BadInput(f"{path}: cannot load the SavedModel ({short_error(exc, 200)})") from None
    fn = _signature(loaded, path)
    specs = fn.structured_input_signature[1]
    infos = []
    for name in sorted(specs):
        spec = specs[name]
        shape = list(spec.shape)
        if shape and shape[0] is None:
            shape[0] = 1
        if any(d is None for d in shape):
            raise BadInput(f"{path}: input '{name}' has unknown dimensions {list(spec.shape)}; "
                           "a device model needs a fixed input shape")
        infos.append(InputInfo(name, tuple(int(d) for d in shape), spec.dtype.name))
    if not infos:
        raise BadInput(f"{path}: the SavedModel's signature takes no inputs")
    layout = _TF_LAYOUTS.get(len(infos[0].shape), "?")
    src = SourceModel(path, fmt, infos, layout, source_layout or layout, saved_model_dir=model_dir)
    src._saved_model = loaded
    return src


def _signature(loaded: Any, path: Path) -> Any:
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" in sigs:
        return sigs["serving_default"]
    if len(sigs) >= 1:
        return sigs[sorted(sigs)[0]]
    raise BadInput(f"{path}: the SavedModel has no serving signature to convert")


def _load_onnx(path: Path) -> SourceModel:
    from lepton_edge.convert.onnx_import import onnx_to_saved_model, read_onnx_inputs

    onnx_inputs = read_onnx_inputs(path)
    workdir = tempfile.TemporaryDirectory(prefix="lepton-onnx-")
    try:
        saved = onnx_to_saved_model(path, Path(workdir.name))
        src = _load_saved_model(path, saved, "onnx", _ONNX_LAYOUTS.get(len(onnx_inputs[0].shape), "?"))
    except BaseException:
        workdir.cleanup()
        raise
    src.format = "onnx"
    src._workdir = workdir
    if src.transposed:
        src.notes.append(f"ONNX input {src.source_layout} became {src.layout}: the artifact takes {src.layout} data")
    return src


def keras_from_saved_model(source: SourceModel) -> tuple[Any, str]:
    """``(model, "tf_keras")``: the Keras model behind a Keras-made SavedModel (tf_keras reads its metadata),
    for pruning; else ``(None, why)``, one line: the source is no SavedModel, or tf_keras's own reason."""
    if source.format != "savedmodel":
        return None, f"this {source.format} source has no Keras layers"
    k = keras_module("tf_keras")
    try:
        with quiet():
            model = k.models.load_model(str(source.saved_model_dir), compile=False)
    except Exception as exc:
        reason = (str(exc).strip().splitlines() or [""])[0] or type(exc).__name__
        return None, f"tf_keras cannot load this SavedModel as Keras: {reason}"
    if not isinstance(model, k.Model):  # a SavedModel not made by Keras loads as a plain TensorFlow object
        return None, "this SavedModel was not saved by Keras (tf_keras loads it as a plain TensorFlow object)"
    return model, "tf_keras"


# --- the float reference -----------------------------------------------------------------------

Predictor = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


def float_predictor(source: SourceModel, keras_model: Any = None, batch: int = 64) -> Predictor:
    """``predict([x0, x1, ...]) -> [y0, ...]``: the float model on batches in the artifact's layout.

    ``keras_model`` overrides the source's (a pruned model is compared with the original elsewhere).
    """
    model = keras_model if keras_model is not None else source.keras_model
    if model is not None:
        return _keras_predictor(model, batch)
    if source.tflite_bytes is not None:
        return _tflite_predictor(source.tflite_bytes)
    if source.format == "onnx":
        ort = _onnxruntime_predictor(source)
        if ort is not None:
            return ort
    return _saved_model_predictor(source, batch)


def _keras_predictor(model: Any, batch: int) -> Predictor:
    def predict(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = len(xs[0])
        chunks: list[list[np.ndarray]] = []
        with quiet():
            for start in range(0, n, batch):
                args = [x[start:start + batch] for x in xs]
                out = model(args if len(args) > 1 else args[0], training=False)
                chunks.append([np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])])
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    return predict


def _saved_model_predictor(source: SourceModel, batch: int) -> Predictor:
    tf = tensorflow()
    fn = _signature(source._saved_model, source.path)
    names = [i.name for i in source.inputs]
    step = batch if _accepts_batches(fn) else 1

    def predict(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        n = len(xs[0])
        chunks = []
        with quiet():
            for start in range(0, n, step):
                out = fn(**{name: tf.constant(x[start:start + step]) for name, x in zip(names, xs, strict=False)})
                chunks.append([np.asarray(out[k]) for k in sorted(out)])
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    return predict


def _accepts_batches(fn: Any) -> bool:
    specs = fn.structured_input_signature[1]
    return all(len(s.shape) and s.shape[0] is None for s in specs.values())


def _tflite_predictor(model_bytes: bytes) -> Predictor:
    from lepton_edge.runtime.litert import load_litert

    with quiet():
        runner = load_litert(model_bytes, source="source model")

    def predict(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with quiet():
            outs = [runner.run_float([x[i:i + 1] for x in xs]) for i in range(len(xs[0]))]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

    return predict


def _onnxruntime_predictor(source: SourceModel) -> Predictor | None:
    """onnxruntime on the original ONNX file (inputs transposed back to NCHW), when it is installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(source.path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    rank = len(source.inputs[0].shape)
    to_source = (0, rank - 1, *range(1, rank - 1)) if source.transposed and rank >= 3 else None

    def predict(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        outs = []
        for i in range(len(xs[0])):
            feeds = {}
            for name, x in zip(names, xs, strict=False):
                sample = x[i:i + 1].astype(np.float32)
                feeds[name] = np.transpose(sample, to_source) if to_source and sample.ndim == rank else sample
            outs.append(session.run(None, feeds))
        result = []
        for j in range(len(outs[0])):
            y = np.concatenate([o[j] for o in outs])
            if to_source and y.ndim == rank:  # 4-D outputs come back NCHW; the artifact's are NHWC
                y = np.transpose(y, (0, *range(2, rank), 1))
            result.append(y)
        return result

    return predict
