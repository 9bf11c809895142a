"""Float graph -> .tflite: full-integer int8, float16, dynamic range, or no quantization.

Keras models go through a frozen concrete function with batch 1 (a device runs one sample; a free
batch dimension makes Keras' Flatten compute its shape at run time with SHAPE/PACK operators, which
cost flash and RAM). SavedModels (and ONNX, through onnx2tf's SavedModel) use ``from_saved_model``.

Dense layers are quantized per tensor, convolutions per channel. Per-channel dense layers store a
float scale and an int64 zero point per output unit for the weights and again for the bias: for the
MLPerf Tiny autoencoder that is 40 KB (15 %) more flash, and TFLite Micro's optimised kernel libraries
have long assumed per-tensor fully connected weights. The benchmark's own int8 models do the same.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lepton_edge.convert.calibration import Dataset
from lepton_edge.convert.load import SourceModel
from lepton_edge.convert.tfenv import quiet, short_error, tensorflow
from lepton_edge.errors import BadInput

QUANTIZE_MODES = ("int8", "float16", "dynamic", "none")
IO_TYPES = ("int8", "float")
#: Modes whose models keep float kernels that only full TFLite (LiteRT) runs.
LITERT_ONLY_MODES = ("float16", "dynamic")


@dataclass(frozen=True)
class LayerLoss:
    """One tensor of the quantization debugger's report: how far int8 strays from float there."""

    op: str
    tensor: str
    rmse_over_scale: float  # root mean squared error in units of the tensor's quantization step
    mean_squared_error: float
    scale: float

    def to_dict(self) -> dict:
        return {"op": self.op, "tensor": self.tensor, "rmse_over_scale": round(self.rmse_over_scale, 4),
                "mean_squared_error": self.mean_squared_error, "scale": self.scale}


def convert_to_tflite(source: SourceModel, mode: str, io_type: str = "int8", calibration: Dataset | None = None,
                      keras_model: Any = None) -> bytes:
    """The .tflite bytes of ``source`` (or of ``keras_model``, a pruned version of it) in ``mode``."""
    if mode not in QUANTIZE_MODES:
        raise BadInput(f"unknown quantization '{mode}' (choose from {', '.join(QUANTIZE_MODES)})")
    if source.tflite_bytes is not None and keras_model is None:
        if mode != "none":
            raise BadInput(f"{source.path}: a .tflite model cannot be quantized again; give the float source "
                           "(Keras .keras/.h5, SavedModel or ONNX)")
        return source.tflite_bytes
    if mode == "int8" and calibration is None:
        raise BadInput("full int8 quantization needs --calibration data (or --calibration synthetic)")
    tf = tensorflow()
    converter = _converter(tf, source, keras_model)
    _configure(tf, converter, mode, io_type, calibration)
    try:
        with quiet():
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise BadInput(f"{source.path}: TensorFlow Lite cannot convert this model"
                       f"{' to ' + mode if mode != 'none' else ''} ({short_error(exc)})") from None


def layer_losses(source: SourceModel, calibration: Dataset, probe: Dataset, keras_model: Any = None,
                 top: int = 3) -> list[LayerLoss]:
    """The ``top`` tensors int8 quantization hurts most, by TensorFlow's quantization debugger."""
    tf = tensorflow()
    converter = _converter(tf, source, keras_model)
    _configure(tf, converter, "int8", "float", calibration)
    try:
        with quiet():
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter,
                                                                 debug_dataset=_samples(probe))
            debugger.run()
            buf = io.StringIO()
            debugger.layer_statistics_dump(buf)
    except Exception:  # a diagnosis, never a reason to fail the conversion
        return []
    losses = []
    for row in csv.DictReader(io.StringIO(buf.getvalue())):
        try:
            scale, mse = float(row["scale"]), float(row["mean_squared_error"])
        except (KeyError, ValueError):
            continue
        if scale > 0 and np.isfinite(mse):
            losses.append(LayerLoss(row.get("op_name", "?"), _short_tensor_name(row.get("tensor_name", "")),
                                    float(np.sqrt(mse) / scale), mse, scale))
    losses.sort(key=lambda loss: loss.rmse_over_scale, reverse=True)
    return losses[:top]


def _short_tensor_name(name: str) -> str:
    """Fused tensors are named 'a;b;c': the first part names the layer."""
    return name.split(";")[0]


def _converter(tf: Any, source: SourceModel, keras_model: Any) -> Any:
    model = keras_model if keras_model is not None else source.keras_model
    if model is not None:
        return _keras_converter(tf, model, source)
    if source.saved_model_dir is not None:
        with quiet():
            return tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir))
    raise BadInput(f"{source.path}: no float graph to convert")


def _keras_converter(tf: Any, model: Any, source: SourceModel) -> Any:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    specs = [tf.TensorSpec((1, *info.shape[1:]), tf.as_dtype(info.dtype), name=info.name) for info in source.inputs]

    @tf.function
    def serve(*args: Any) -> Any:
        return model(list(args) if len(args) > 1 else args[0], training=False)

    try:
        with quiet():
            frozen = convert_variables_to_constants_v2(serve.get_concrete_function(*specs))
            return tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    except Exception as exc:
        raise BadInput(f"{source.path}: cannot trace the Keras model for conversion ({short_error(exc)})") from None


def _configure(tf: Any, converter: Any, mode: str, io_type: str, calibration: Dataset | None) -> None:
    if mode == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "int8":
        assert calibration is not None
        converter.representative_dataset = _samples(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if io_type == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def _samples(data: Dataset) -> Callable[[], Iterator[list[np.ndarray]]]:
    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(data)):
            yield data.sample(i)

    return gen
