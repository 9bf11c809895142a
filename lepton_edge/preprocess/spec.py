"""The preprocessing spec: what a model's input expects, declared once and carried in the artifact.

Three kinds (``kind`` key): ``image`` (decode, centre crop, resize as Pillow does, colour order, scale),
``audio`` (WAV -> MFCC or log-mel features as ``tf.signal`` computes them, MLPerf Tiny KWS included) and
``tensor`` (scale and offset). A spec comes from a TOML file's ``[preprocess]`` table, an inline
``key=value,...`` string, or the artifact's manifest (:func:`spec_to_dict` is what the manifest holds).
Every error is one :class:`BadInput` line naming the field.

Device-side: standard library only (``tomllib``/``tomli`` through :mod:`lepton_edge.tomlfile`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeAlias

from lepton_edge.errors import BadInput

RESIZE_METHODS = ("nearest", "bilinear")
CROPS = ("center",)
COLORS = ("rgb", "bgr", "grayscale")
WINDOWS = ("hann",)
FEATURES = ("mfcc", "log_mel")
SPECTRA = ("magnitude", "power")
NORMALIZE = ("none", "max", "peak")
RESAMPLE = ("none", "linear")


@dataclass(frozen=True)
class ImageSpec:
    """An image input: ``size`` (height, width); pixels become ``pixel * scale + offset``, or
    ``(pixel - mean) / std`` per channel when ``mean``/``std`` are given (then scale/offset are unused)."""

    size: tuple[int, int]
    resize: str = "bilinear"
    crop: str | None = None
    color: str = "rgb"
    scale: float = 1.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    kind = "image"

    @property
    def channels(self) -> int:
        return 1 if self.color == "grayscale" else 3


@dataclass(frozen=True)
class AudioSpec:
    """A 16-bit (or float) WAV -> features. The defaults are MLPerf Tiny KWS's front end: 16 kHz, 1 s clip,
    30 ms Hann window every 20 ms, 512-point FFT magnitude, 40 mel bins over 20-4000 Hz, log(mel + 1e-6),
    10 MFCCs, the clip divided by its largest sample (``normalize = "max"``)."""

    sample_rate: int = 16000
    clip_ms: float = 1000.0
    window_ms: float = 30.0
    stride_ms: float = 20.0
    fft_size: int | None = None
    window: str = "hann"
    spectrum: str = "magnitude"
    features: str = "mfcc"
    mel_bins: int = 40
    coefficients: int = 10
    lower_hz: float = 20.0
    upper_hz: float = 4000.0
    log_offset: float = 1e-6
    normalize: str = "max"
    resample: str = "none"

    kind = "audio"

    def samples(self, ms: float) -> int:
        """Milliseconds -> samples, truncated as MLPerf's ``int(sample_rate * ms / 1000)``."""
        return int(self.sample_rate * ms / 1000)

    @property
    def clip_samples(self) -> int:
        return self.samples(self.clip_ms)

    @property
    def window_samples(self) -> int:
        return self.samples(self.window_ms)

    @property
    def stride_samples(self) -> int:
        return self.samples(self.stride_ms)

    @property
    def fft_length(self) -> int:
        """``fft_size``, or the next power of two of the window as ``tf.signal.stft(fft_length=None)``."""
        if self.fft_size is not None:
            return self.fft_size
        return 1 << max(0, (self.window_samples - 1).bit_length())

    @property
    def frames(self) -> int:
        return 1 + (self.clip_samples - self.window_samples) // self.stride_samples

    @property
    def width(self) -> int:
        """Features per frame: MFCCs kept, or mel bins."""
        return self.coefficients if self.features == "mfcc" else self.mel_bins


@dataclass(frozen=True)
class ScaleSpec:
    """A plain tensor: ``value * scale + offset``."""

    scale: float = 1.0
    offset: float = 0.0

    kind = "tensor"


PreprocessSpec: TypeAlias = ImageSpec | AudioSpec | ScaleSpec
_CLASSES: dict[str, type[ImageSpec] | type[AudioSpec] | type[ScaleSpec]] = {
    "image": ImageSpec, "audio": AudioSpec, "tensor": ScaleSpec}


def _where(source: str) -> str:
    """How errors start: ``spec.toml: preprocess``, or just ``--preprocess`` for an inline spec."""
    return source if source.endswith("preprocess") else f"{source}: preprocess"


class _Fields:
    """Reads one spec table, each problem a BadInput naming ``source`` and the field."""

    def __init__(self, obj: Mapping[str, Any], source: str) -> None:
        self.obj = obj
        self.source = source

    def fail(self, name: str, problem: str) -> BadInput:
        return BadInput(f"{_where(self.source)} {name}: {problem}")

    def choice(self, name: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.obj.get(name, default)
        if not isinstance(value, str) or value.lower() not in allowed:
            raise self.fail(name, f"{value!r} is not one of {', '.join(allowed)}")
        return value.lower()

    def number(self, name: str, default: float, *, positive: bool = False, nonnegative: bool = False) -> float:
        value = self.obj.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.fail(name, f"{value!r} is not a finite number")
        if positive and value <= 0:
            raise self.fail(name, f"{value!r} must be greater than 0")
        if nonnegative and value < 0:
            raise self.fail(name, f"{value!r} must not be negative")
        return float(value)

    def integer(self, name: str, default: int, *, low: int = 1) -> int:
        value = self.obj.get(name, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"{value!r} is not a whole number")
        if value < low:
            raise self.fail(name, f"{value!r} must be at least {low}")
        return value

    def vector(self, name: str) -> tuple[float, ...] | None:
        value = self.obj.get(name)
        if value is None:
            return None
        items = value if isinstance(value, (list, tuple)) else [value]
        if not 1 <= len(items) <= 4:
            raise self.fail(name, f"{value!r}: give one value or one per channel")
        out = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
                raise self.fail(name, f"{value!r}: {item!r} is not a finite number")
            out.append(float(item))
        return tuple(out)


def _absent(f: _Fields, name: str) -> bool:
    return f.obj.get(name) is None or f.obj.get(name) is False or f.obj.get(name) == "none"


def _image(f: _Fields) -> ImageSpec:
    size = f.obj.get("size")
    if size is None:
        raise f.fail("size", "missing: give [height, width] of the model's input")
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise f.fail("size", f"{size!r} is not [height, width] (two positive whole numbers)")
    mean, std = f.vector("mean"), f.vector("std")
    if (mean is None) != (std is None):
        raise f.fail("std" if std is None else "mean", "mean and std go together: give both")
    if mean is not None and ("scale" in f.obj or "offset" in f.obj):
        raise f.fail("scale", "give either scale/offset or mean/std, not both")
    if std is not None and any(s == 0 for s in std):
        raise f.fail("std", f"{list(std)}: a standard deviation of 0 divides by zero")
    crop = None if _absent(f, "crop") else f.choice("crop", CROPS, "center")
    spec = ImageSpec(size=(int(size[0]), int(size[1])), resize=f.choice("resize", RESIZE_METHODS, "bilinear"),
                     crop=crop, color=f.choice("color", COLORS, "rgb"),
                     scale=f.number("scale", 1.0), offset=f.number("offset", 0.0), mean=mean, std=std)
    for name, vec in (("mean", mean), ("std", std)):
        if vec is not None and len(vec) not in (1, spec.channels):
            raise f.fail(name, f"{list(vec)} has {len(vec)} values; color {spec.color} has {spec.channels} "
                               f"channel(s): give 1 or {spec.channels}")
    if mean is None and spec.scale == 0:
        raise f.fail("scale", "0 would make every input the same")
    return spec


def _audio(f: _Fields) -> AudioSpec:
    d = AudioSpec()
    spec = AudioSpec(
        sample_rate=f.integer("sample_rate", d.sample_rate, low=1000),
        clip_ms=f.number("clip_ms", d.clip_ms, positive=True),
        window_ms=f.number("window_ms", d.window_ms, positive=True),
        stride_ms=f.number("stride_ms", d.stride_ms, positive=True),
        fft_size=None if f.obj.get("fft_size") is None else f.integer("fft_size", 0, low=2),
        window=f.choice("window", WINDOWS, d.window),
        spectrum=f.choice("spectrum", SPECTRA, d.spectrum),
        features=f.choice("features", FEATURES, d.features),
        mel_bins=f.integer("mel_bins", d.mel_bins),
        coefficients=f.integer("coefficients", d.coefficients),
        lower_hz=f.number("lower_hz", d.lower_hz, nonnegative=True),
        upper_hz=f.number("upper_hz", d.upper_hz, positive=True),
        log_offset=f.number("log_offset", d.log_offset, positive=True),
        normalize=f.choice("normalize", NORMALIZE, d.normalize),
        resample=f.choice("resample", RESAMPLE, d.resample))
    if spec.window_samples < 2:
        raise f.fail("window_ms", f"{spec.window_ms} ms is {spec.window_samples} sample(s) at {spec.sample_rate} Hz")
    if spec.stride_samples < 1:
        raise f.fail("stride_ms", f"{spec.stride_ms} ms is less than one sample at {spec.sample_rate} Hz")
    if spec.clip_samples < spec.window_samples:
        raise f.fail("clip_ms", f"{spec.clip_ms} ms is shorter than the {spec.window_ms} ms window")
    if spec.fft_size is not None and spec.fft_size < spec.window_samples:
        raise f.fail("fft_size", f"{spec.fft_size} is shorter than the window ({spec.window_samples} samples)")
    if spec.upper_hz > spec.sample_rate / 2:
        raise f.fail("upper_hz", f"{spec.upper_hz:g} Hz is above the Nyquist frequency ({spec.sample_rate / 2:g} Hz)")
    if spec.lower_hz >= spec.upper_hz:
        raise f.fail("lower_hz", f"{spec.lower_hz:g} Hz must be below upper_hz ({spec.upper_hz:g} Hz)")
    if spec.features == "mfcc" and spec.coefficients > spec.mel_bins:
        raise f.fail("coefficients", f"{spec.coefficients} MFCCs from {spec.mel_bins} mel bins: "
                                     f"at most {spec.mel_bins}")
    return spec


def _tensor(f: _Fields) -> ScaleSpec:
    scale = f.number("scale", 1.0)
    if scale == 0:
        raise f.fail("scale", "0 would make every input the same")
    return ScaleSpec(scale=scale, offset=f.number("offset", 0.0))


_PARSERS: dict[str, Callable[[_Fields], PreprocessSpec]] = {"image": _image, "audio": _audio, "tensor": _tensor}


def parse_spec(obj: Mapping[str, Any], source: str) -> PreprocessSpec:
    """A spec from a table (TOML ``[preprocess]``, inline string, manifest); BadInput names the field."""
    if not isinstance(obj, Mapping):
        raise BadInput(f"{_where(source)}: expected a table of keys, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind is None:
        raise BadInput(f"{_where(source)} kind: missing: give image, audio or tensor")
    if kind not in _CLASSES:
        raise BadInput(f"{_where(source)} kind: {kind!r} is not one of image, audio, tensor")
    cls = _CLASSES[str(kind)]
    known = {f.name for f in fields(cls)} | {"kind"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise BadInput(f"{_where(source)} {unknown[0]}: unknown key for kind {kind} "
                       f"(known: {', '.join(sorted(known - {'kind'}))})")
    return _PARSERS[str(kind)](_Fields(obj, source))


def spec_to_dict(spec: PreprocessSpec) -> dict[str, Any]:
    """The spec as plain JSON/TOML values (``None`` fields left out), what ``manifest.json`` holds."""
    out: dict[str, Any] = {"kind": spec.kind}
    skip = {"scale", "offset"} if isinstance(spec, ImageSpec) and spec.mean is not None else set()
    for f in fields(spec):
        value = getattr(spec, f.name)
        if value is None or f.name in skip:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def spec_to_inline(spec: PreprocessSpec) -> str:
    """The spec as a ``--preprocess`` string (fields left at their defaults are left out)."""
    defaults = spec_to_dict(type(spec)(size=spec.size) if isinstance(spec, ImageSpec) else type(spec)())
    parts = []
    for key, value in spec_to_dict(spec).items():
        if key not in ("kind", "size") and defaults.get(key) == value:
            continue
        if key == "size":
            text = f"{value[0]}x{value[1]}"
        elif isinstance(value, list):
            text = ":".join(_short_number(float(v)) for v in value)
        elif isinstance(value, float):
            text = _short_number(value)
        else:
            text = str(value)
        parts.append(f"{key}={text}")
    return ",".join(parts)


def _short_number(value: float) -> str:
    """``1/255`` for 0.00392..., else the shortest repr that reads back the same float."""
    for den in (255, 127.5, 128, 256, 32768):
        for num in (1, -1, 2, -2):
            if value == num / den:
                return f"{num}/{den:g}"
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


def _inline_value(text: str) -> Any:
    """One inline value: a number (``1/255`` allowed), ``96x96`` (a size), ``a:b:c`` (a list) or a word."""
    text = text.strip()
    if ":" in text:
        return [_inline_value(t) for t in text.split(":")]
    parts = text.lower().split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        return [int(parts[0]), int(parts[1])]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text.lower() in ("none", ""):
        return None
    return text


def parse_inline(text: str, source: str = "--preprocess") -> PreprocessSpec:
    """``kind=image,size=96x96,scale=1/255``: comma-separated ``key=value``; lists as ``a:b:c``."""
    table: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInput(f"{_where(source)}: {item.strip()!r} is not key=value "
                           f"(e.g. kind=image,size=96x96,scale=1/255)")
        if key in table:
            raise BadInput(f"{_where(source)} {key}: given twice")
        parsed = _inline_value(value)
        if parsed is not None:
            table[key] = parsed
    return parse_spec(table, source)


def load_spec(arg: str) -> PreprocessSpec:
    """``--preprocess`` ARG: a TOML file with a ``[preprocess]`` table, or an inline ``key=value,...`` spec."""
    path = Path(arg)
    if "=" not in arg or path.suffix.lower() == ".toml" or path.is_file():
        from lepton_edge.tomlfile import read_toml

        doc = read_toml(path, "preprocess spec")
        table = doc.get("preprocess")
        if not isinstance(table, dict):
            raise BadInput(f"{path}: no [preprocess] table (kind = \"image\" | \"audio\" | \"tensor\", ...)")
        return parse_spec(table, str(path))
    return parse_inline(arg)


def _dims(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def check_against_input(spec: PreprocessSpec, shape: tuple[int, ...], source: str) -> None:
    """BadInput naming the field when the spec cannot produce the model's input ``shape``."""
    where = _where(source)
    if isinstance(spec, ImageSpec):
        if len(shape) != 4:
            raise BadInput(f"{where} kind: image, but the model's input {_dims(shape)} is not an image "
                           f"(batch x height x width x channels)")
        if tuple(shape[1:3]) != spec.size:
            raise BadInput(f"{where} size: {list(spec.size)}, but the model's input is {_dims(shape)} "
                           f"(size = [{shape[1]}, {shape[2]}])")
        if shape[3] != spec.channels:
            raise BadInput(f"{where} color: {spec.color} gives {spec.channels} channel(s), the model's input "
                           f"{_dims(shape)} has {shape[3]}")
    elif isinstance(spec, AudioSpec):
        if len(shape) == 4 and shape[-1] != 1:
            raise BadInput(f"{where} kind: audio gives frames x features (x 1); the model's input {_dims(shape)} "
                           f"has {shape[-1]} channels (an image?)")
        count = math.prod(shape[1:])
        if count != spec.frames * spec.width:
            field = "coefficients" if spec.features == "mfcc" else "mel_bins"
            if len(shape) >= 3 and shape[1] != spec.frames:
                field = "clip_ms"
            raise BadInput(f"{where} {field}: the spec gives {spec.frames} frames x {spec.width} features "
                           f"({spec.frames * spec.width} values), the model's input {_dims(shape)} takes {count}")
        if len(shape) >= 3 and shape[1] != spec.frames:
            raise BadInput(f"{where} clip_ms: the spec gives {spec.frames} frames, the model's input "
                           f"{_dims(shape)} has {shape[1]} along its time axis")
