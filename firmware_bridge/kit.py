"""What firmware_bridge takes from lepton_edge, in one place (besides ``lepton_edge.errors``).

The bridge is a package of its own, beside the kit: its modules import ``lepton_edge.errors`` (the one
error tree) and, for everything else, this module; :mod:`firmware_bridge.engine` (the simulated device's
TFLite Micro) goes to ``lepton_edge.runtime`` itself. ``tests/test_boundaries.py`` holds them to it.
All of it is device-side code (docs/DESIGN.md, "Boundaries"):

* the artifact: :class:`Artifact`, :func:`load_artifact`, :func:`verify_manifest` (``lepton_edge.artifact``);
* the arena plan: :func:`plan_model`, :func:`embedded_plan`, :func:`measure_with_tflm`, :func:`tflm_available`
  (``lepton_edge.plan``), and the manifest's arena, :func:`artifact_arena_bytes`;
* the model: :func:`parse_model` (``lepton_edge.tflite.reader``);
* the host reference interpreter: :func:`load_tflm`, :class:`TflmRunner`, :class:`TensorSpec`
  (``lepton_edge.runtime``);
* device profiles (:func:`load_profile`), whole-or-nothing files (:func:`atomic_directory`,
  :func:`atomic_write_text`) and the kit's ``__version__``.
"""

from __future__ import annotations

from lepton_edge import __version__
from lepton_edge.artifact import Artifact, load_artifact, verify_manifest
from lepton_edge.fsio import atomic_directory, atomic_write_text
from lepton_edge.plan.embed import embedded_plan
from lepton_edge.plan.measure import measure_with_tflm, tflm_available
from lepton_edge.plan.planner import plan_model
from lepton_edge.profiles import load_profile
from lepton_edge.runtime.base import TensorSpec
from lepton_edge.runtime.factory import artifact_arena_bytes
from lepton_edge.runtime.tflm import TflmRunner, load_tflm
from lepton_edge.tflite.reader import parse_model

__all__ = ["Artifact", "TensorSpec", "TflmRunner", "__version__", "artifact_arena_bytes", "atomic_directory",
           "atomic_write_text", "embedded_plan", "load_artifact", "load_profile", "load_tflm", "measure_with_tflm",
           "parse_model", "plan_model", "tflm_available", "verify_manifest"]
