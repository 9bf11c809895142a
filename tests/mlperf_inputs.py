"""Inputs resembling the MLPerf Tiny audio models' real ones, made from synthetic sounds (no downloads).

``kws_features``: MFCCs exactly as the MLPerf Tiny keyword-spotting pipeline computes them (16 kHz,
30 ms windows every 20 ms, 40 mel bins from 20 to 4000 Hz, log, first 10 MFCCs: 49x10) of one-second
clips of voiced, formant-shaped "words" over room noise, some clips zero-padded at the end as short
Speech Commands recordings are. ``ad_features``: five frames of 128-bin log-mel power in dB (1024-point
FFT, hop 512) of machine-like hum plus noise, as the ToyCar autoencoder takes them (640 values).
``ic_images``: the real photo crops of ../shared/data, as MLPerf's image classifier takes them (0..255).

Seeded: the same seed gives the same data. Used by tests and bench/convert.py (never the product).
"""

from __future__ import annotations

import numpy as np

SR = 16000


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    return np.fft.irfft(spec / np.sqrt(f), n)


def speech_like(rng: np.random.Generator, n: int = SR) -> np.ndarray:
    audio = _pink(rng, n)
    audio *= 10 ** rng.uniform(-3.5, -1.8) / (np.std(audio) + 1e-12)
    if rng.random() < 0.9:
        dur = int(rng.uniform(0.25, 0.7) * SR)
        start = int(rng.integers(0, n - dur))
        t = np.arange(dur) / SR
        f0 = rng.uniform(90, 260) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SR
        formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
        voiced = np.zeros(dur)
        for k in range(1, 40):
            fk = k * float(f0.mean())
            if fk > 7000:
                break
            gain = sum(np.exp(-((fk - F) / 150.0) ** 2) for F in formants) + 0.05
            voiced += gain / np.sqrt(k) * np.sin(k * phase)
        env = np.sin(np.pi * np.linspace(0, 1, dur)) ** rng.uniform(0.5, 2)
        fricative = rng.standard_normal(dur) * (0.3 if rng.random() < 0.5 else 0.0)
        word = (voiced + fricative * np.linspace(1, 0, dur) ** 3) * env
        word *= 10 ** rng.uniform(-1.5, -0.2) / (np.abs(word).max() + 1e-12)
        audio[start:start + dur] += word
    if rng.random() < 0.5:  # a short recording, zero-padded to one second
        audio[int(n * rng.uniform(0.6, 1.0)):] = 0.0
    return np.clip(audio, -1, 1).astype(np.float32)


def kws_features(count: int, seed: int) -> np.ndarray:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    audio = np.stack([speech_like(rng) for _ in range(count)])
    spec = tf.abs(tf.signal.stft(audio, frame_length=480, frame_step=320, fft_length=512))
    mel = tf.tensordot(spec, tf.signal.linear_to_mel_weight_matrix(40, 257, SR, 20.0, 4000.0), 1)
    mfcc = tf.signal.mfccs_from_log_mel_spectrograms(tf.math.log(mel + 1e-6))[..., :10]
    return mfcc.numpy().reshape(count, 49, 10, 1).astype(np.float32)


def machine_like(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / SR
    f0 = rng.uniform(20, 120) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    hum = sum(rng.uniform(0.2, 1) / k * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, 40))
    noise = _pink(rng, n) * rng.uniform(0.2, 1.5)
    audio = hum / (np.std(hum) + 1e-12) * rng.uniform(0.3, 1) + noise / (np.std(noise) + 1e-12)
    return (audio * 10 ** rng.uniform(-2.5, -1)).astype(np.float32)


def ad_features(count: int, seed: int) -> np.ndarray:
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    n = 512 * 5 + 1024
    audio = np.stack([machine_like(rng, n) for _ in range(count)])
    power = tf.abs(tf.signal.stft(audio, frame_length=1024, frame_step=512, fft_length=1024)) ** 2
    mel = tf.tensordot(power, tf.signal.linear_to_mel_weight_matrix(128, 513, SR, 0.0, SR / 2), 1).numpy()
    logmel = 10.0 * np.log10(mel + np.finfo(np.float32).eps)
    return logmel[:, :5, :].reshape(count, 640).astype(np.float32)


def ic_images(path) -> np.ndarray:
    """MLPerf Tiny's ResNet-8 takes pixel values 0..255 (its float model predicts one class for all
    inputs scaled to 0..1, and the benchmark's int8 model has input scale 1.0, zero point -128)."""
    return np.load(path)["x"].astype(np.float32)
