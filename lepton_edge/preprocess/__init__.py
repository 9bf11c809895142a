"""Preprocessing that travels with the model: one numpy implementation for the converter, the agent and
the tests (device-side: numpy and the standard library; Pillow only to decode JPEG/PNG).

:func:`decode` turns a request body into the model's float input; :func:`quantize` makes the integer
tensor of a quantized input. The spec itself: :mod:`lepton_edge.preprocess.spec`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.preprocess.audio import features, samples_to_input, wav_to_input
from lepton_edge.preprocess.image import finish_pixels, image_to_input, pixels_to_input
from lepton_edge.preprocess.spec import (
    AudioSpec,
    ImageSpec,
    PreprocessSpec,
    ScaleSpec,
    check_against_input,
    load_spec,
    parse_spec,
    spec_to_dict,
)
from lepton_edge.preprocess.tensor import tensor_to_input

__all__ = ["AudioSpec", "ImageSpec", "PreprocessSpec", "ScaleSpec", "array_to_input", "check_against_input",
           "decode", "features", "fit_shape", "image_to_input", "load_spec", "parse_spec", "pixels_to_input",
           "quantize", "samples_to_input", "spec_to_dict", "tensor_to_input", "wav_to_input"]

IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png")
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")
JSON_TYPES = ("application/json",)


def fit_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` reshaped to the model's input ``shape`` (same row-major order); BadInput if the counts differ."""
    if x.size != math.prod(shape):
        raise BadInput(f"the preprocessing gives {x.size} values ({'x'.join(map(str, x.shape))}), "
                       f"the model's input {'x'.join(map(str, shape))} takes {math.prod(shape)}")
    return x.reshape(shape)


def array_to_input(spec: PreprocessSpec, values: np.ndarray) -> np.ndarray:
    """Unscaled values -> float32 for the model: 8-bit pixels of any size (or unscaled float pixels at the
    model's size, RGB), audio samples at the spec's rate, or a tensor."""
    if isinstance(spec, ImageSpec):
        arr = np.asarray(values)
        at_size = arr.shape in ((*spec.size, spec.channels), (1, *spec.size, spec.channels))
        if at_size and arr.dtype.kind == "f" and not np.all(arr == np.round(arr)):
            if not np.all(np.isfinite(arr)):
                raise BadInput("image values must be finite")
            return finish_pixels(spec, arr.reshape(*spec.size, spec.channels))  # unscaled floats at the model's size
        return pixels_to_input(spec, arr)
    if isinstance(spec, AudioSpec):
        samples = np.asarray(values)
        if samples.dtype.kind not in "iuf" or samples.size == 0:
            raise BadInput(f"audio samples must be numbers, got {samples.dtype} with {samples.size} values")
        if samples.dtype.kind in "iu":  # 16-bit PCM as integers
            samples = samples.astype(np.float64) / 32768.0
        if not np.all(np.isfinite(samples)):
            raise BadInput("audio samples must be finite")
        return samples_to_input(spec, samples.reshape(-1))
    return tensor_to_input(spec, values)


def _json_values(body: bytes) -> np.ndarray:
    try:
        doc: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not valid JSON ({' '.join(str(exc).split())})") from None
    if isinstance(doc, dict):
        if "inputs" not in doc:
            raise BadInput("JSON body must be a nested list of numbers or an object with 'inputs'")
        doc = doc["inputs"]
    try:
        arr = np.asarray(doc)
    except ValueError:
        raise BadInput("JSON values must be numbers in lists of equal length") from None
    if arr.dtype.kind not in "iuf" or arr.size == 0:
        raise BadInput("JSON values must be numbers in lists of equal length")
    return arr


def decode(spec: PreprocessSpec, body: bytes, content_type: str,
           shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A request body -> the model's float32 input (``shape`` if given, else the spec's natural layout).

    ``image/jpeg``/``image/png`` for an image spec, ``audio/wav`` for an audio spec, ``application/json``
    (a nested list of unscaled numbers, or ``{"inputs": ...}``) for any spec. Anything else: BadInput.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in IMAGE_TYPES:
        if not isinstance(spec, ImageSpec):
            raise BadInput(f"{kind} body, but the model's preprocessing is {spec.kind}")
        x = image_to_input(spec, bytes(body))
    elif kind in AUDIO_TYPES:
        if not isinstance(spec, AudioSpec):
            raise BadInput(f"{kind} body, but the model's preprocessing is {spec.kind}")
        x = wav_to_input(spec, bytes(body))
    elif kind in JSON_TYPES:
        x = array_to_input(spec, _json_values(body))
    else:
        takes = {"image": "image/jpeg, image/png", "audio": "audio/wav", "tensor": "application/json"}[spec.kind]
        raise BadInput(f"content type {kind or '(none)'} not accepted: the model's {spec.kind} preprocessing "
                       f"takes {takes}" + ("" if spec.kind == "tensor" else " or application/json"))
    return x if shape is None else fit_shape(x, tuple(shape))


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """Float values -> an integer tensor, as the runtime does: ``round(x / scale) + zero_point`` (round half
    to even, float32 division), clipped to the dtype's range."""
    info = np.iinfo(np.dtype(dtype))
    q = np.round(np.asarray(x, dtype=np.float32) / np.float32(scale)) + zero_point
    out: np.ndarray = np.clip(q, info.min, info.max).astype(dtype)
    return out
