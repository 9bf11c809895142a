"""TensorFlow and Keras, imported and run without their log noise on the user's terminal.

TensorFlow's C++ side writes straight to file descriptor 2 (CUDA probing, absl warnings), Keras
prints progress to stdout and Python warnings about deprecations: the converter's promise is a
table, or one line on error, so every call into TensorFlow runs inside :func:`quiet`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from lepton_edge.errors import one_line
from lepton_edge.stdio import Captured, captured_fd2


@contextlib.contextmanager
def quiet() -> Iterator[Captured]:
    """Swallow fd 2, stdout and Python warnings for the duration of the block."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_fd2() as cap:
        warnings.simplefilter("ignore")
        yield cap


def tensorflow() -> Any:
    """``import tensorflow`` quietly (its import alone prints a dozen lines)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet():
        import tensorflow as tf

        try:
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)
        except ImportError:  # pragma: no cover - absl comes with TensorFlow
            pass
    tf.get_logger().setLevel(logging.ERROR)
    return tf


def keras_module(flavor: str) -> Any:
    """The Keras package a model belongs to: ``keras`` (Keras 3) or ``tf_keras`` (Keras 2)."""
    tensorflow()
    with quiet():
        if flavor == "tf_keras":
            import tf_keras as k
        else:
            import keras as k
    return k


def short_error(exc: BaseException, limit: int = 240) -> str:
    """One line from an exception TensorFlow raised (they often span pages)."""
    text = one_line(exc)
    return text if len(text) <= limit else text[: limit - 1] + "…"
