"""WAV bytes -> mono float samples in [-1, 1] and the sample rate; one BadInput line for anything else.

PCM 8 (unsigned), 16, 24 and 32-bit, IEEE float 32 and 64-bit, plain or WAVE_FORMAT_EXTENSIBLE. Integer
samples are divided by 2^(bits-1) (int16: x / 32768, as ``tf.audio.decode_wav``). Several channels are
averaged into one. A data chunk shorter than its header says (a stream cut off, or a writer that never
filled the size in) is read up to the last whole frame.
"""

from __future__ import annotations

import struct

import numpy as np

from lepton_edge.errors import BadInput

_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def _chunks(data: bytes) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8:pos + 8 + size]
        found.setdefault(cid, body)
        if cid == b"data":
            break
        pos += 8 + size + (size & 1)
    return found


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """``(samples, sample_rate)``: float32 mono samples in [-1, 1]."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise BadInput(f"not a WAV file ({len(data)} bytes, no RIFF/WAVE header)")
    chunks = _chunks(data)
    fmt = chunks.get(b"fmt ")
    if fmt is None or len(fmt) < 16:
        raise BadInput("WAV file has no valid 'fmt ' chunk")
    if b"data" not in chunks:
        raise BadInput("WAV file has no 'data' chunk")
    tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if channels < 1 or rate < 1:
        raise BadInput(f"WAV file declares {channels} channel(s) at {rate} Hz")
    kinds = {(_PCM, 8): "u1", (_PCM, 16): "<i2", (_PCM, 24): "i3", (_PCM, 32): "<i4",
             (_FLOAT, 32): "<f4", (_FLOAT, 64): "<f8"}
    kind = kinds.get((tag, bits))
    if kind is None:
        what = {_PCM: "PCM", _FLOAT: "float"}.get(tag, f"format {tag:#x}")
        raise BadInput(f"WAV {what} with {bits}-bit samples is not supported "
                       f"(PCM 8/16/24/32-bit or float 32/64-bit)")
    width = bits // 8
    raw = chunks[b"data"]
    frames = len(raw) // (width * channels)
    if frames == 0:
        raise BadInput("WAV file has no samples")
    raw = raw[:frames * width * channels]
    if kind == "i3":
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 bits
        x = ints.astype(np.float64) / float(1 << 23)
    elif kind == "u1":
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif kind in ("<f4", "<f8"):
        x = np.frombuffer(raw, dtype=kind).astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise BadInput("WAV float samples must be finite")
    else:
        x = np.frombuffer(raw, dtype=kind).astype(np.float64) / float(1 << (bits - 1))
    mono = x.reshape(frames, channels).mean(axis=1) if channels > 1 else x
    return mono.astype(np.float32), int(rate)


def write_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float samples in [-1, 1] -> 16-bit PCM WAV bytes (rounded, clipped): for tests and examples."""
    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    body = pcm.tobytes()
    fmt = struct.pack("<HHIIHH", _PCM, 1, sample_rate, sample_rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(body)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body)
