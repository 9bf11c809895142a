"""The converter's outcome: one :class:`Attempt` per settings tried, and the :class:`ConversionResult`.

Plain data: :mod:`lepton_edge.convert.pipeline` fills them in, :mod:`lepton_edge.convert.package` reads the
chosen attempt, ``lepton-edge convert --json`` prints :meth:`ConversionResult.to_dict`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_edge.convert.fidelity import Fidelity
from lepton_edge.convert.fit import FitResult
from lepton_edge.convert.options import ConvertOptions, Settings
from lepton_edge.profiles import Profile


@dataclass
class Attempt:
    settings: Settings
    model_bytes: bytes
    fit: FitResult
    fidelity: Fidelity | None
    pruning: list[dict]
    compressed_bytes: int
    seconds: float
    keras_model: Any = field(default=None, repr=False)  # the pruned float model, when pruned

    def to_dict(self) -> dict:
        v = self.fit.verdict
        return {"settings": self.settings.label, "quantize": self.settings.quantize, "prune": self.settings.prune,
                "prune_channels": self.settings.prune_channels, "size_bytes": len(self.model_bytes),
                "compressed_bytes": self.compressed_bytes, "arena_total_bytes": self.fit.arena["total_bytes"],
                "ram_needed_bytes": v.ram_needed_bytes, "ram_budget_bytes": v.ram_budget_bytes,
                "ram_estimated": v.ram_estimated, "flash_budget_bytes": v.flash_budget_bytes, "fits": v.fits,
                "reasons": list(v.reasons), "fidelity": self.fidelity.to_dict() if self.fidelity else None,
                "pruning": self.pruning, "seconds": round(self.seconds, 2)}


@dataclass
class ConversionResult:
    options: ConvertOptions
    profile: Profile
    source_format: str
    layout: str
    source_layout: str
    attempts: list[Attempt]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    manifest: dict | None = None
    written: bool = False
    failure: str | None = None  # why no artifact was written (does not fit, --max-drop, --min-sqnr)
    seconds: float = 0.0
    preprocess: dict | None = None  # the --preprocess spec, as the manifest holds it

    @property
    def chosen(self) -> Attempt:
        return self.attempts[-1]

    def to_dict(self) -> dict:
        chosen = self.chosen
        return {
            "artifact": str(Path(self.options.outdir)) if self.written else None,
            "written": self.written,
            "error": self.failure,
            "name": self.manifest["name"] if self.manifest else None,
            "version": self.options.version,
            "profile": {"name": self.profile.name, "runtime": self.profile.runtime,
                        "kernel_library": self.profile.kernel_library,
                        "ram_budget_bytes": self.profile.ram_budget_bytes,
                        "flash_budget_bytes": self.profile.flash_budget_bytes},
            "source": {"path": self.options.model, "format": self.source_format, "layout": self.source_layout},
            "layout": self.layout,
            "preprocess": self.preprocess,
            "steps": [a.to_dict() for a in self.attempts],
            "fits": chosen.fit.fits,
            "arena": chosen.fit.arena,
            "model": {"size_bytes": len(chosen.model_bytes), "compressed_bytes": chosen.compressed_bytes,
                      "sha256": hashlib.sha256(chosen.model_bytes).hexdigest()},
            "fidelity": chosen.fidelity.to_dict() if chosen.fidelity else None,
            "self_test": self.manifest.get("self_test") if self.manifest else None,
            "warnings": self.warnings,
            "notes": self.notes,
            "seconds": round(self.seconds, 2),
            "manifest": self.manifest,
        }
