"""Catch data that do not match what the model was trained on, before an artifact is written.

A float model fed inputs in the wrong range or channel order behaves like an untrained one: one class
for nearly every sample with little variation, or outputs that barely vary at all (the spread: the mean
over output values of their standard deviation across samples, over the outputs' RMS).
:func:`diagnose` looks for that on the calibration and evaluation data and, for images, tries the
usual scalings (0..255 as is, [0, 1], [-1, 1], [-128, 127], each in RGB and BGR) on the same pixels: a
scaling under which the model behaves trained is the likely fix, named as a ``--preprocess`` spec. The
warnings go to ``convert``'s output and its ``--json`` ``warnings``; ``--min-sqnr`` and ``--max-drop``
failures name the cause too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from lepton_edge.convert.calibration import Dataset
from lepton_edge.preprocess import AudioSpec, ImageSpec, PreprocessSpec
from lepton_edge.preprocess.image import finish_pixels
from lepton_edge.preprocess.spec import spec_to_inline

#: One class for at least this share of the samples (classifiers with 3 or more classes) while the outputs
#: vary little (a data set of one real class, say KWS's "unknown", still varies well above this) ...
MODAL_SHARE = 0.9
ONE_CLASS_MAX_SPREAD = 0.1
#: ... or outputs whose spread across samples is below this fraction of their RMS: "barely vary".
MIN_SPREAD = 0.02
#: Fewer samples than this say nothing about a class distribution.
MIN_SAMPLES = 10
#: Samples used to judge behaviour (each candidate scaling costs one float inference over them).
PROBE_SAMPLES = 64

#: (label, scale, offset) of the scalings tried on 8-bit pixels.
SCALINGS = (("[0, 255] (pixels as is)", 1.0, 0.0), ("[0, 1]", 1 / 255, 0.0), ("[-1, 1]", 1 / 127.5, -1.0),
            ("[-128, 127]", 1.0, -128.0))

Predict = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


@dataclass(frozen=True)
class Behaviour:
    """How the float model's first output varies over a set of samples."""

    samples: int
    classes: int  # values per sample
    modal_class: int | None
    modal_count: int | None
    spread: float
    distinct_classes: int | None

    @property
    def one_class(self) -> bool:
        return (self.modal_count is not None and self.classes >= 3 and self.samples >= MIN_SAMPLES
                and self.modal_count >= MODAL_SHARE * self.samples and self.spread < ONE_CLASS_MAX_SPREAD)

    @property
    def flat(self) -> bool:
        return self.samples >= 2 and self.spread < MIN_SPREAD

    @property
    def untrained(self) -> bool:
        return self.one_class or self.flat

    def describe(self) -> str:
        parts = []
        if self.one_class:
            parts.append(f"class {self.modal_class} for {self.modal_count} of {self.samples} samples")
        if self.flat:
            parts.append(f"outputs that barely vary (spread {self.spread:.3f})")
        return " and ".join(parts)

    def summary(self) -> str:
        if self.modal_count is not None:
            return (f"{self.distinct_classes} classes, the most common for {self.modal_count} of "
                    f"{self.samples} samples")
        return f"spread {self.spread:.3f}"


def behaviour(outputs: Sequence[np.ndarray]) -> Behaviour:
    flat = np.asarray(outputs[0], dtype=np.float64).reshape(len(outputs[0]), -1)
    n, k = flat.shape
    rms = float(np.sqrt(np.mean(flat ** 2)))
    spread = float(np.mean(flat.std(axis=0)) / rms) if rms > 0 else 0.0
    if k > 1:
        counts = np.bincount(flat.argmax(axis=1), minlength=k)
        modal = int(counts.argmax())
        return Behaviour(n, k, modal, int(counts[modal]), spread, int(np.count_nonzero(counts)))
    return Behaviour(n, k, None, None, spread, None)


@dataclass
class Diagnosis:
    what: str  # "calibration data", "eval data"
    seen: Behaviour
    cause: str
    fix: PreprocessSpec | None = None
    fixed: Behaviour | None = None

    @property
    def fix_arg(self) -> str | None:
        return None if self.fix is None else f"--preprocess {spec_to_inline(self.fix)}"

    def short(self) -> str:
        """The cause and the fix in one clause, for a refusal."""
        return f"likely cause: {self.cause}" + (f"; fix: {self.fix_arg}" if self.fix_arg else "")

    def warning(self) -> str:
        text = (f"WARNING: on the {self.what} the float model behaves untrained ({self.seen.describe()}): "
                f"likely cause: {self.cause}")
        if self.fix_arg and self.fixed is not None:
            text += f"; with {self.fix_arg} it behaves trained ({self.fixed.summary()})"
        return text


def _range_label(scale: float, offset: float) -> str:
    for label, s, o in SCALINGS:
        if np.isclose(scale, s) and np.isclose(offset, o):
            return label
    lo, hi = offset, 255 * scale + offset
    return f"[{min(lo, hi):g}, {max(lo, hi):g}]"


def _current_image_spec(spec: PreprocessSpec | None, pixels: np.ndarray) -> ImageSpec | None:
    if isinstance(spec, ImageSpec):
        return spec
    if spec is not None:
        return None
    color = "grayscale" if pixels.shape[-1] == 1 else "rgb"
    return ImageSpec(size=(int(pixels.shape[1]), int(pixels.shape[2])), color=color)


def _describe_input(spec: ImageSpec, given: bool) -> str:
    if spec.mean is not None:
        what = f"(pixel - mean) / std with mean {list(spec.mean)}, std {list(spec.std or ())}"
    else:
        what = f"pixels scaled to {_range_label(spec.scale, spec.offset)}"
    order = "" if spec.color == "grayscale" else f", {spec.color.upper()}"
    return what + order + ("" if given else ", as the data were given (no --preprocess)")


def _image_candidates(current: ImageSpec) -> list[ImageSpec]:
    orders = ("rgb", "bgr") if current.color != "grayscale" else ("grayscale",)
    out = []
    for color in (current.color, *[c for c in orders if c != current.color]):
        for _, scale, offset in SCALINGS:
            cand = dataclasses.replace(current, color=color, scale=scale, offset=offset, mean=None, std=None)
            if cand != current:
                out.append(cand)
    return out


def diagnose(predict: Predict, data: Dataset, spec: PreprocessSpec | None, what: str,
             outputs: Sequence[np.ndarray] | None = None) -> Diagnosis | None:
    """A :class:`Diagnosis` when the float model behaves untrained on ``data``; None when it looks fine."""
    if data.synthetic or len(data.xs) != 1:
        return None
    probe = data.head(PROBE_SAMPLES)
    seen = behaviour(outputs if outputs is not None else predict(probe.xs))
    if not seen.untrained:
        return None
    if isinstance(spec, AudioSpec):
        return Diagnosis(what, seen, "the audio features: check the spec's normalize, spectrum, features, "
                                     "mel_bins, log_offset and frame timing against the model's training pipeline")
    current = None if probe.pixels is None else _current_image_spec(spec, probe.pixels)
    if current is None or probe.pixels is None:
        return Diagnosis(what, seen, "the input range: check the scale and offset the model was trained with")
    best: tuple[tuple[int, float, float], ImageSpec, Behaviour] | None = None
    shape = probe.xs[0].shape
    for cand in _image_candidates(current):
        x = np.concatenate([finish_pixels(cand, p) for p in probe.pixels]).reshape(shape)
        b = behaviour(predict([x]))
        if b.untrained:
            continue
        # the smallest change first (the channel order only when no scaling in this order works), then
        # the most varied predictions
        score = (int(cand.color != current.color), b.modal_count / b.samples if b.modal_count is not None else 0.0,
                 -b.spread)
        if best is None or score < best[0]:
            best = (score, cand, b)
    given = _describe_input(current, spec is not None)
    if best is None:
        return Diagnosis(what, seen, f"the input range or channel order ({given}; none of "
                                     f"{', '.join(label for label, _, _ in SCALINGS)} in RGB or BGR does better)")
    _, fix, fixed = best
    changed = "channel order" if (fix.scale, fix.offset) == (current.scale, current.offset) and current.mean is None \
        else "input range"
    expects = (f"{fix.color.upper()} order" if changed == "channel order"
               else f"{_range_label(fix.scale, fix.offset)}")
    return Diagnosis(what, seen, f"the {changed}: the inputs were {given}; the model seems to expect {expects}",
                     fix, fixed)
