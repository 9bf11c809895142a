"""Small models the project makes itself, for the demo, tests and benchmarks (host-side: TensorFlow).

They are built with Keras from fixed seeds and converted to full-integer int8 TFLite, so every
run makes the same graph shape. Weights are untrained: these models exist to be planned, flashed
and run, not to be accurate.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lepton_edge.fsio import atomic_write_bytes
from lepton_edge.stdio import captured_fd2


def _quiet_tensorflow():
    """Import TensorFlow without its wall of C++ log lines on the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_fd2():
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _input(tf, shape: tuple, batch_size: int | None = 1):
    """A fixed batch of 1, as on a device: no SHAPE/PACK operators computing shapes at run time."""
    return tf.keras.Input(shape, batch_size=batch_size)


def _conv(tf, x, filters: int, k: int | tuple[int, int] = 3, stride: int = 1):
    x = tf.keras.layers.Conv2D(filters, k, strides=stride, padding="same", use_bias=True)(x)
    return tf.keras.layers.ReLU()(x)


def tiny_kws(tf, batch_size: int | None = 1):
    """A keyword-spotting DS-CNN in miniature: a chain (49x10 MFCC input, 12 classes)."""
    inp = _input(tf, (49, 10, 1), batch_size)
    x = _conv(tf, inp, 32, k=(10, 4), stride=2)
    for _ in range(2):
        x = tf.keras.layers.DepthwiseConv2D(3, padding="same")(x)
        x = tf.keras.layers.ReLU()(x)
        x = _conv(tf, x, 32, k=1)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    out = tf.keras.layers.Dense(12, activation="softmax")(x)
    return tf.keras.Model(inp, out, name="tiny_kws")


def residual(tf):
    """ResNet-style blocks: every block's input lives across two convolutions to an ADD."""
    inp = _input(tf, (32, 32, 3))
    x = _conv(tf, inp, 16)
    for filters, stride in ((16, 1), (24, 2), (32, 2)):
        shortcut = (x if stride == 1 and x.shape[-1] == filters
                    else tf.keras.layers.Conv2D(filters, 1, strides=stride)(x))
        y = _conv(tf, x, filters, stride=stride)
        y = tf.keras.layers.Conv2D(filters, 3, padding="same")(y)
        x = tf.keras.layers.ReLU()(tf.keras.layers.Add()([shortcut, y]))
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(10)(x), name="residual")


def inception(tf):
    """Branches of different widths joined by CONCATENATION."""
    inp = _input(tf, (24, 24, 3))
    x = _conv(tf, inp, 12)
    for width in (8, 12):
        a = _conv(tf, x, width, k=1)
        b = _conv(tf, _conv(tf, x, width // 2, k=1), width, k=3)
        c = _conv(tf, _conv(tf, x, width // 2, k=1), width, k=5)
        d = tf.keras.layers.MaxPooling2D(3, strides=1, padding="same")(x)
        x = tf.keras.layers.Concatenate()([a, b, c, d])
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    return tf.keras.Model(inp, tf.keras.layers.Dense(5)(x), name="inception")


def multi_output(tf):
    """A shared trunk with two heads: two graph outputs of different sizes."""
    inp = _input(tf, (16, 16, 2))
    x = _conv(tf, inp, 16)
    x = _conv(tf, x, 16, stride=2)
    seg = tf.keras.layers.Conv2D(3, 1, name="segmentation")(x)
    y = tf.keras.layers.GlobalAveragePooling2D()(_conv(tf, x, 24, stride=2))
    cls = tf.keras.layers.Dense(4, name="classes")(y)
    return tf.keras.Model(inp, [seg, cls], name="multi_output")


def unet(tf):
    """An encoder-decoder with long skip connections: tensors that live across most of the graph."""
    inp = _input(tf, (32, 32, 1))
    e1 = _conv(tf, inp, 8)
    e2 = _conv(tf, e1, 16, stride=2)
    e3 = _conv(tf, e2, 24, stride=2)
    # Transposed convolutions upsample (Keras 3's UpSampling2D lowers to TILE/SHAPE, which TFLite Micro lacks).
    d2 = tf.keras.layers.Conv2DTranspose(16, 2, strides=2)(e3)
    d2 = _conv(tf, tf.keras.layers.Concatenate()([d2, e2]), 16)
    d1 = tf.keras.layers.Conv2DTranspose(8, 2, strides=2)(d2)
    d1 = _conv(tf, tf.keras.layers.Concatenate()([d1, e1]), 8)
    return tf.keras.Model(inp, tf.keras.layers.Conv2D(2, 1)(d1), name="unet")


def dense_block(tf):
    """DenseNet-style: each layer sees the concatenation of all before it."""
    inp = _input(tf, (16, 16, 4))
    feats = [_conv(tf, inp, 8)]
    for _ in range(4):
        x = feats[0] if len(feats) == 1 else tf.keras.layers.Concatenate()(feats)
        feats.append(_conv(tf, x, 6))
    x = tf.keras.layers.GlobalAveragePooling2D()(tf.keras.layers.Concatenate()(feats))
    return tf.keras.Model(inp, tf.keras.layers.Dense(3)(x), name="dense_block")


def mobilenet_vww(tf):
    """MobileNetV1 with width 0.25 at 96x96: the architecture of MLPerf Tiny's visual wake words."""
    inp = _input(tf, (96, 96, 3))
    x = _conv(tf, inp, 8, stride=2)
    for filters, stride in ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1), (128, 2),
                            (128, 1), (128, 1), (128, 1), (128, 1), (128, 1), (256, 2), (256, 1)):
        x = tf.keras.layers.DepthwiseConv2D(3, strides=stride, padding="same")(x)
        x = _conv(tf, tf.keras.layers.ReLU()(x), filters, k=1)
    x = tf.keras.layers.Flatten()(tf.keras.layers.AveragePooling2D(x.shape[1])(x))
    return tf.keras.Model(inp, tf.keras.layers.Dense(2)(x), name="mobilenet_vww")


SAMPLES: dict[str, Callable] = {
    "mobilenet-vww": mobilenet_vww,
    "tiny-kws": tiny_kws,
    "residual": residual,
    "inception": inception,
    "multi-output": multi_output,
    "unet": unet,
    "dense-block": dense_block,
}
#: The graphs with branches (not a plain chain).
BRANCHING = ("residual", "inception", "multi-output", "unet", "dense-block")


def build_keras(name: str, seed: int = 0):
    tf = _quiet_tensorflow()
    tf.keras.utils.set_random_seed(seed)
    return SAMPLES[name](tf)


def keras_to_int8_tflite(model, seed: int = 0, samples: int = 8) -> bytes:
    """Full-integer int8 conversion with random calibration data (fine for untrained sample models)."""
    tf = _quiet_tensorflow()
    rng = np.random.default_rng(seed)
    shapes = [tuple(1 if d is None else d for d in inp.shape) for inp in model.inputs]

    def representative():
        for _ in range(samples):
            yield [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_fd2():
        warnings.simplefilter("ignore")
        return conv.convert()


def make_sample(name: str, out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write ``<out_dir>/<name>.tflite`` (int8) unless it is already there; return its path."""
    path = Path(out_dir) / f"{name}.tflite"
    if not path.exists():
        atomic_write_bytes(path, keras_to_int8_tflite(build_keras(name, seed), seed))
    return path


def keyword_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 49x10 "MFCC" features of 12 keywords: a fixed pattern per class plus noise.

    Not speech: a learnable stand-in so the demo trains a model whose accuracy means something.
    """
    prototypes = np.random.default_rng(1234).normal(0.0, 1.0, (12, 49, 10, 1)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 12, n)
    x = prototypes[y] + rng.normal(0.0, 0.6, (n, 49, 10, 1)).astype(np.float32)
    return x.astype(np.float32), y.astype(np.int64)


def train_keyword_model(path: str | os.PathLike[str], epochs: int = 4, seed: int = 0) -> Path:
    """Train the tiny keyword spotter on :func:`keyword_data` and save it as a Keras file."""
    tf = _quiet_tensorflow()
    tf.keras.utils.set_random_seed(seed)
    model = tiny_kws(tf, batch_size=None)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = keyword_data(2400, seed)
    with captured_fd2():
        model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, out)
    return out
