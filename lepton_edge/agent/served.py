"""The model the agent serves: a verified artifact, its runner, and what the API precomputes for it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from lepton_edge.agent.raw_input import manifest_spec
from lepton_edge.artifact import Artifact
from lepton_edge.preprocess import PreprocessSpec
from lepton_edge.profiles import Profile
from lepton_edge.runtime.base import Runner
from lepton_edge.runtime.factory import open_artifact_runner


@dataclass(frozen=True)
class ServedModel:
    artifact: Artifact
    slot: str
    runner: Runner
    binary_headers: bytes  # constant headers of a raw-bytes answer

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def version(self) -> int:
        return self.artifact.version

    @property
    def sha256(self) -> str:
        return self.artifact.sha256

    @functools.cached_property
    def preprocess(self) -> PreprocessSpec | None:
        """The manifest's preprocessing spec, parsed once: raw inputs use it on every request."""
        return manifest_spec(self.artifact.manifest, f"model '{self.name}' v{self.version}")

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "slot": self.slot,
                "signer": self.artifact.manifest.get("signer"), "profile": self.artifact.manifest.get("profile"),
                "inputs": [s.to_dict() for s in self.runner.inputs],
                "outputs": [s.to_dict() for s in self.runner.outputs],
                "preprocess": self.artifact.manifest.get("preprocess")}


def load_served(artifact: Artifact, slot: str, *, backend: str, profile: Profile | None, threads: int) -> ServedModel:
    """Open ``artifact`` (already verified) on ``backend`` with the arena its manifest plans."""
    runner = open_artifact_runner(artifact.manifest, artifact.model_bytes, backend=backend, profile=profile,
                                  threads=threads, source=f"slot {slot} ({artifact.name} v{artifact.version})")
    return served_model(artifact, slot, runner)


def served_model(artifact: Artifact, slot: str, runner: Runner) -> ServedModel:
    """``artifact`` served through ``runner`` (one in this process, or the serial device's)."""
    sizes = ",".join(str(s.nbytes) for s in runner.outputs)
    headers = f"X-Output-Bytes: {sizes}\r\nX-Model-Version: {artifact.version}\r\n".encode()
    return ServedModel(artifact, slot, runner, headers)
