"""Package a converted model: the self-test, the manifest, and the output directory (whole or not at all).

The output directory is staged with :func:`lepton_edge.fsio.atomic_directory`: model.tflite,
manifest.json (+ manifest.sig) and firmware/ appear together or not at all.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_edge import __version__
from lepton_edge.convert.calibration import Dataset
from lepton_edge.convert.load import SourceModel
from lepton_edge.convert.quantize import LITERT_ONLY_MODES
from lepton_edge.errors import BadInput
from lepton_edge.profiles import Profile

if TYPE_CHECKING:
    from lepton_edge.convert.options import ConvertOptions
    from lepton_edge.convert.result import Attempt
    from lepton_edge.runtime.base import Runner


def self_test(attempt: Attempt, data: Dataset, profile: Profile) -> dict:
    """One deterministic input and the digest of the outputs on each runtime that can run the model."""
    from lepton_edge.convert.tfenv import quiet
    from lepton_edge.runtime.base import io_specs, quantize
    from lepton_edge.runtime.litert import load_litert
    from lepton_edge.runtime.tflm import load_tflm
    from lepton_edge.tflite.reader import parse_model

    model_bytes = attempt.model_bytes
    specs, _ = io_specs(parse_model(model_bytes))
    inputs = [quantize(x, spec) for x, spec in zip(data.sample(0), specs, strict=False)]
    digests = {}
    runners: list[tuple[str, Callable[[], Runner]]] = []
    plan = attempt.fit.plan
    if attempt.fit.tflm_runs and plan is not None and attempt.settings.quantize not in LITERT_ONLY_MODES:
        # The host's own interpreter: sized from the host measurement, never the target's (smaller) figure.
        host_arena = plan.host_recommended_arena_bytes or plan.recommended_arena_bytes
        runners.append(("tflm", lambda: load_tflm(model_bytes, host_arena, source="artifact")))
    runners.append(("litert", lambda: load_litert(model_bytes, source="artifact")))
    for name, opener in runners:
        with quiet():  # interpreters print banners on fd 2
            runner = opener()
            try:
                outputs = runner.run(inputs)
            finally:
                runner.close()
        digests[name] = hashlib.sha256(b"".join(np.ascontiguousarray(o).tobytes() for o in outputs)).hexdigest()
    raw = b"".join(np.ascontiguousarray(a).tobytes() for a in inputs)
    return {"input_b64": base64.b64encode(raw).decode("ascii"), "output_sha256": digests}


def build_manifest(opts: ConvertOptions, profile: Profile, source: SourceModel, attempt: Attempt,
                   calibration: Dataset | None, self_test: dict, preprocess: dict | None = None) -> dict:
    """The manifest's fields (docs/DESIGN.md, "The artifact and its manifest"); ``model`` and ``signer``
    are added when written. ``preprocess`` (the spec, docs/PREPROCESS.md) only when one was given."""
    from lepton_edge.runtime.base import io_specs
    from lepton_edge.tflite.reader import parse_model

    specs_in, specs_out = io_specs(parse_model(attempt.model_bytes))
    s = attempt.settings
    if calibration is None:
        calib = None
    elif calibration.synthetic:
        calib = "synthetic: seeded random values, NOT real inputs (int8 ranges may be wrong)"
    else:
        calib = calibration.origin
    manifest = {
        "name": opts.name or Path(opts.model).stem,
        "version": int(opts.version),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "profile": profile.name,
        "runtime": profile.runtime,
        "kernel_library": profile.kernel_library,
        "inputs": [sp.to_dict() for sp in specs_in],
        "outputs": [sp.to_dict() for sp in specs_out],
        "layout": source.layout,
        "arena": attempt.fit.arena,
        "conversion": {
            "source": Path(opts.model).name,
            "source_format": source.format,
            "quantize": s.quantize,
            "io": opts.io if s.quantize == "int8" else "float",
            "prune": s.prune,
            "prune_channels": s.prune_channels,
            "calibration": calib,
            "calibration_synthetic": bool(calibration is not None and calibration.synthetic),
            "tool": f"lepton-edge {__version__}",
        },
        "fidelity": attempt.fidelity.to_dict() if attempt.fidelity else None,
        "self_test": self_test,
    }
    if preprocess is not None:
        manifest["preprocess"] = preprocess
    return manifest


def check_outdir(path: Path, force: bool) -> None:
    """Refuse ``-o PATH`` when it is a file, or a non-empty directory without ``--force``."""
    if path.exists() and not path.is_dir():
        raise BadInput(f"-o {path}: exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise BadInput(f"-o {path}: directory exists and is not empty (use --force to replace it)")


def write_artifact(opts: ConvertOptions, manifest: dict, attempt: Attempt) -> None:
    """model.tflite, manifest.json (+ manifest.sig) and firmware/ into ``opts.outdir``, atomically."""
    from lepton_edge.artifact import load_private_key, write_artifact_files
    from lepton_edge.firmware import IoTensor, write_firmware
    from lepton_edge.fsio import atomic_directory

    key = load_private_key(opts.sign_key) if opts.sign_key else None
    out = Path(opts.outdir)
    check_outdir(out, opts.force)  # again: it may have appeared while we converted
    io = {k: [IoTensor(t["name"], tuple(t["shape"]), t["dtype"], t["scale"], t["zero_point"]) for t in manifest[k]]
          for k in ("inputs", "outputs")}
    with atomic_directory(out, replace=out.exists()) as staging:
        os.chmod(staging, 0o755)  # mkdtemp made it private (0700); an artifact is for others to read
        write_artifact_files(staging, attempt.model_bytes, manifest, key)
        write_firmware(staging / "firmware", attempt.model_bytes, name=manifest["name"],
                       arena_bytes=manifest["arena"]["total_bytes"], inputs=io["inputs"], outputs=io["outputs"],
                       layout=manifest["layout"])
