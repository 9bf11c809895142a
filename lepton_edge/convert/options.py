"""The converter's inputs: :class:`ConvertOptions` (what the user asked for) and :class:`Settings` (one attempt's).

Plain data, no TensorFlow: :mod:`lepton_edge.convert.pipeline` reads them, :mod:`lepton_edge.convert.package`
and :mod:`lepton_edge.convert.result` refer to them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConvertOptions:
    model: str
    profile: str
    outdir: str
    name: str | None = None
    version: int = 1
    calibration: str | None = None
    eval: str | None = None
    quantize: str = "int8"
    io: str = "int8"
    prune: float = 0.0
    prune_channels: float = 0.0
    train: str | None = None
    epochs: int = 5
    learning_rate: float = 5e-4
    auto_fit: bool = False
    sign_key: str | None = None
    max_drop: float | None = None
    force: bool = False
    measure: str = "auto"  # where the arena is measured: auto, host or target (lepton_edge.plan.target)
    preprocess: str | None = None  # a preprocessing spec: TOML file or inline (lepton_edge.preprocess.spec)
    min_sqnr: float | None = None  # refuse to write an artifact whose SQNR is below this (dB)


@dataclass(frozen=True)
class Settings:
    """One attempt's conversion settings."""

    quantize: str
    prune: float = 0.0
    prune_channels: float = 0.0

    @property
    def label(self) -> str:
        parts = [self.quantize]
        if self.prune:
            parts.append(f"prune {self.prune:g}")
        if self.prune_channels:
            parts.append(f"channels {self.prune_channels:g}")
        return " + ".join(parts)
