"""Audio -> MFCC or log-mel features, the arithmetic of ``tf.signal`` in numpy (float64 inside).

The steps, each named by an :class:`AudioSpec` field: resample (``resample``), trim to ``clip_ms``,
``normalize`` (``max``: divide by the clip's largest sample, as MLPerf Tiny KWS's
``wav / tf.reduce_max(wav)``; ``peak``: by the largest magnitude; skipped for a silent clip), zero-pad to
``clip_ms``, frames of ``window_ms`` every ``stride_ms`` (no padding at the end, as
``tf.signal.stft(pad_end=False)``), periodic Hann window, ``fft_size``-point real FFT, magnitude (or
power, ``spectrum``), ``tf.signal.linear_to_mel_weight_matrix`` (HTK mel scale, ``mel_bins`` triangles
over ``lower_hz``..``upper_hz``, the DC bin left out), ``log(mel + log_offset)``, and for ``mfcc`` the
DCT-II of ``tf.signal.mfccs_from_log_mel_spectrograms`` (scaled by ``1/sqrt(2 * mel_bins)``), first
``coefficients`` kept.
"""

from __future__ import annotations

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.preprocess.spec import AudioSpec
from lepton_edge.preprocess.wav import read_wav


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return np.asarray(1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0))


def mel_matrix(spec: AudioSpec) -> np.ndarray:
    """(fft_length // 2 + 1, mel_bins) float64 weights, as ``tf.signal.linear_to_mel_weight_matrix``."""
    bins = spec.fft_length // 2 + 1
    linear_mel = _hz_to_mel(np.linspace(0.0, spec.sample_rate / 2.0, bins)[1:])[:, None]
    edges = np.linspace(_hz_to_mel(spec.lower_hz), _hz_to_mel(spec.upper_hz), spec.mel_bins + 2)
    lower, center, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    rising = (linear_mel - lower) / (center - lower)
    falling = (upper - linear_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.vstack([np.zeros((1, spec.mel_bins)), weights])


def dct_matrix(spec: AudioSpec) -> np.ndarray:
    """(mel_bins, coefficients): unnormalised DCT-II times ``1/sqrt(2 N)`` (``mfccs_from_log_mel_spectrograms``)."""
    n = spec.mel_bins
    k = np.arange(spec.coefficients)[None]
    i = np.arange(n)[:, None]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2.0 * n)) / np.sqrt(2.0 * n)


def resample_linear(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Linear interpolation from ``rate`` to ``target`` Hz (no anti-alias filter: a simple, stated choice)."""
    if rate == target:
        return samples
    count = int(len(samples) * target // rate)
    t = np.arange(count, dtype=np.float64) * (rate / target)
    return np.interp(t, np.arange(len(samples), dtype=np.float64), samples.astype(np.float64))


def condition(spec: AudioSpec, samples: np.ndarray) -> np.ndarray:
    """Samples at the spec's rate -> the clip the features see: trimmed, normalised, zero-padded (float64)."""
    x = np.asarray(samples, dtype=np.float64).reshape(-1)[:spec.clip_samples]
    if spec.normalize != "none" and x.size:
        top = float(np.max(x)) if spec.normalize == "max" else float(np.max(np.abs(x)))
        if top != 0.0:
            x = x / top
    return np.pad(x, (0, spec.clip_samples - x.size))


def features(spec: AudioSpec, samples: np.ndarray) -> np.ndarray:
    """Mono samples (float, [-1, 1], at ``spec.sample_rate``) -> float32 (frames, mfccs or mel bins)."""
    x = condition(spec, samples)
    win, step = spec.window_samples, spec.stride_samples
    starts = np.arange(spec.frames) * step
    frames = x[starts[:, None] + np.arange(win)[None]]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win) / win)
    spectrum = np.abs(np.fft.rfft(frames * window, n=spec.fft_length, axis=1))
    if spec.spectrum == "power":
        spectrum = spectrum * spectrum
    log_mel = np.log(spectrum @ mel_matrix(spec) + spec.log_offset)
    out = log_mel @ dct_matrix(spec) if spec.features == "mfcc" else log_mel
    return out.astype(np.float32)


def samples_to_input(spec: AudioSpec, samples: np.ndarray, rate: int | None = None) -> np.ndarray:
    """Samples at ``rate`` (default: the spec's) -> float32 (1, frames, features, 1)."""
    rate = spec.sample_rate if rate is None else rate
    if rate != spec.sample_rate:
        if spec.resample == "none":
            raise BadInput(f"audio at {rate} Hz, the model's preprocessing takes {spec.sample_rate} Hz "
                           f"(resample = \"linear\" in the spec would convert it)")
        samples = resample_linear(np.asarray(samples, dtype=np.float64), rate, spec.sample_rate)
    return features(spec, samples)[None, :, :, None]


def wav_to_input(spec: AudioSpec, data: bytes) -> np.ndarray:
    """WAV bytes -> float32 (1, frames, features, 1): the KWS layout; reshape for other layouts."""
    samples, rate = read_wav(data)
    return samples_to_input(spec, samples, rate)
