"""ONNX -> TensorFlow SavedModel through ``onnx2tf``, in a child process, never touching the network.

``onnx2tf.convert()`` downloads a sample-image file from the internet when a model's inputs look like
images, unless ``calibration_image_sample_data_20x128x128x3_float32.npy`` lies in the current directory
(docs/DESIGN.md, "Facts the code relies on"). So it runs in a child process whose working directory is a
fresh temporary directory holding a fixed, pre-written file of that name, with proxies pointing at a
closed local port so that any request it still tried would fail at once instead of leaving the machine.
The child process also keeps onnx2tf's chatter and its changes to TensorFlow's global state out of ours.

Run as ``python -m lepton_edge.convert.onnx_import MODEL.onnx OUTDIR [--batch-size 1]`` (the child).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lepton_edge.errors import BadInput

#: The file onnx2tf looks for before it downloads one (onnx2tf/utils/common_functions.py).
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
_DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection fails at once
_TIMEOUT_S = 900


@dataclass(frozen=True)
class OnnxInput:
    name: str
    shape: tuple[int | str, ...]  # ints, or the symbolic name of a dynamic dimension
    dtype: str


def read_onnx_inputs(path: Path) -> list[OnnxInput]:
    """The graph inputs that are not initializers, checked with ``onnx.checker``."""
    try:
        import onnx
    except ImportError:
        raise BadInput("ONNX models need the 'onnx' and 'onnx2tf' packages (pip install 'lepton-edge[host]')") from None
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf and checker raise many kinds
        raise BadInput(f"{path}: not a valid ONNX model ({' '.join(str(exc).split())[:200]})") from None
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "float32"
        out.append(OnnxInput(vi.name, dims, dtype))
    if not out:
        raise BadInput(f"{path}: the ONNX graph has no inputs")
    return out


def onnx_to_saved_model(path: Path, workdir: Path) -> Path:
    """Convert ``path`` with onnx2tf inside ``workdir``; return the SavedModel directory."""
    inputs = read_onnx_inputs(path)
    for inp in inputs:
        if any(isinstance(d, str) for d in inp.shape[1:]):
            raise BadInput(f"{path}: input '{inp.name}' has dynamic dimensions {list(inp.shape)}; "
                           "export the ONNX model with a fixed input shape")
    np.save(workdir / SAMPLE_FILE, _sample_images())
    out = workdir / "saved_model"
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[key] = _DEAD_PROXY
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "lepton_edge.convert.onnx_import", str(path.resolve()), str(out)]
    if isinstance(inputs[0].shape[0], str):
        cmd += ["--batch-size", "1"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise BadInput(f"{path}: onnx2tf did not finish within {_TIMEOUT_S} s") from None
    if proc.returncode != 0 or not (out / "saved_model.pb").exists():
        raise BadInput(f"{path}: onnx2tf cannot convert this model ({_last_error(proc.stderr + proc.stdout)})")
    return out


def _sample_images() -> np.ndarray:
    """A fixed stand-in for onnx2tf's sample images (used only for its own output check)."""
    rng = np.random.default_rng(20)
    return rng.uniform(0.0, 1.0, SAMPLE_SHAPE).astype(np.float32)


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:240]
    return lines[-1][:240] if lines else "no output"


def _child(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batch-size", type=int)
    args = ap.parse_args(argv)
    if not Path(SAMPLE_FILE).exists():  # never let onnx2tf reach for the network
        print(f"error: {SAMPLE_FILE} missing from the working directory", file=sys.stderr)
        return 2
    import onnx2tf

    onnx2tf.convert(input_onnx_file_path=args.model, output_folder_path=args.out, non_verbose=True,
                    not_use_onnxsim=True, output_signaturedefs=True, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
