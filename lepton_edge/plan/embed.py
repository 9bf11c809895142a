"""Store an arena plan in a model so that stock TFLite Micro uses our offsets.

TFLite Micro reads metadata named ``OfflineMemoryAllocation``: int32 words
``[version, subgraph, n, offset_0 ... offset_{n-1}]``, one offset per tensor of all subgraphs,
-1 for "plan at run time" (constants and variables, which never live in the planned head).
"""

from __future__ import annotations

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.tflite import writer
from lepton_edge.tflite.model import TFLiteModel

OFFLINE_PLAN_METADATA = "OfflineMemoryAllocation"
PLAN_FORMAT_VERSION = 1


def encode_plan(offsets: dict[int, int], n_tensors: int) -> bytes:
    words = np.full(3 + n_tensors, -1, dtype="<i4")
    words[0], words[1], words[2] = PLAN_FORMAT_VERSION, 0, n_tensors
    for tensor, offset in offsets.items():
        words[3 + tensor] = offset
    return words.tobytes()


def decode_plan(payload: bytes) -> list[int]:
    """Per-tensor offsets (-1 where unplanned) from an ``OfflineMemoryAllocation`` payload."""
    if len(payload) < 12 or len(payload) % 4:
        raise BadInput("OfflineMemoryAllocation metadata is malformed")
    words = np.frombuffer(payload, dtype="<i4")
    n = int(words[2])
    if n != len(words) - 3:
        raise BadInput(f"OfflineMemoryAllocation metadata lists {len(words) - 3} offsets but says {n}")
    return [int(w) for w in words[3:]]


def embed_plan(model_bytes: bytes, model: TFLiteModel, offsets: dict[int, int]) -> bytes:
    """A copy of ``model_bytes`` carrying ``offsets`` as its offline plan (an existing plan is replaced)."""
    return writer.set_metadata(model_bytes, OFFLINE_PLAN_METADATA, encode_plan(offsets, model.tensor_count))


def embedded_plan(model_bytes: bytes) -> list[int] | None:
    payload = writer.get_metadata(model_bytes, OFFLINE_PLAN_METADATA)
    return None if payload is None else decode_plan(payload)
