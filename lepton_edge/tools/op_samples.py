"""A model the project makes to cover the firmware's operators (host-side: TensorFlow).

:func:`op_coverage` is a small untrained Keras model (16x16x3 in; out 10 class scores and two
intermediate tensors; about 10,000 parameters) built so that the kit's int8 converter emits, in one
graph, the operators of the firmware's list (``firmware_bridge/firmware/core/ops.h``) that MLPerf
Tiny's models do not use, each on a CMSIS-NN kernel where the firmware has one for it (broadcasting
ADD and MUL excepted: TFLite Micro's reference code on every board). The firmware's bit-exactness
tests convert it with ``lepton-edge convert`` and run it on each board.
Not part of :data:`lepton_edge.tools.samples.SAMPLES` (the planner benchmark's set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lepton_edge.tools.samples import _quiet_tensorflow

#: The operators the int8 conversion of :func:`op_coverage` contains (``--io float`` adds the
#: float QUANTIZE at the input and DEQUANTIZE at the output).
OP_COVERAGE_OPS = (
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED",
    "HARD_SWISH", "LEAKY_RELU", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PAD",
    "QUANTIZE", "RELU6", "RESHAPE", "SOFTMAX", "STRIDED_SLICE", "SUB", "TANH", "TRANSPOSE",
)
OP_COVERAGE_SHAPE = (16, 16, 3)


def op_coverage(keras):
    """One of each, three outputs: the comments name the TFLite operator each layer becomes after int8 conversion.

    ``keras`` is Keras 3 itself, not ``tf.keras``: once ``tf_keras`` has been imported in the process
    (the converter does, for Keras 2 era files), ``tf.keras`` may resolve to it, and it has no
    ``hard_silu``."""
    layers = keras.layers
    inp = keras.Input(OP_COVERAGE_SHAPE, batch_size=1)
    x = layers.Conv2D(8, 3, padding="same")(inp)                     # CONV_2D
    x = layers.ReLU(max_value=6.0)(x)                                 # (fused into the CONV_2D)
    x = layers.ZeroPadding2D(((2, 0), (0, 2)))(x)                     # PAD (asymmetric: not folded)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2)(x)              # DEPTHWISE_CONV_2D, multiplier 2
    a = layers.Activation("hard_silu")(x)                             # HARD_SWISH
    b = layers.LeakyReLU(0.1)(x)                                      # LEAKY_RELU
    c = layers.Activation("tanh")(x)                                  # TANH
    activations = layers.Concatenate()([a, b, c])                     # CONCATENATION (3 inputs)
    x = layers.Conv2D(12, 1)(activations)                                       # CONV_2D 1x1
    p = layers.MaxPooling2D(2)(x)                                     # MAX_POOL_2D
    q = layers.AveragePooling2D(2)(x)                                 # AVERAGE_POOL_2D
    x = layers.Concatenate()([p, q])
    se = layers.GlobalAveragePooling2D(keepdims=True)(x)              # MEAN
    gate = layers.Dense(24, activation="sigmoid")(se)                 # FULLY_CONNECTED, LOGISTIC
    # Broadcasting ADD and MUL take TFLite Micro's reference code on every board (CMSIS-NN's
    # elementwise kernels need equal shapes); the equal-shape MUL below takes arm_elementwise_mul_s8.
    x = layers.Multiply()([x, gate])                                  # MUL, broadcast 1x1 over 8x8
    x = layers.Add()([x, layers.Dense(24)(se)])                       # ADD, broadcast 1x1 over 8x8
    extremes = layers.Concatenate()([layers.Maximum()([p, q]),         # MAXIMUM
                                     layers.Minimum()([layers.Multiply()([p, q]), q])])  # MUL, MINIMUM
    mixed = layers.Subtract()([x, extremes])                          # SUB
    x = layers.Cropping2D(((1, 1), (2, 0)))(mixed)                        # STRIDED_SLICE
    x = layers.Permute((2, 1, 3))(x)                                  # TRANSPOSE
    x = layers.ReLU(max_value=6.0)(x)                                 # RELU6
    x = layers.Flatten()(x)                                           # RESHAPE
    x = layers.Dense(10)(x)                                           # FULLY_CONNECTED
    probabilities = layers.Softmax()(x)                               # SOFTMAX
    # The intermediate tensors are outputs too: an untrained model's softmax hardly moves, and a
    # one-step difference in an early operator would vanish in the requantizations after it.
    return keras.Model(inp, [probabilities, activations, mixed], name="op_coverage")


def save_op_coverage(out_dir: str | os.PathLike[str], seed: int = 0, calibration_samples: int = 16
                     ) -> tuple[Path, Path]:
    """Write ``op_coverage.keras`` and ``op_coverage_cal.npy`` (seeded uniform [-1, 1) calibration
    data) into ``out_dir``; return their paths, for ``lepton-edge convert MODEL --calibration DATA``."""
    _quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path, data_path = out / "op_coverage.keras", out / "op_coverage_cal.npy"
    op_coverage(keras).save(model_path)
    rng = np.random.default_rng(seed)
    np.save(data_path, rng.uniform(-1.0, 1.0, (calibration_samples, *OP_COVERAGE_SHAPE)).astype(np.float32))
    return model_path, data_path
