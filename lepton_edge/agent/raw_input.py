"""Raw bodies for ``POST /v1/infer``: an image, a WAV, or a JSON list of unscaled values, made into the model's
input by the preprocessing spec in its manifest (``"preprocess"``, :mod:`lepton_edge.preprocess`), then
quantized with the input tensor's scale and zero point, exactly as the host pipeline does it.

* ``image/jpeg``, ``image/png``: decoded, cropped, resized, colour-ordered and scaled by an image spec;
* ``audio/wav``: MFCC or log-mel features by an audio spec (a WAV at another rate is refused unless the
  spec resamples);
* ``application/json`` whose body is a JSON **list** (nested, row-major): unscaled values, e.g. 8-bit
  pixels of any size, audio samples, or a tensor before its scale and offset. A JSON *object*
  (``{"inputs": ...}``) keeps its meaning: the model's own input values (:mod:`lepton_edge.agent.codec`).

A body the spec cannot take is a one-line 4xx: 415 for a content type the model's spec does not read (or
a model without a spec), 400 for a body that does not decode (a corrupt JPEG, a WAV at the wrong rate),
422 when the manifest's spec cannot make the model's input. Raw tensor bytes are untouched.

Device-side: numpy and :mod:`lepton_edge.preprocess` (Pillow only for images).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lepton_edge.errors import ApiError, BadInput
from lepton_edge.preprocess import (
    AUDIO_TYPES,
    IMAGE_TYPES,
    JSON_TYPES,
    PreprocessSpec,
    check_against_input,
    decode,
    parse_spec,
    quantize,
)
from lepton_edge.runtime.base import TensorSpec

_TAKES = {"image": "image/jpeg or image/png", "audio": "audio/wav", "tensor": "a JSON list"}


def is_raw(content_type: str, body: bytes, manifest: Mapping[str, Any]) -> bool:
    """Whether a request is a raw body for the preprocessing spec rather than the model's tensors: an image or
    a WAV (refused later without a spec), or a JSON list when the manifest has a spec (without one, a JSON
    list stays the codec's to refuse, as before specs existed)."""
    if content_type in IMAGE_TYPES or content_type in AUDIO_TYPES:
        return True
    return content_type in JSON_TYPES and "preprocess" in manifest and body.lstrip()[:1] == b"["


def manifest_spec(manifest: Mapping[str, Any], source: str) -> PreprocessSpec | None:
    """The manifest's preprocessing spec, or None without one; ApiError 422 for one that does not parse."""
    table = manifest.get("preprocess")
    if table is None:
        return None
    try:
        return parse_spec(table, f"{source} manifest")
    except BadInput as exc:
        raise ApiError(422, str(exc)) from None


def raw_to_inputs(spec: PreprocessSpec | None, inputs: Sequence[TensorSpec], body: bytes, content_type: str,
                  source: str) -> list[np.ndarray[Any, Any]]:
    """A raw body -> the model's input tensor(s), through the manifest's spec (:func:`manifest_spec`, parsed
    once per served model) and the input's quantization."""
    what = "a JSON list of unscaled values" if content_type in JSON_TYPES else f"a {content_type} body"
    if spec is None:  # an image or a WAV: a JSON list without a spec does not come here (is_raw)
        raise ApiError(415, f"{what} needs a preprocessing spec, and {source} has none in its manifest: send "
                            f"the model's input (application/json {{\"inputs\": ...}} or application/octet-stream)")
    if content_type not in JSON_TYPES and content_type not in (IMAGE_TYPES if spec.kind == "image" else
                                                               AUDIO_TYPES if spec.kind == "audio" else ()):
        raise ApiError(415, f"{what}, but {source} has {spec.kind} preprocessing: it takes {_TAKES[spec.kind]} "
                            f"(or a JSON list of unscaled values)")
    if len(inputs) != 1:
        raise ApiError(422, f"{source} has {len(inputs)} inputs; a preprocessing spec feeds a model with one")
    tensor = inputs[0]
    try:
        check_against_input(spec, tensor.shape, f"{source} manifest")
    except BadInput as exc:
        raise ApiError(422, str(exc)) from None
    try:
        x = decode(spec, body, content_type, tensor.shape)
    except BadInput as exc:
        raise ApiError(400, str(exc)) from None
    if tensor.quantized:
        assert tensor.scale is not None and tensor.zero_point is not None  # quantized: both set
        return [quantize(x, tensor.scale, tensor.zero_point, np.dtype(tensor.dtype))]
    return [np.asarray(x, dtype=np.dtype(tensor.dtype))]


def wants_binary(accept: str | None) -> bool:
    """``Accept: application/octet-stream``: answer the output tensors' bytes, as for a raw-bytes request."""
    return accept is not None and "application/octet-stream" in accept.lower()
