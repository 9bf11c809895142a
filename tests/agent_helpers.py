"""Helpers for the agent's tests: signed artifacts made from the MLPerf Tiny models, configs, agent processes.

An artifact here is what the converter will produce (manifest per docs/DESIGN.md), built from an
int8 model that is already quantized: planned with ``plan_model``, written with
``write_artifact_files`` inside ``atomic_directory``. The self-test's expected digests come from
running the model on each installed backend.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conftest import REPO
from lepton_edge.artifact import generate_keypair, load_private_key, write_artifact_files
from lepton_edge.fsio import atomic_directory
from lepton_edge.profiles import load_profile
from lepton_edge.runtime import litert, tflm
from lepton_edge.runtime.base import io_specs
from lepton_edge.runtime.factory import open_runner
from lepton_edge.tflite.reader import parse_model


@functools.cache
def planned(model_path: str, profile_name: str):
    """``plan_model`` of a file, once per test session (it runs TFLite Micro to measure)."""
    from lepton_edge.plan.planner import plan_model

    return plan_model(Path(model_path).read_bytes(), model_path, profile=load_profile(profile_name))


def keypair(directory: Path):
    """``(private_key, public_key_path)``, made once per directory."""
    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "signing.key").exists():
        generate_keypair(directory)
    return load_private_key(directory / "signing.key"), directory / "signing.pub"


def self_test_input(model_bytes: bytes, seed: int = 0) -> bytes:
    inputs, _ = io_specs(parse_model(model_bytes))
    rng = np.random.default_rng(seed)
    parts = []
    for s in inputs:
        dtype = np.dtype(s.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            parts.append(rng.integers(info.min, info.max + 1, size=s.shape, dtype=dtype).tobytes())
        else:
            parts.append(rng.standard_normal(s.shape).astype(dtype).tobytes())
    return b"".join(parts)


def output_digests(model_bytes: bytes, arena_bytes: int, raw_input: bytes) -> dict[str, str]:
    from lepton_edge.agent.codec import split_tensor_bytes

    digests = {}
    for backend, installed in (("litert", litert.available()), ("tflm", tflm.available())):
        if not installed:
            continue
        runner = open_runner(model_bytes, backend=backend, arena_bytes=arena_bytes)
        outs = runner.run(split_tensor_bytes(raw_input, runner.inputs))
        digests[backend] = hashlib.sha256(b"".join(o.tobytes() for o in outs)).hexdigest()
    return digests


def build_artifact(out_dir: Path, model_path: Path, *, version: int, private_key=None, name: str | None = None,
                   profile: str = "raspberry-pi-4", self_test: bool = True, digests: dict[str, str] | None = None,
                   latency_budget_ms: float | None = None, runtime: str | None = None,
                   arena_total_bytes: int | None = None) -> Path:
    """Write a converter-style artifact directory for an int8 .tflite; return its path."""
    prof = load_profile(profile)
    plan = planned(str(model_path), profile)
    model = plan.planned_model
    inputs, outputs = io_specs(parse_model(model))
    total = plan.recommended_arena_bytes + prof.arena_margin_bytes
    digest_arena = total
    if arena_total_bytes is not None:
        total = arena_total_bytes  # a deliberately wrong figure, signed like a right one
    test = None
    if self_test:
        raw = self_test_input(model)
        test = {"input_b64": base64.b64encode(raw).decode(),
                "output_sha256": digests if digests is not None else output_digests(model, digest_arena, raw)}
        if latency_budget_ms is not None:
            test["latency_budget_ms"] = latency_budget_ms
    manifest = {
        "name": name or model_path.stem, "version": version, "created": "2026-01-01T00:00:00Z",
        "profile": prof.name, "runtime": runtime or prof.runtime, "kernel_library": prof.kernel_library,
        "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs], "layout": "NHWC",
        "arena": {"head_bytes": plan.head_bytes, "tail_bytes": plan.tail_bytes,
                  "lower_bound_bytes": plan.lower_bound_bytes, "recommended_bytes": plan.recommended_arena_bytes,
                  "margin_bytes": prof.arena_margin_bytes, "total_bytes": total, "measured": dict(plan.measured)},
        "conversion": {"source": str(model_path), "source_format": "tflite", "quantize": "int8", "io": "int8",
                       "prune": 0.0, "prune_channels": False, "calibration": None, "calibration_synthetic": False,
                       "tool": "lepton-edge tests"},
        "fidelity": None,
        "self_test": test,
    }
    with atomic_directory(out_dir, replace=True) as staging:
        write_artifact_files(staging, model, manifest, private_key)
    return out_dir


def write_config(path: Path, *, store: Path, trusted_keys: list[Path] | tuple = (), listen: str = "127.0.0.1:0",
                 backend: str = "litert", profile: str = "raspberry-pi-4", require_signature: bool = True,
                 device_id: str = "test-device", fleet: str = "test-fleet", api_options: str = "",
                 extra: str = "") -> Path:
    keys = ", ".join(json.dumps(str(k)) for k in trusted_keys)
    path.write_text(f"""
[device]
id = "{device_id}"
fleet = "{fleet}"
profile = "{profile}"

[runtime]
backend = "{backend}"
threads = 1

[store]
dir = {json.dumps(str(store))}

[api]
listen = {json.dumps(listen)}
{api_options}

[security]
require_signature = {str(require_signature).lower()}
trusted_keys = [{keys}]
{extra}
""")
    return path


# --- HTTP clients (TCP and unix sockets) -------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def connect(url: str, timeout: float = 10.0) -> http.client.HTTPConnection:
    if url.startswith("unix:"):
        return UnixHTTPConnection(url[5:], timeout)
    host_port = url.split("//", 1)[1]
    host, port = host_port.rsplit(":", 1)
    return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)


@dataclass
class Reply:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> Reply:
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)


# --- the agent as a process --------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """The environment for agent subprocesses: bytecode cached (outside the repository), as on an installed
    device; without it every start recompiles the 20,000-line TFLite schema module (0.25 s)."""
    env = dict(os.environ)
    env.pop("LEPTON_DEBUG", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "lepton-edge-test-pycache")
    return env


class LineReader:
    """Lines from a pipe, with a timeout (select on the raw descriptor, our own buffer)."""

    def __init__(self, pipe) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""
        self.lines: list[str] = []

    def readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        text = line.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_for(self, needle: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if line is None:
                return None
            if needle in line:
                return line


@dataclass
class AgentProcess:
    """``lepton-edge agent`` in a subprocess; ``url`` once it prints that it is listening."""

    proc: subprocess.Popen
    url: str | None = None

    def __post_init__(self) -> None:
        self.stdout = LineReader(self.proc.stdout)
        self.stderr = LineReader(self.proc.stderr)

    @classmethod
    def start(cls, config: Path, model: Path | None = None, *, wait: bool = True, timeout: float = 60.0,
              command: str = "agent", extra: tuple[str, ...] = ()) -> AgentProcess:
        """``lepton-edge agent`` (or ``command``: the gateway takes the same config) with ``extra`` arguments."""
        env = child_env()
        env["PYTHONUNBUFFERED"] = "1"
        args = [sys.executable, "-m", "lepton_edge", command, "--config", str(config), *extra]
        if model is not None:
            args += ["--model", str(model)]
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        agent = cls(proc)
        if wait:
            agent.wait_listening(timeout)
        return agent

    def wait_listening(self, timeout: float = 60.0) -> str:
        line = self.stdout.wait_for("listening on ", timeout)
        if line is None:
            self.kill()
            raise AssertionError(f"agent did not start listening: exit {self.proc.returncode}\n"
                                 + "\n".join(self.stdout.lines) + "\n" + self.stderr_text())
        self.url = line.strip().rsplit("listening on ", 1)[1]
        return self.url

    def wait_stderr(self, needle: str, timeout: float = 30.0) -> str:
        line = self.stderr.wait_for(needle, timeout)
        if line is None:
            raise AssertionError(f"agent never logged {needle!r}: " + "\n".join(self.stderr.lines))
        return line

    def stderr_text(self) -> str:
        """Everything the agent wrote on stderr so far (drains the pipe without blocking)."""
        while self.stderr.readline(0.01) is not None:
            pass
        return "\n".join(self.stderr.lines) + self.stderr.buffer.decode(errors="replace")

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        assert self.url, "agent is not listening"
        return connect(self.url, timeout)

    def get(self, path: str) -> Reply:
        conn = self.connection()
        try:
            return request(conn, "GET", path)
        finally:
            conn.close()

    def post(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> Reply:
        conn = self.connection()
        try:
            return request(conn, "POST", path, body, {"Content-Type": content_type})
        finally:
            conn.close()

    def terminate(self, timeout: float = 20.0) -> tuple[int, str, str]:
        """SIGTERM, wait; ``(exit code, stdout, stderr)`` (everything not read yet)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=timeout)
        return (self.proc.returncode, "\n".join(self.stdout.lines) + self.stdout.buffer.decode() + out.decode(),
                "\n".join(self.stderr.lines) + self.stderr.buffer.decode() + err.decode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=20)


def two_in_two_out_model() -> bytes:
    """A tiny int8 model with two inputs and two outputs of different sizes, built without TensorFlow.

    ``a = ADD(x, x)`` (x: int8[1,4], scale 0.5; a: scale 1.0, so a == x) and ``b = RELU(y)`` (y: int8[1,2]).
    """
    from lepton_edge.tflite import writer
    from lepton_edge.tflite.vendor import schema_py_generated as fb

    def tensor(name: str, shape: list[int], scale: float, zero_point: int):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), shape, fb.TensorType.INT8, 0
        q = fb.QuantizationParametersT()
        q.scale, q.zeroPoint = [scale], [zero_point]
        t.quantization = q
        return t

    def opcode(code: int):
        c = fb.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, code, 1
        return c

    add = fb.OperatorT()
    add.opcodeIndex, add.inputs, add.outputs = 0, [0, 0], [2]
    add.builtinOptionsType, add.builtinOptions = fb.BuiltinOptions.AddOptions, fb.AddOptionsT()
    relu = fb.OperatorT()
    relu.opcodeIndex, relu.inputs, relu.outputs = 1, [1], [3]
    sg = fb.SubGraphT()
    sg.tensors = [tensor("x", [1, 4], 0.5, 0), tensor("y", [1, 2], 0.25, -1),
                  tensor("a", [1, 4], 1.0, 0), tensor("b", [1, 2], 0.25, -1)]
    sg.inputs, sg.outputs, sg.operators, sg.name = [0, 1], [2, 3], [add, relu], b"main"
    model = fb.ModelT()
    model.version, model.description = 3, b"two inputs, two outputs"
    model.operatorCodes = [opcode(fb.BuiltinOperator.ADD), opcode(fb.BuiltinOperator.RELU)]
    model.subgraphs, model.buffers = [sg], [fb.BufferT()]
    return writer.pack(model)
