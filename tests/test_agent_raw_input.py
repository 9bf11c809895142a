"""Raw inputs on ``POST /v1/infer``: a JPEG, a PNG, a WAV or a JSON list of unscaled values, made into the
model's input by the preprocessing spec its signed manifest carries, quantized, run.

The agent must answer exactly what the host pipeline answers: the image decoded, cropped and resized by
Pillow itself and scaled in numpy (the audio through lepton_edge.preprocess), quantized with the input's
scale and zero point, run by LiteRT: the same int8 output bytes. The gateway takes the same bodies and its
device (the simulator, TFLite Micro) answers like TFLite Micro here. Bodies the spec cannot take are a
one-line JSON 4xx, and the connection goes on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent_helpers import AgentProcess, connect, request, write_config
from bridge_helpers import SimProcess
from conftest import SHARED, require_shared
from lepton_edge.agent.config import load_config
from lepton_edge.agent.daemon import Agent
from lepton_edge.artifact import MANIFEST_FILE, MODEL_FILE, write_artifact_files
from lepton_edge.fsio import atomic_directory
from lepton_edge.preprocess import AudioSpec, ImageSpec, decode, quantize, spec_to_dict
from lepton_edge.preprocess.image import center_crop
from lepton_edge.preprocess.wav import write_wav
from lepton_edge.runtime.base import dequantize
from lepton_edge.runtime.factory import open_runner

PHOTOS = SHARED / "data" / "photos96.npz"
SIM_PROFILE = "arduino-nano-33-ble"
# MLPerf Tiny's IC ResNet-8 takes raw 0..255 (its int8 input: scale 1, zero point -128).
IC_SPEC = ImageSpec(size=(32, 32), resize="bilinear", crop="center", color="rgb", scale=1.0, offset=0.0)
# Not what the model was trained on, but values with fractions: the rounding to int8 must match too.
ODD_SPEC = ImageSpec(size=(32, 32), resize="nearest", color="bgr", mean=(100.5, 120.25, 90.0), std=(0.9, 1.1, 1.3))


def with_spec(source: Path, out: Path, spec, private_key) -> Path:
    """A copy of the artifact ``source`` whose manifest carries ``spec`` under "preprocess", signed again."""
    manifest = json.loads((source / MANIFEST_FILE).read_text())
    manifest["preprocess"] = spec_to_dict(spec)
    with atomic_directory(out, replace=True) as staging:
        write_artifact_files(staging, (source / MODEL_FILE).read_bytes(), manifest, private_key)
    return out


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, make_artifact, signing) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("raw-artifacts")
    ic, kws = make_artifact("ic", 1), make_artifact("kws", 1)
    return {"ic": with_spec(ic, root / "ic-spec", IC_SPEC, signing[0]),
            "ic-odd": with_spec(ic, root / "ic-odd", ODD_SPEC, signing[0]),
            "ic-wrong-size": with_spec(ic, root / "ic-48", ImageSpec(size=(48, 48)), signing[0]),
            "ic-plain": ic,
            "kws": with_spec(kws, root / "kws-spec", AudioSpec(), signing[0])}


@pytest.fixture(scope="module")
def serve(tmp_path_factory, signing):
    """``serve(artifact) -> url``: an in-process agent serving the artifact (one per artifact, module-wide)."""
    agents: dict[Path, Agent] = {}

    def start(artifact: Path) -> str:
        if artifact not in agents:
            tmp = tmp_path_factory.mktemp("agent")
            cfg = load_config(write_config(tmp / "agent.toml", store=tmp / "store", trusted_keys=[signing[1]]))
            agents[artifact] = Agent(cfg)
            agents[artifact].start(artifact)
        return agents[artifact].url

    yield start
    for agent in agents.values():
        agent.stop()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    return np.load(require_shared(PHOTOS))["x"]


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **options)
    return buf.getvalue()


def pillow_input(spec: ImageSpec, data: bytes) -> np.ndarray:
    """The host pipeline for an image, independently of the agent's code: Pillow decodes, crops and resizes,
    numpy scales in float32."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    if spec.crop == "center":  # the crop's integer bounds, as the spec defines them
        box = center_crop(np.zeros((im.height, im.width, 1), np.uint8), spec.size)
        h, w = box.shape[:2]
        left, top = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((left, top, left + w, top + h))
    filt = Image.Resampling.BILINEAR if spec.resize == "bilinear" else Image.Resampling.NEAREST
    px = np.asarray(im.resize((spec.size[1], spec.size[0]), filt), dtype=np.float32)
    if spec.color == "bgr":
        px = px[:, :, ::-1]
    if spec.mean is not None and spec.std is not None:
        x = (px - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    else:
        x = px * np.float32(spec.scale) + np.float32(spec.offset)
    return x[None]


def host_outputs(artifact: Path, x: np.ndarray) -> np.ndarray:
    """Quantize with the model's input scale and zero point, run LiteRT: the output tensor."""
    runner = open_runner((artifact / MODEL_FILE).read_bytes(), backend="litert")
    spec = runner.inputs[0]
    q = quantize(x.reshape(spec.shape), spec.scale, spec.zero_point, np.dtype(spec.dtype))
    return runner.run([q])[0]


def post(url: str, body: bytes, content_type: str, accept: str | None = None, conn=None):
    own = conn is None
    conn = conn or connect(url)
    try:
        headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
        return request(conn, "POST", "/v1/infer", body, headers)
    finally:
        if own:
            conn.close()


def assert_one_line_4xx(reply, status: int, needle: str) -> str:
    assert reply.status == status, (reply.status, reply.body)
    body = reply.json()
    assert body["status"] == status and needle in body["error"], body
    assert "\n" not in body["error"] and "Traceback" not in body["error"]
    return body["error"]


# ---------------------------------------------------------------- the agent answers like the host

@pytest.mark.parametrize("name", ["ic", "ic-odd"])
def test_a_jpeg_gets_the_host_pipelines_int8_outputs_bit_for_bit(serve, artifacts, photos, name):
    url, spec = serve(artifacts[name]), IC_SPEC if name == "ic" else ODD_SPEC
    seen = set()
    for i, (top, left, h, w) in enumerate([(0, 0, 96, 96), (5, 12, 80, 61), (20, 3, 40, 90)]):
        jpeg = encode(np.ascontiguousarray(photos[i * 7][top:top + h, left:left + w]), "JPEG", quality=90)
        expected = host_outputs(artifacts[name], pillow_input(spec, jpeg))
        reply = post(url, jpeg, "image/jpeg", accept="application/octet-stream")
        assert reply.status == 200, reply.body
        assert reply.body == expected.tobytes()
        assert reply.headers["x-output-bytes"] == "10" and float(reply.headers["x-latency-ms"]) > 0
        seen.add(reply.body)
        # Without Accept: the JSON answer, outputs dequantized from the same int8 values.
        answer = post(url, jpeg, "image/jpeg").json()
        runner_out = open_runner((artifacts[name] / MODEL_FILE).read_bytes(), backend="litert").outputs[0]
        assert answer["outputs"] == [dequantize(expected, runner_out).ravel().tolist()]
        assert answer["version"] == 1
    assert len(seen) == 3  # different photos, different answers: the image reached the model


def test_a_png_and_a_json_list_of_pixels_give_what_the_jpeg_path_gives(serve, artifacts, photos):
    url = serve(artifacts["ic"])
    pixels = np.ascontiguousarray(photos[3][10:90, 0:70])
    png = encode(pixels, "PNG")
    expected = host_outputs(artifacts["ic"], pillow_input(IC_SPEC, png))
    conn = connect(url)
    assert post(url, png, "image/png", "application/octet-stream", conn).body == expected.tobytes()
    listed = post(url, json.dumps(pixels.tolist()).encode(), "application/json", "application/octet-stream", conn)
    assert listed.status == 200 and listed.body == expected.tobytes()
    # A JSON object keeps its meaning on a model with a spec: the model's own (already scaled) input.
    x = decode(IC_SPEC, png, "image/png", (1, 32, 32, 3))
    reply = post(url, json.dumps({"inputs": (x - 128).tolist(), "quantized": True}).encode(), "application/json",
                 conn=conn)
    assert reply.status == 200 and reply.json()["outputs"] == [expected.ravel().tolist()]
    # And raw tensor bytes as before.
    q = quantize(x, 1.0, -128, np.int8)
    assert post(url, q.tobytes(), "application/octet-stream", conn=conn).body == expected.tobytes()
    conn.close()


def kws_clip(kind: str) -> np.ndarray:
    t = np.arange(16000) / 16000
    if kind == "tones":
        return 0.4 * np.sin(2 * np.pi * 600 * t) + 0.2 * np.sin(2 * np.pi * 1800 * t) * (t > 0.4)
    if kind == "sweep":
        return 0.7 * np.sin(2 * np.pi * (200 * t + 1500 * t * t))
    return np.random.default_rng(11).normal(0, 0.1, 16000).clip(-1, 1)


def test_a_wav_to_the_kws_model_gets_the_host_pipelines_outputs_bit_for_bit(serve, artifacts):
    url, spec = serve(artifacts["kws"]), AudioSpec()
    seen = set()
    for kind in ("tones", "sweep", "noise"):
        wav = write_wav(kws_clip(kind), 16000)
        expected = host_outputs(artifacts["kws"], decode(spec, wav, "audio/wav"))
        reply = post(url, wav, "audio/wav", accept="application/octet-stream")
        assert reply.status == 200, reply.body
        assert reply.body == expected.tobytes() and len(reply.body) == 12
        seen.add(reply.body)
    assert len(seen) == 3
    # The samples as a JSON list: the same features, the same answer.
    samples = np.frombuffer(wav[44:], "<i2").astype(np.float64) / 32768.0
    reply = post(url, json.dumps(samples.tolist()).encode(), "application/json", "application/octet-stream")
    assert reply.status == 200 and reply.body == expected.tobytes()


# ---------------------------------------------------------------- bodies the spec cannot take

def test_bodies_the_spec_cannot_take_get_a_one_line_4xx_and_the_connection_goes_on(serve, artifacts, photos):
    ic, kws = serve(artifacts["ic"]), serve(artifacts["kws"])
    jpeg = encode(np.ascontiguousarray(photos[0]), "JPEG", quality=90)
    conn = connect(ic)
    for body, needle in ((jpeg[: len(jpeg) // 2], "not a readable image"),          # cut off
                         (b"\xff\xd8\xff\xe0" + bytes(300), "not a readable image"),  # a JPEG header, then zeros
                         (b"", "not a readable image")):
        assert_one_line_4xx(post(ic, body, "image/jpeg", conn=conn), 400, needle)
    assert_one_line_4xx(post(ic, write_wav(kws_clip("tones"), 16000), "audio/wav", conn=conn), 415,
                        "has image preprocessing: it takes image/jpeg or image/png")
    assert_one_line_4xx(post(ic, json.dumps([[1, 2], [3]]).encode(), "application/json", conn=conn), 400,
                        "lists of equal length")
    assert post(ic, jpeg, "image/jpeg", conn=conn).status == 200  # the same keep-alive connection still works
    conn.close()

    conn = connect(kws)
    error = assert_one_line_4xx(post(kws, write_wav(kws_clip("tones")[::2], 8000), "audio/wav", conn=conn), 400,
                                "8000 Hz")
    assert "16000 Hz" in error
    assert_one_line_4xx(post(kws, b"RIFF\x00\x00\x00\x00WAVEjunk", "audio/wav", conn=conn), 400, "WAV")
    assert_one_line_4xx(post(kws, jpeg, "image/png", conn=conn), 415, "has audio preprocessing: it takes audio/wav")
    assert post(kws, write_wav(kws_clip("tones"), 16000), "audio/wav", conn=conn).status == 200
    conn.close()


def test_a_model_without_a_spec_or_with_one_its_input_cannot_take_refuses_raw_bodies(serve, artifacts, photos):
    jpeg = encode(np.ascontiguousarray(photos[1]), "JPEG")
    plain = serve(artifacts["ic-plain"])
    assert_one_line_4xx(post(plain, jpeg, "image/jpeg"), 415, "needs a preprocessing spec")
    # A JSON list there is what it always was: not the model's JSON request.
    assert_one_line_4xx(post(plain, b"[1, 2]", "application/json"), 400, "JSON object with 'inputs'")
    error = assert_one_line_4xx(post(serve(artifacts["ic-wrong-size"]), jpeg, "image/jpeg"), 422, "preprocess size")
    assert "1x32x32x3" in error


# ---------------------------------------------------------------- the gateway

def test_the_gateway_takes_a_wav_and_its_device_answers_like_tflite_micro_here(tmp_path, broker, make_artifact,
                                                                               signing):
    kws = with_spec(make_artifact("kws", 1, profile=SIM_PROFILE), tmp_path / "kws-sim", AudioSpec(), signing[0])
    sim = SimProcess(tmp_path / "board", "--baud", "0", profile=SIM_PROFILE)
    config = write_config(tmp_path / "gateway.toml", store=tmp_path / "store", trusted_keys=[signing[1]],
                          profile=SIM_PROFILE, backend="tflm",
                          extra=f'\n[mqtt]\nbroker = "{broker.url()}"\nkeepalive = 10\n')
    gateway = AgentProcess.start(config, kws, command="gateway", extra=("--port", sim.port, "--hello-timeout", "2"))
    try:
        wav = write_wav(kws_clip("sweep"), 16000)
        manifest = json.loads((kws / MANIFEST_FILE).read_text())
        host = open_runner((kws / MODEL_FILE).read_bytes(), backend="tflm",
                           arena_bytes=manifest["arena"]["total_bytes"])
        spec = host.inputs[0]
        x = quantize(decode(AudioSpec(), wav, "audio/wav", spec.shape), spec.scale, spec.zero_point, np.int8)
        conn = gateway.connection()
        reply = post(gateway.url, wav, "audio/wav", "application/octet-stream", conn)
        assert reply.status == 200, reply.body
        assert reply.body == host.run([x])[0].tobytes()
        assert_one_line_4xx(post(gateway.url, write_wav(kws_clip("sweep"), 22050), "audio/wav", conn=conn), 400,
                            "22050 Hz")
        conn.close()
    finally:
        code, _out, err = gateway.terminate()
        sim.stop()
    assert code == 0, err
