"""How faithful a converted model is to its float source: SQNR, top-1 agreement, accuracy.

The converted model runs under LiteRT (fast, and the same int8 arithmetic as TFLite Micro's reference
kernels up to rounding in a few operators); the float reference is the source model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from lepton_edge.convert.calibration import Dataset

#: Below these a conversion counts as poor and the report names the layers that lose the most.
POOR_ACCURACY_DROP_POINTS = 1.0
POOR_AGREEMENT_PERCENT = 95.0
POOR_SQNR_DB = 15.0


@dataclass
class Fidelity:
    """Fidelity figures; percentages in points (0-100), SQNR in dB (None when outputs are identical)."""

    data: str
    samples: int
    reference: str
    runtime: str
    sqnr_db: float | None
    exact: bool
    top1_agreement: float | None
    accuracy_float: float | None = None
    accuracy_converted: float | None = None
    worst_layers: list[dict] = field(default_factory=list)

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_float is None or self.accuracy_converted is None:
            return None
        return round(self.accuracy_float - self.accuracy_converted, 4)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy_drop_points"] = self.accuracy_drop
        return d


def run_converted(model_bytes: bytes, data: Dataset) -> list[np.ndarray]:
    """Run the converted model on every sample (float in, float out) under LiteRT."""
    from lepton_edge.convert.tfenv import quiet
    from lepton_edge.runtime.litert import load_litert

    with quiet():  # LiteRT announces its XNNPACK delegate on the terminal
        runner = load_litert(model_bytes, source="converted model")
        try:
            outs = [runner.run_float(data.sample(i)) for i in range(len(data))]
        finally:
            runner.close()
    return [np.concatenate([o[j].reshape(1, -1) for o in outs]) for j in range(len(outs[0]))]


def sqnr_db(reference: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> float | None:
    """10 log10(signal power / noise power) over all outputs; None when the outputs are identical."""
    ref = np.concatenate([np.asarray(r, np.float64).reshape(-1) for r in reference])
    got = np.concatenate([np.asarray(t, np.float64).reshape(-1) for t in test])
    noise = float(np.sum((ref - got) ** 2))
    if noise == 0.0:
        return None
    signal = float(np.sum(ref ** 2))
    if signal == 0.0:
        return float("-inf")
    return round(10.0 * np.log10(signal / noise), 3)


def top1(output: np.ndarray) -> np.ndarray | None:
    """Per-sample argmax of an output with more than one value per sample."""
    flat = np.asarray(output).reshape(len(output), -1)
    return flat.argmax(axis=1) if flat.shape[1] > 1 else None


def accuracy(output: np.ndarray, labels: np.ndarray) -> float | None:
    """Percent of samples whose argmax matches integer labels (or one-hot rows); None for other labels."""
    pred = top1(output)
    if pred is None:
        return None
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == np.asarray(output).reshape(len(output), -1).shape[1] and y.shape[1] > 1:
        y = y.argmax(axis=1)
    elif y.ndim != 1 or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        return None
    return round(100.0 * float(np.mean(pred == y.astype(np.int64))), 4)


def compare(reference: Sequence[np.ndarray], converted: Sequence[np.ndarray], data: Dataset, *,
            reference_label: str, runtime: str = "litert") -> Fidelity:
    ref = [np.asarray(r).reshape(len(r), -1) for r in reference]
    got = [np.asarray(c).reshape(len(c), -1) for c in converted]
    sq = sqnr_db(ref, got)
    a, b = top1(ref[0]), top1(got[0])
    agreement = None if a is None else round(100.0 * float(np.mean(a == b)), 4)
    fid = Fidelity(data=data.origin, samples=len(data), reference=reference_label, runtime=runtime,
                   sqnr_db=None if sq is None or not np.isfinite(sq) else sq, exact=sq is None,
                   top1_agreement=agreement)
    if data.y is not None:
        fid.accuracy_float = accuracy(ref[0], data.y)
        fid.accuracy_converted = accuracy(got[0], data.y)
    return fid


def is_poor(fid: Fidelity, outputs_are_probabilities: bool) -> bool:
    """Whether the loss is worth a diagnosis (accuracy, else agreement for classifiers, else SQNR)."""
    if fid.exact:
        return False
    drop = fid.accuracy_drop
    if drop is not None:
        return drop > POOR_ACCURACY_DROP_POINTS
    if outputs_are_probabilities and fid.top1_agreement is not None:
        return fid.top1_agreement < POOR_AGREEMENT_PERCENT
    return fid.sqnr_db is not None and fid.sqnr_db < POOR_SQNR_DB


def looks_like_probabilities(output: np.ndarray) -> bool:
    flat = np.asarray(output, np.float64).reshape(len(output), -1)
    return flat.shape[1] > 1 and bool(np.all(flat >= -1e-6)) and bool(np.allclose(flat.sum(axis=1), 1.0, atol=1e-3))
