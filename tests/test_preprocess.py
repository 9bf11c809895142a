"""The one preprocessing implementation (lepton_edge/preprocess) against its references.

* Audio features against ``tf.signal`` (stft, linear_to_mel_weight_matrix, log,
  mfccs_from_log_mel_spectrograms), with the WAV decoded by ``tf.audio.decode_wav`` and normalised as
  MLPerf Tiny KWS's get_dataset.py does. The error is ``max|ours - tf| / max|tf|`` over the clip.
  Against tf.signal in float64 it is within 1e-4 on every signal. tf.signal in float32 (MLPerf's own
  pipeline) is not that close to the exact values on pure tones and sweeps: its float32 FFT round-off,
  about 1e-7 of the frame's peak, dominates mel bands 100 dB below the tone, and the log magnifies it.
  There we check that we are as close to float32 TF as float32 TF is to float64 TF.
* Image resizing against Pillow's ``Image.resize``, bit for bit.
* The spec: errors name the field; TOML, inline and manifest round trips.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest

from lepton_edge.errors import BadInput
from lepton_edge.preprocess import (
    AudioSpec,
    ImageSpec,
    ScaleSpec,
    check_against_input,
    decode,
    features,
    image_to_input,
    load_spec,
    parse_spec,
    pixels_to_input,
    quantize,
    spec_to_dict,
    wav_to_input,
)
from lepton_edge.preprocess.image import center_crop, resize, to_grayscale
from lepton_edge.preprocess.wav import read_wav, write_wav

Image = pytest.importorskip("PIL.Image")

RATE = 16000


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _signals() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    t = np.arange(RATE) / RATE
    return {
        "tone_440": 0.5 * np.sin(2 * np.pi * 440 * t),
        "tone_3k": 0.9 * np.sin(2 * np.pi * 3000 * t),
        "sweep": 0.8 * np.sin(2 * np.pi * (100 * t + 3900 * t * t / 2)),
        "noise": np.clip(rng.normal(0, 0.2, RATE), -1, 1),
        "silence": np.zeros(RATE),
        "short_tone_plus_noise": 0.3 * np.sin(2 * np.pi * 1000 * t[:9000]) + rng.normal(0, 0.01, 9000),
    }


SIGNALS = _signals()
WAVS = {name: write_wav(x, RATE) for name, x in SIGNALS.items()}


@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


def _tf_features(tf, spec: AudioSpec, wav: bytes, dtype) -> np.ndarray:
    """MLPerf Tiny KWS's get_dataset.py front end, generalised to the spec's parameters, in ``dtype``."""
    audio, _ = tf.audio.decode_wav(wav, desired_channels=1)
    x = tf.cast(tf.squeeze(audio, 1), dtype)[:spec.clip_samples]
    if spec.normalize == "max":
        top = tf.reduce_max(x)
        x = x / top if float(top) != 0.0 else x
    x = tf.pad(x, [[0, spec.clip_samples - tf.shape(x)[0]]])
    stfts = tf.signal.stft(x, frame_length=spec.window_samples, frame_step=spec.stride_samples,
                           fft_length=spec.fft_length, window_fn=tf.signal.hann_window)
    spectrum = tf.abs(stfts)
    if spec.spectrum == "power":
        spectrum = spectrum * spectrum
    weights = tf.signal.linear_to_mel_weight_matrix(spec.mel_bins, stfts.shape[-1], spec.sample_rate,
                                                    spec.lower_hz, spec.upper_hz, dtype=dtype)
    log_mel = tf.math.log(tf.tensordot(spectrum, weights, 1) + tf.cast(spec.log_offset, dtype))
    if spec.features == "log_mel":
        return log_mel.numpy()
    return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :spec.coefficients].numpy()


def test_default_audio_spec_is_mlperf_kws_front_end():
    spec = AudioSpec()
    assert (spec.clip_samples, spec.window_samples, spec.stride_samples, spec.fft_length) == (16000, 480, 320, 512)
    assert (spec.frames, spec.width) == (49, 10)
    assert (spec.mel_bins, spec.lower_hz, spec.upper_hz, spec.log_offset) == (40, 20.0, 4000.0, 1e-6)
    assert spec.normalize == "max" and spec.spectrum == "magnitude"
    check_against_input(spec, (1, 49, 10, 1), "kws")


@pytest.mark.parametrize("kind", ["mfcc", "log_mel"])
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_features_match_tf_signal(tf, kind, name):
    spec = AudioSpec(features=kind)
    ours = wav_to_input(spec, WAVS[name])[0, :, :, 0]
    exact = _tf_features(tf, spec, WAVS[name], tf.float64)
    float32 = _tf_features(tf, spec, WAVS[name], tf.float32)
    assert ours.shape == exact.shape == (49, spec.width)
    assert _rel(ours, exact) < 1e-4
    # MLPerf's float32 pipeline: as close as its own round-off allows, and within 1e-4 where the signal
    # has energy in every band (noise, silence, a tone over a noise floor).
    assert _rel(ours, float32) <= 1.1 * _rel(float32, exact) + 1e-6
    if name in ("noise", "silence", "short_tone_plus_noise"):
        assert _rel(ours, float32) < 1e-4


@pytest.mark.parametrize("options", [
    {"features": "log_mel", "spectrum": "power", "mel_bins": 32, "lower_hz": 0.0, "upper_hz": 8000.0},
    {"fft_size": 1024, "window_ms": 25.0, "stride_ms": 10.0, "coefficients": 13, "normalize": "none"},
    {"sample_rate": 8000, "upper_hz": 3800.0, "clip_ms": 500.0, "log_offset": 1e-3},
])
def test_features_match_tf_signal_with_other_parameters(tf, options):
    spec = parse_spec({"kind": "audio", **options}, "test")
    t = np.arange(spec.clip_samples) / spec.sample_rate
    wav = write_wav(0.4 * np.sin(2 * np.pi * 700 * t) + 0.2 * np.sin(2 * np.pi * 1500 * t), spec.sample_rate)
    ours = wav_to_input(spec, wav)[0, :, :, 0]
    assert ours.shape == (spec.frames, spec.width)
    assert _rel(ours, _tf_features(tf, spec, wav, tf.float64)) < 1e-4


def test_features_take_samples_directly_and_pad_short_clips():
    spec = AudioSpec()
    x = SIGNALS["tone_440"][:5000]
    padded = np.concatenate([x, np.zeros(RATE - 5000)])
    np.testing.assert_array_equal(features(spec, x), features(spec, padded))
    longer = np.concatenate([SIGNALS["tone_440"], np.ones(4000)])
    np.testing.assert_array_equal(features(spec, longer), features(spec, SIGNALS["tone_440"]))


def test_wav_reader_formats():
    x = np.round(SIGNALS["tone_440"][:800] * 32767) / 32768
    base, rate = read_wav(write_wav(x, RATE))
    assert rate == RATE
    np.testing.assert_allclose(base, x, atol=1e-7)

    def riff(tag: int, channels: int, bits: int, body: bytes) -> bytes:
        fmt = struct.pack("<HHIIHH", tag, channels, RATE, RATE * channels * bits // 8, channels * bits // 8, bits)
        return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
                + b"LIST" + struct.pack("<I", 3) + b"abc\0" + b"data" + struct.pack("<I", len(body)) + body)

    as_float = riff(3, 1, 32, x.astype("<f4").tobytes())
    np.testing.assert_allclose(read_wav(as_float)[0], x, atol=1e-7)
    pcm24 = (np.round(x * 32768).astype(np.int64) << 8).astype("<i4").tobytes()
    as_24 = riff(1, 1, 24, b"".join(pcm24[i:i + 3] for i in range(0, len(pcm24), 4)))
    np.testing.assert_allclose(read_wav(as_24)[0], x, atol=1e-7)
    stereo = np.stack([x, -x * 0.5], axis=1).reshape(-1)
    as_stereo = riff(1, 2, 16, np.round(stereo * 32768).astype("<i2").tobytes())
    np.testing.assert_allclose(read_wav(as_stereo)[0], (x - 0.5 * x) / 2, atol=1e-4)
    cut = write_wav(x, RATE)[:-101]  # the data chunk cut mid-frame: the whole frames are kept
    assert len(read_wav(cut)[0]) == 800 - 51


@pytest.mark.parametrize("body, message", [
    (b"", "not a WAV file"),
    (b"RIFF\0\0\0\0WAVEjunk", "no valid 'fmt ' chunk"),
    (b"RIFF" + struct.pack("<I", 28) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE, 1, 12),
     "no 'data' chunk"),
])
def test_bad_wavs_are_one_line(body, message):
    with pytest.raises(BadInput, match=message) as err:
        read_wav(body)
    assert "\n" not in str(err.value)


def test_wav_sample_rate_is_checked_or_resampled():
    wav8k = write_wav(0.5 * np.sin(2 * np.pi * 300 * np.arange(8000) / 8000), 8000)
    with pytest.raises(BadInput, match="8000 Hz, the model's preprocessing takes 16000 Hz"):
        wav_to_input(AudioSpec(), wav8k)
    resampled = wav_to_input(AudioSpec(resample="linear"), wav8k)
    direct = wav_to_input(AudioSpec(), write_wav(0.5 * np.sin(2 * np.pi * 300 * np.arange(RATE) / RATE), RATE))
    assert resampled.shape == direct.shape == (1, 49, 10, 1)
    assert np.abs(resampled - direct).max() < 0.05 * np.abs(direct).max()


# -- images ---------------------------------------------------------------------------------------------------

SIZES_IN = [(96, 96), (480, 640), (37, 91), (32, 32), (5, 3), (301, 200), (13, 250)]
SIZES_OUT = [(32, 32), (96, 96), (17, 45), (200, 133), (3, 7), (64, 31), (100, 33)]


@pytest.mark.parametrize("method, pil_filter", [("bilinear", 2), ("nearest", 0)])
def test_resize_is_pillow_bit_for_bit(method, pil_filter):
    rng = np.random.default_rng(3)
    for h, w in SIZES_IN:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(pixels)
        for th, tw in SIZES_OUT:
            expected = np.asarray(im.resize((tw, th), pil_filter))
            np.testing.assert_array_equal(resize(pixels, (th, tw), method), expected,
                                          err_msg=f"{method} {h}x{w} -> {th}x{tw}")


def test_grayscale_is_pillow_convert_l():
    pixels = np.random.default_rng(4).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_grayscale(pixels), np.asarray(Image.fromarray(pixels).convert("L")))


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_image_pipeline_equals_pillow_steps():
    """Decode, centre crop, grayscale or BGR, resize, scale: the same as doing each step in Pillow."""
    pixels = np.random.default_rng(5).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    jpeg = _jpeg(pixels)
    decoded = Image.open(io.BytesIO(jpeg)).convert("RGB")
    cropped = decoded.crop((40, 0, 160, 120))  # 120x200 -> the centre 120x120
    np.testing.assert_array_equal(center_crop(np.asarray(decoded), (32, 32)), np.asarray(cropped))

    spec = ImageSpec(size=(32, 32), crop="center", scale=1 / 255)
    expected = np.asarray(cropped.resize((32, 32), 2), dtype=np.float32) * np.float32(1 / 255)
    np.testing.assert_array_equal(image_to_input(spec, jpeg)[0], expected)

    gray = ImageSpec(size=(24, 40), color="grayscale", resize="nearest")
    expected_gray = np.asarray(decoded.convert("L").resize((40, 24), 0), dtype=np.float32)[:, :, None]
    np.testing.assert_array_equal(image_to_input(gray, jpeg)[0], expected_gray)

    bgr = ImageSpec(size=(32, 32), color="bgr", mean=(123.0, 117.0, 104.0), std=(58.0, 57.0, 57.5))
    rgb = np.asarray(decoded.resize((32, 32), 2), dtype=np.float32)
    expected_bgr = (rgb[:, :, ::-1] - np.float32([123.0, 117.0, 104.0])) / np.float32([58.0, 57.0, 57.5])
    np.testing.assert_array_equal(image_to_input(bgr, jpeg)[0], expected_bgr)
    np.testing.assert_array_equal(image_to_input(bgr, decoded), image_to_input(bgr, jpeg))


def test_pixels_of_other_layouts():
    spec = ImageSpec(size=(8, 8))
    rgba = np.random.default_rng(6).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    np.testing.assert_array_equal(pixels_to_input(spec, rgba), pixels_to_input(spec, rgba[:, :, :3]))
    gray = rgba[:, :, 0]
    assert pixels_to_input(spec, gray).shape == (1, 8, 8, 3)
    assert pixels_to_input(spec, rgba[:, :, :3].astype(np.float64)).shape == (1, 8, 8, 3)
    with pytest.raises(BadInput, match=r"whole numbers 0\.\.255"):
        pixels_to_input(spec, rgba[:, :, :3] / 255.0)


# -- decode and quantize --------------------------------------------------------------------------------------

def test_decode_by_content_type():
    pixels = np.random.default_rng(8).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    image = ImageSpec(size=(32, 32), scale=1 / 255)
    x = decode(image, _jpeg(pixels), "image/jpeg; charset=binary")
    assert x.shape == (1, 32, 32, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG")
    np.testing.assert_array_equal(decode(image, png.getvalue(), "image/png"), pixels_to_input(image, pixels))
    as_json = json.dumps(pixels.tolist()).encode()
    np.testing.assert_array_equal(decode(image, as_json, "application/json"), pixels_to_input(image, pixels))

    floats = pixels[:32, :32].astype(np.float64) + 0.25  # unscaled floats at the model's size: no resize
    np.testing.assert_array_equal(decode(image, json.dumps(floats.tolist()).encode(), "application/json"),
                                  (floats.astype(np.float32) * np.float32(1 / 255))[None])

    audio = AudioSpec()
    kws = decode(audio, WAVS["sweep"], "audio/wav", shape=(1, 49, 10, 1))
    np.testing.assert_array_equal(kws, wav_to_input(audio, WAVS["sweep"]))
    samples = read_wav(WAVS["sweep"])[0].tolist()
    flat = decode(audio, json.dumps({"inputs": samples}).encode(), "application/json", shape=(1, 490))
    np.testing.assert_array_equal(flat.reshape(kws.shape), kws)

    tensor = ScaleSpec(scale=0.5, offset=-1.0)
    np.testing.assert_array_equal(decode(tensor, b"[[2, 4], [6, 8]]", "application/json"),
                                  np.float32([[0, 1], [2, 3]]))


@pytest.mark.parametrize("spec, body, content_type, message", [
    (ImageSpec(size=(8, 8)), b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg", "not a readable image"),
    (ImageSpec(size=(8, 8)), _jpeg(np.zeros((20, 20, 3), np.uint8))[:200], "image/jpeg", "not a readable image"),
    (ImageSpec(size=(8, 8)), WAVS["silence"], "audio/wav", "audio/wav body, but the model's preprocessing is image"),
    (AudioSpec(), b"RIFF", "audio/wav", "not a WAV file"),
    (AudioSpec(), b"{", "application/json", "not valid JSON"),
    (ScaleSpec(), b'[1, "a"]', "application/json", "numbers"),
    (ScaleSpec(), b"[[1, 2], [3]]", "application/json", "lists of equal length"),
    (ScaleSpec(), b"\x00\x01", "application/octet-stream", "content type application/octet-stream not accepted"),
])
def test_decode_refuses_in_one_line(spec, body, content_type, message):
    with pytest.raises(BadInput, match=message) as err:
        decode(spec, body, content_type)
    assert "\n" not in str(err.value)


def test_decode_fits_the_model_shape_or_refuses():
    with pytest.raises(BadInput, match="takes 500"):
        decode(AudioSpec(), WAVS["noise"], "audio/wav", shape=(1, 50, 10, 1))


def test_quantize_matches_the_runtime():
    from lepton_edge.runtime.base import TensorSpec as RuntimeSpec
    from lepton_edge.runtime.base import quantize as runtime_quantize

    x = np.random.default_rng(9).normal(0, 3, (1, 49, 10, 1)).astype(np.float32)
    x.flat[:4] = [0.25, -0.25, 0.75, 1000.0]  # ties and a clip
    spec = RuntimeSpec("in", (1, 49, 10, 1), "int8", 0.5, -3)
    ours = quantize(x, 0.5, -3, np.int8)
    assert ours.dtype == np.int8
    np.testing.assert_array_equal(ours, runtime_quantize(x, spec))
    assert ours.flat[3] == 127


# -- the spec -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, field", [
    ({"kind": "picture"}, "kind"),
    ({}, "kind"),
    ({"kind": "image"}, "size"),
    ({"kind": "image", "size": [96]}, "size"),
    ({"kind": "image", "size": [96, -1]}, "size"),
    ({"kind": "image", "size": [96, 96], "resize": "bicubic"}, "resize"),
    ({"kind": "image", "size": [96, 96], "color": "rgba"}, "color"),
    ({"kind": "image", "size": [96, 96], "crop": "top"}, "crop"),
    ({"kind": "image", "size": [96, 96], "scale": "1/255"}, "scale"),
    ({"kind": "image", "size": [96, 96], "scale": 0}, "scale"),
    ({"kind": "image", "size": [96, 96], "mean": [1, 2, 3]}, "std"),
    ({"kind": "image", "size": [96, 96], "mean": [1, 2], "std": [1, 2]}, "mean"),
    ({"kind": "image", "size": [96, 96], "mean": 1, "std": 0}, "std"),
    ({"kind": "image", "size": [96, 96], "mean": 1, "std": 2, "scale": 3}, "scale"),
    ({"kind": "image", "size": [96, 96], "colour": "rgb"}, "colour"),
    ({"kind": "audio", "sample_rate": 16000.5}, "sample_rate"),
    ({"kind": "audio", "window_ms": 0}, "window_ms"),
    ({"kind": "audio", "clip_ms": 10}, "clip_ms"),
    ({"kind": "audio", "fft_size": 256}, "fft_size"),
    ({"kind": "audio", "upper_hz": 9000}, "upper_hz"),
    ({"kind": "audio", "lower_hz": 4000}, "lower_hz"),
    ({"kind": "audio", "coefficients": 41}, "coefficients"),
    ({"kind": "audio", "features": "spectrogram"}, "features"),
    ({"kind": "audio", "normalize": "rms"}, "normalize"),
    ({"kind": "audio", "log_offset": 0}, "log_offset"),
    ({"kind": "tensor", "offset": float("nan")}, "offset"),
    ({"kind": "tensor", "size": [1, 2]}, "size"),
])
def test_spec_errors_name_the_field(table, field):
    with pytest.raises(BadInput) as err:
        parse_spec(table, "spec.toml")
    message = str(err.value)
    assert message.startswith(f"spec.toml: preprocess {field}:"), message
    assert "\n" not in message


@pytest.mark.parametrize("spec, shape, field", [
    (ImageSpec(size=(96, 96)), (1, 32, 32, 3), "size"),
    (ImageSpec(size=(32, 32), color="grayscale"), (1, 32, 32, 3), "color"),
    (ImageSpec(size=(32, 32)), (1, 3072), "kind"),
    (AudioSpec(), (1, 49, 13, 1), "coefficients"),
    (AudioSpec(), (1, 99, 10, 1), "clip_ms"),
    (AudioSpec(features="log_mel"), (1, 49, 10, 1), "mel_bins"),
])
def test_spec_checked_against_the_model_input(spec, shape, field):
    with pytest.raises(BadInput, match=f"^model.h5: preprocess {field}:"):
        check_against_input(spec, shape, "model.h5")


SPECS = [
    ImageSpec(size=(96, 96), scale=1 / 255),
    ImageSpec(size=(32, 48), resize="nearest", crop="center", color="bgr", mean=(123.68, 116.78, 103.94),
              std=(58.4, 57.1, 57.4)),
    ImageSpec(size=(28, 28), color="grayscale", scale=-1 / 127.5, offset=1.0),
    AudioSpec(),
    AudioSpec(sample_rate=8000, clip_ms=750.0, fft_size=512, features="log_mel", spectrum="power", mel_bins=32,
              upper_hz=3900.0, normalize="peak", resample="linear", log_offset=0.001),
    ScaleSpec(),
    ScaleSpec(scale=0.125, offset=-3.5),
]


def _toml(table: dict) -> str:
    def value(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(i) for i in v) + "]"
        return repr(v)
    return "[preprocess]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_spec_round_trips(spec, tmp_path):
    table = spec_to_dict(spec)
    assert json.loads(json.dumps(table)) == table  # plain JSON values: what manifest.json holds
    assert parse_spec(json.loads(json.dumps(table)), "manifest.json") == spec
    path = tmp_path / "spec.toml"
    path.write_text(_toml(table))
    assert load_spec(str(path)) == spec
    inline = ",".join(f"{k}={':'.join(map(repr, v)) if isinstance(v, list) and k != 'size' else v}"
                      for k, v in table.items() if k != "size")
    if "size" in table:
        inline += f",size={table['size'][0]}x{table['size'][1]}"
    assert load_spec(inline) == spec


def test_issue_example_toml_and_inline_forms(tmp_path):
    path = tmp_path / "pre.toml"
    path.write_text('[preprocess]\nkind = "image"\nsize = [96, 96]\nresize = "bilinear"\ncolor = "rgb"\n'
                    "scale = 0.00392156862745098\noffset = 0.0\n")
    spec = load_spec(str(path))
    assert spec == ImageSpec(size=(96, 96), scale=1 / 255)
    assert load_spec("kind=image,size=96x96,scale=1/255") == spec
    assert load_spec("kind=image,size=96,scale=1/255") == spec
    assert load_spec("kind=audio") == AudioSpec()


@pytest.mark.parametrize("arg, message", [
    ("kind=image,size", "--preprocess: 'size' is not key=value"),
    ("kind=image,size=9x9,size=9x9", "--preprocess size: given twice"),
    ("missing.toml", "missing.toml: preprocess spec file not found"),
])
def test_load_spec_refuses_in_one_line(arg, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput, match=f"^{message}"):
        load_spec(arg)


def test_toml_without_preprocess_table(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('kind = "image"\n')
    with pytest.raises(BadInput, match=r"no \[preprocess\] table"):
        load_spec(str(path))
    path.write_text("[preprocess\n")
    with pytest.raises(BadInput, match="not valid TOML"):
        load_spec(str(path))
