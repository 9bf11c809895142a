"""The firmware's C preprocessing front end (firmware_bridge/firmware/core/preprocess) against the numpy one
(lepton_edge.preprocess), built with the host's g++ under ASan and UBSan with TFLite Micro's signal sources
(the float real FFT, kissfft) from the TFLM tree the firmware builds with.

Scaling, colour conversion and quantization: bit for bit (both are float32 operations in the same order;
the C is built with -ffp-contract=off, as the firmware's Makefile builds it). The centre crop and the resize
("nearest", "bilinear"): bit for bit against the numpy implementation and Pillow itself, and the whole
image pipeline (an RGB frame of any size to the int8 input tensor) against numpy's.

Features, on synthetic 16-bit WAVs (tones, a sweep, noise, silence, a short and a long clip, a clip whose
largest sample is negative, a square wave at full scale), for MLPerf Tiny KWS's MFCC spec and two others.
The C computes in float32 (a Cortex-M4F's FPU), numpy in float64, so they differ by float32 rounding,
mostly the FFT's, which is relative to the frame's loudest bin. The stated tolerance (docs/PREPROCESS.md):

* log-mel, in the mel-energy domain: ``|exp(C) - exp(numpy)| <= 1e-4 * exp(numpy) + 1e-6 * (the frame's
  largest exp(numpy))`` (measured: at most 0.36 of that bound). A band far below the frame's peak carries
  the FFT's rounding, which the log magnifies: up to 0.035 on a log-mel value of a band 70 dB down, where
  tf.signal in float32 differs from a float64 reference by as much;
* MFCC: ``|C - numpy| <= 1e-3 * max|numpy|`` over the clip (measured: at most 2.3e-4 of it);
* KWS: quantized to the int8 model's input, at most one step apart, in at most 2% of the values.

Without a TFLite Micro tree these skip (they fail with LEPTON_REQUIRE_SHARED=1).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_tflm_tree
from lepton_edge.preprocess import quantize
from lepton_edge.preprocess.audio import wav_to_input
from lepton_edge.preprocess.image import pixels_to_input, resize, scale_pixels, to_grayscale
from lepton_edge.preprocess.spec import AudioSpec, ImageSpec
from lepton_edge.preprocess.wav import write_wav

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware_bridge" / "firmware"
PREPROCESS = FIRMWARE / "core" / "preprocess"
FEATURE_RTOL = 1e-3        # of the clip's largest |feature|
MEL_RTOL, MEL_FLOOR = 1e-4, 1e-6  # mel-energy domain: relative, and of the frame's loudest band
KWS_INPUT = (0.5847029089927673, 83)  # MLPerf Tiny KWS int8: input scale and zero point


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    """core/preprocess/test_preprocess.cc with the front end and TFLM's float RFFT, built once."""
    if shutil.which("g++") is None:
        pytest.skip("no system C++ compiler (g++)")
    tree = require_tflm_tree()
    kissfft = tree / "tensorflow" / "lite" / "micro" / "tools" / "make" / "downloads" / "kissfft"
    signal = tree / "signal" / "src"
    sources = [*(PREPROCESS / f for f in ("test_preprocess.cc", "audio.cc", "scale.cc", "image.cc")),
               signal / "rfft_float.cc", signal / "kiss_fft_wrappers" / "kiss_fft_float.cc"]
    exe = tmp_path_factory.mktemp("preprocess_c") / "test_preprocess"
    run = subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1", "-g", "-ffp-contract=off",
                          "-fsanitize=address,undefined", "-fno-sanitize-recover=all", f"-I{FIRMWARE}",
                          f"-I{FIRMWARE / 'core'}", "-isystem", str(tree), "-isystem", str(kissfft),
                          *map(str, sources), "-o", str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return exe


def _run(driver: Path, mode: str, data: bytes, tmp: Path, *args: str) -> bytes:
    src, dst = tmp / f"{mode}.in", tmp / f"{mode}.out"
    src.write_bytes(data)
    run = subprocess.run([str(driver), mode, str(src), str(dst), *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return dst.read_bytes()


def _floats(values) -> str:
    return ",".join(repr(float(v)) for v in values)


# ---------------------------------------------------------------- scaling and quantization, bit for bit

IMAGE_SPECS = [
    ImageSpec(size=(8, 8), scale=1 / 255),
    ImageSpec(size=(8, 8), scale=2 / 255, offset=-1.0),
    ImageSpec(size=(8, 8), scale=0.017, offset=-2.1179),
    ImageSpec(size=(8, 8), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    ImageSpec(size=(8, 8), mean=(127.5,), std=(127.5,)),
    ImageSpec(size=(8, 8), color="grayscale", mean=(0.449 * 255,), std=(0.226 * 255,)),
    ImageSpec(size=(8, 8), color="grayscale", scale=1 / 127.5, offset=-1.0),
]


def _norm_args(spec: ImageSpec) -> list[str]:
    if spec.mean is not None and spec.std is not None:
        return [f"channels={spec.channels}", f"mean={_floats(spec.mean)}", f"std={_floats(spec.std)}"]
    return [f"channels={spec.channels}", f"scale={spec.scale!r}", f"offset={spec.offset!r}"]


@pytest.mark.parametrize("spec", IMAGE_SPECS, ids=lambda s: f"{s.color}-{'mean_std' if s.mean else 'scale'}")
def test_scaling_matches_numpy_bit_for_bit(driver, tmp_path, spec):
    rng = np.random.default_rng(1)
    pixels = np.concatenate([np.arange(256, dtype=np.uint8).repeat(spec.channels),  # every value, every channel
                             rng.integers(0, 256, 64 * 64 * spec.channels, dtype=np.uint8)]).reshape(-1, spec.channels)
    out = np.frombuffer(_run(driver, "image", pixels.tobytes(), tmp_path, *_norm_args(spec)), "<f4")
    expected = scale_pixels(spec, pixels).ravel()
    assert out.tobytes() == expected.astype("<f4").tobytes()


QUANTS = [("int8", 0.5847029089927673, 83), ("int8", 1.0, -128), ("int8", 1 / 255, -128), ("uint8", 0.0078125, 128),
          ("int16", 3.0517578125e-05, 0), ("int16", 0.001, -7)]


@pytest.mark.parametrize(("dtype", "scale", "zero_point"), QUANTS)
def test_quantization_matches_numpy_bit_for_bit(driver, tmp_path, dtype, scale, zero_point):
    rng = np.random.default_rng(2)
    steps = np.arange(-300, 301, dtype=np.float32)
    values = np.concatenate([
        steps * np.float32(scale),                        # exact steps
        (steps + np.float32(0.5)) * np.float32(scale),    # ties: numpy rounds half to even
        rng.normal(0, 200 * scale, 5000).astype(np.float32),
        np.array([0.0, -0.0, 1e30, -1e30, 1e-30], dtype=np.float32)]).astype(np.float32)
    out = np.frombuffer(_run(driver, "quantize", values.tobytes(), tmp_path, f"scale={scale!r}",
                             f"zero_point={zero_point}", f"dtype={dtype}"), np.dtype(dtype).newbyteorder("<"))
    expected = quantize(values, scale, zero_point, np.dtype(dtype))
    assert out.tobytes() == np.ascontiguousarray(expected, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()


@pytest.mark.parametrize("spec", [IMAGE_SPECS[0], IMAGE_SPECS[3], IMAGE_SPECS[5]],
                         ids=["scale", "mean_std", "grayscale"])
def test_scaling_and_quantizing_in_one_pass_is_the_two_steps(driver, tmp_path, spec):
    """normalize_quantize_u8 (no float buffer on the device) = numpy's scaling, then quantize."""
    pixels = np.random.default_rng(3).integers(0, 256, (40, 40, spec.channels), dtype=np.uint8)
    scale, zero_point = (1 / 255, -128) if spec.mean is None else (0.018, 5)
    out = np.frombuffer(_run(driver, "image_quantize", pixels.tobytes(), tmp_path, *_norm_args(spec),
                             f"qscale={scale!r}", f"zero_point={zero_point}", "dtype=int8"), np.int8)
    expected = quantize(scale_pixels(spec, pixels), scale, zero_point, np.dtype(np.int8))
    assert out.tobytes() == expected.tobytes()


def test_colour_conversions_match_numpy(driver, tmp_path):
    rgb = np.random.default_rng(4).integers(0, 256, (50, 30, 3), dtype=np.uint8)
    gray = np.frombuffer(_run(driver, "gray", rgb.tobytes(), tmp_path), np.uint8)
    assert gray.tobytes() == to_grayscale(rgb).tobytes()
    bgr = np.frombuffer(_run(driver, "swap", rgb.tobytes(), tmp_path), np.uint8)
    assert bgr.tobytes() == np.ascontiguousarray(rgb[:, :, ::-1]).tobytes()


# ---------------------------------------------------------------- crop and resize, bit for bit

def _resize_cases() -> list[tuple[int, int, int, int, int]]:
    """(h, w, out_h, out_w, channels): fixed corner cases, then random sizes within the Resizer's bounds
    (outputs up to 128, downscales up to 7x: 2 * ceil(7) + 1 <= 16 taps)."""
    cases = [(96, 96, 32, 32, 3), (96, 71, 48, 48, 1), (96, 71, 48, 48, 3), (71, 96, 48, 48, 3), (13, 7, 128, 128, 3),
             (96, 50, 96, 32, 3), (50, 96, 32, 96, 1), (2, 3, 1, 1, 3), (1, 1, 5, 9, 1), (120, 17, 20, 40, 3)]
    rng = np.random.default_rng(6)
    while len(cases) < 60:
        out_h, out_w = (int(v) for v in rng.integers(1, 129, 2))
        h, w = (int(rng.integers(max(1, o // 4), 7 * o + 1)) for o in (out_h, out_w))
        cases.append((h, w, out_h, out_w, int(rng.choice([1, 3]))))
    return cases


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_resize_matches_numpy_and_pillow_bit_for_bit(driver, tmp_path, method):
    rng = np.random.default_rng(7)
    filt = Image.Resampling.NEAREST if method == "nearest" else Image.Resampling.BILINEAR
    for h, w, out_h, out_w, channels in _resize_cases():
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        pixels[: h // 2] //= 3  # edges, not only noise
        out = np.frombuffer(_run(driver, "resize", pixels.tobytes(), tmp_path, f"h={h}", f"w={w}",
                                 f"channels={channels}", f"out_h={out_h}", f"out_w={out_w}", f"method={method}"),
                            np.uint8).reshape(out_h, out_w, channels)
        pil = np.asarray(Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).resize((out_w, out_h), filt))
        assert np.array_equal(out, pil.reshape(out.shape)), (h, w, out_h, out_w, channels)
        assert np.array_equal(out, resize(pixels, (out_h, out_w), method)), (h, w, out_h, out_w, channels)


PIPELINE_SPECS = [
    ImageSpec(size=(32, 32), crop="center"),  # MLPerf Tiny IC: raw 0..255
    ImageSpec(size=(96, 96), crop="center", color="grayscale", scale=1 / 255),
    ImageSpec(size=(24, 40), crop="center", color="bgr", resize="nearest", mean=(120, 110, 100), std=(60, 61, 62)),
    ImageSpec(size=(48, 48), color="grayscale", scale=1 / 127.5, offset=-1.0),
]


@pytest.mark.parametrize("spec", PIPELINE_SPECS, ids=lambda s: f"{s.size[0]}x{s.size[1]}-{s.color}-{s.resize}")
def test_an_rgb_frame_becomes_the_same_int8_input_tensor_as_in_numpy(driver, tmp_path, spec):
    """crop, grayscale, resize, channel order, scaling and quantization (image_pixels, normalize_quantize_u8)."""
    rng = np.random.default_rng(8)
    scale, zero_point = (1.0, -128) if spec.mean is None and spec.scale == 1.0 else (0.0157, -3)
    for h, w in ((96, 96), (120, 71), (55, 160)):
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        frame[:, : w // 3] = frame[:, : w // 3] // 4 + 100
        out = np.frombuffer(_run(driver, "pipeline", frame.tobytes(), tmp_path, f"h={h}", f"w={w}",
                                 f"out_h={spec.size[0]}", f"out_w={spec.size[1]}", f"crop={int(spec.crop == 'center')}",
                                 f"method={spec.resize}", f"color={spec.color}", *_norm_args(spec)[1:],
                                 f"qscale={scale!r}", f"zero_point={zero_point}", "dtype=int8"), np.int8)
        expected = quantize(pixels_to_input(spec, frame), scale, zero_point, np.dtype(np.int8))
        assert out.tobytes() == expected.tobytes(), (h, w)


def test_the_resizer_refuses_what_its_static_tables_cannot_hold(driver, tmp_path):
    pixels = np.zeros((200, 200, 3), np.uint8)
    for out_h, out_w, method in ((20, 20, "bilinear"), (129, 10, "nearest"), (10, 129, "bilinear")):
        src = tmp_path / "in.u8"
        src.write_bytes(pixels.tobytes())
        run = subprocess.run([str(driver), "resize", str(src), str(tmp_path / "out"), "h=200", "w=200", "channels=3",
                              f"out_h={out_h}", f"out_w={out_w}", f"method={method}"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and "resizer refused" in run.stderr, (out_h, out_w, method, run.stderr)


# ---------------------------------------------------------------- the audio front end, within the tolerance

RATE = 16000


def _signals() -> dict[str, np.ndarray]:
    t = np.arange(24000) / RATE
    rng = np.random.default_rng(5)
    return {
        "tone": 0.5 * np.sin(2 * np.pi * 1000 * t[:16000]),
        "sweep": 0.8 * np.sin(2 * np.pi * (100 * t + 1950 * t * t))[:16000],  # 100 Hz -> 4 kHz in 1 s
        "noise": rng.normal(0, 0.2, 16000).clip(-1, 1),
        "silence": np.zeros(16000),
        "short": 0.3 * np.sin(2 * np.pi * 440 * t[:9000]),                     # zero-padded to the clip
        "long": 0.25 * np.sin(2 * np.pi * 300 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2,  # trimmed
        "negative": -np.abs(0.3 * np.sin(2 * np.pi * 440 * t[:16000])) - 0.01,  # largest sample < 0
        "square": np.sign(np.sin(2 * np.pi * 250 * t[:16000])) * 0.99,
    }


AUDIO_SPECS = {
    "kws-mfcc": AudioSpec(),  # MLPerf Tiny KWS: 16 kHz, 30/20 ms, FFT 512, 40 mel 20-4000 Hz, 10 MFCC, max
    "kws-log-mel": AudioSpec(features="log_mel"),
    "log-mel-power": AudioSpec(features="log_mel", spectrum="power", mel_bins=64, window_ms=25, stride_ms=10,
                               fft_size=1024, lower_hz=125, upper_hz=7500, normalize="peak"),
    "mfcc-13": AudioSpec(coefficients=13, window_ms=40, stride_ms=20, normalize="none"),
}


def _audio_args(spec: AudioSpec) -> list[str]:
    return [f"clip={spec.clip_samples}", f"window={spec.window_samples}", f"stride={spec.stride_samples}",
            f"fft={spec.fft_length}", f"mel={spec.mel_bins}",
            f"coeffs={spec.coefficients if spec.features == 'mfcc' else 0}", f"lower={spec.lower_hz!r}",
            f"upper={spec.upper_hz!r}", f"log_offset={spec.log_offset!r}", f"power={int(spec.spectrum == 'power')}",
            f"normalize={spec.normalize}"]


def _c_features(driver: Path, tmp: Path, spec: AudioSpec, wav: bytes) -> np.ndarray:
    return np.frombuffer(_run(driver, "audio", wav, tmp, *_audio_args(spec)), "<f4").reshape(spec.frames, spec.width)


@pytest.mark.parametrize("name", sorted(AUDIO_SPECS))
def test_audio_features_match_numpy_within_the_tolerance(driver, tmp_path, name):
    spec = AUDIO_SPECS[name]
    worst = 0.0
    for signal, samples in _signals().items():
        wav = write_wav(samples, RATE)
        c = _c_features(driver, tmp_path, spec, wav)
        n = wav_to_input(spec, wav).reshape(spec.frames, spec.width)
        assert np.all(np.isfinite(c)), signal
        if spec.features == "log_mel":
            mel_c, mel_n = np.exp(c.astype(np.float64)), np.exp(n.astype(np.float64))
            bound = MEL_RTOL * mel_n + MEL_FLOOR * mel_n.max(axis=1, keepdims=True)
            ratio = float(np.max(np.abs(mel_c - mel_n) / bound))
        else:
            ratio = float(np.max(np.abs(c - n))) / (FEATURE_RTOL * float(np.max(np.abs(n))))
        assert ratio <= 1.0, (signal, ratio)
        worst = max(worst, ratio)
    assert worst > 0.0  # the comparison saw real differences (float32 against float64), not a copy


def test_kws_features_quantize_to_the_same_int8_input_within_one_step(driver, tmp_path):
    spec = AUDIO_SPECS["kws-mfcc"]
    scale, zero_point = KWS_INPUT
    for signal, samples in _signals().items():
        wav = write_wav(samples, RATE)
        c = quantize(_c_features(driver, tmp_path, spec, wav), scale, zero_point, np.dtype(np.int8)).astype(int)
        n = quantize(wav_to_input(spec, wav), scale, zero_point, np.dtype(np.int8)).astype(int).reshape(c.shape)
        steps = np.abs(c - n)
        assert steps.max() <= 1 and np.count_nonzero(steps) <= 0.02 * steps.size, (signal, np.count_nonzero(steps))


def test_the_front_end_refuses_a_configuration_beyond_its_static_buffers(driver, tmp_path):
    wav = write_wav(np.zeros(16000), RATE)
    for change, field in ((dict(fft_size=4096, window_ms=200), "fft_size"), (dict(mel_bins=128), "mel_bins"),
                          (dict(coefficients=41, mel_bins=64), "coefficients")):
        spec = replace(AUDIO_SPECS["kws-mfcc"], **change)
        src = tmp_path / "in.wav"
        src.write_bytes(wav)
        run = subprocess.run([str(driver), "audio", str(src), str(tmp_path / "out"), *_audio_args(spec)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and run.stderr.strip() == f"test_preprocess: bad configuration: {field}", run.stderr
