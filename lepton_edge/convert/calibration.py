"""Calibration, evaluation and training data: read, check against the model's inputs, lay out.

Accepted: ``.npy`` (the samples), ``.npz`` (key ``x``, or one key per input name; optional ``y``), or a
directory of ``.npy`` files or images. With a preprocessing spec (``--preprocess``) the data are raw:
images of any size, WAV files, unscaled arrays (:mod:`lepton_edge.convert.raw_data`). Every array is
checked against the model's input, shape and dtype, and a mismatch is one :class:`BadInput` line that
shows both. For ONNX sources whose NCHW input became NHWC, data in either layout is accepted (NCHW is
transposed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lepton_edge.convert.load import InputInfo
from lepton_edge.errors import BadInput

if TYPE_CHECKING:
    from lepton_edge.preprocess import PreprocessSpec

SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: TensorFlow's advice is 100 to 500 representative samples; more only slows conversion.
MAX_CALIBRATION_SAMPLES = 500


@dataclass
class Dataset:
    """Samples for each model input (``xs[i]`` has shape ``(N, *input.shape[1:])``), optional labels."""

    xs: list[np.ndarray]
    y: np.ndarray | None
    origin: str
    synthetic: bool = False
    notes: list[str] = field(default_factory=list)
    #: image inputs: 8-bit pixels at the model's size, RGB, before scaling (the mismatch diagnosis uses them)
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.xs[0])

    def head(self, n: int) -> Dataset:
        return Dataset([x[:n] for x in self.xs], None if self.y is None else self.y[:n], self.origin,
                       self.synthetic, list(self.notes), None if self.pixels is None else self.pixels[:n])

    def sample(self, i: int) -> list[np.ndarray]:
        """Sample ``i`` as a batch of one per input."""
        return [x[i:i + 1] for x in self.xs]


def load_dataset(spec: str, inputs: Sequence[InputInfo], *, what: str, source_layout: str = "",
                 layout: str = "", need_labels: bool = False, preprocess: PreprocessSpec | None = None) -> Dataset:
    """Read ``spec`` for ``inputs``; ``what`` names the option in messages (calibration, eval, train).
    With ``preprocess`` the data are raw and go through that spec first."""
    path = Path(spec)
    if not path.exists():
        raise BadInput(f"{what} data {path}: no such file or directory")
    pixels = None
    if preprocess is not None:
        from lepton_edge.convert.raw_data import read_raw

        if len(inputs) != 1:
            raise BadInput(f"--preprocess: the model has {len(inputs)} inputs; a spec describes one")
        raw = read_raw(path, preprocess, tuple(inputs[0].shape[1:]), what)
        arrays, y, pixels = [raw.x], raw.y, raw.pixels
    elif path.is_dir():
        arrays, y = _read_directory(path, inputs, what), None
    elif path.suffix.lower() == ".npy":
        arrays, y = [_np_load(path, what)], None
    elif path.suffix.lower() == ".npz":
        arrays, y = _read_npz(path, inputs, what)
    else:
        raise BadInput(f"{what} data {path}: unknown format '{path.suffix}' (use .npy, .npz or a directory)")
    if len(arrays) != len(inputs):
        raise BadInput(f"{what} data {path}: the model has {len(inputs)} inputs "
                       f"({', '.join(i.name for i in inputs)}); give an .npz with one key per input name")
    transposed = source_layout != layout
    xs = [_fit_array(a, info, f"{what} data {path}", transposed) for a, info in zip(arrays, inputs, strict=False)]
    n = len(xs[0])
    if any(len(x) != n for x in xs):
        raise BadInput(f"{what} data {path}: inputs have different sample counts {[len(x) for x in xs]}")
    if n == 0:
        raise BadInput(f"{what} data {path}: holds no samples")
    notes = []
    if pixels is None and preprocess is None:
        pixels = _pixels_as_given(xs[0])
    if preprocess is None and any(np.issubdtype(a.dtype, np.integer) and np.issubdtype(np.dtype(i.dtype), np.floating)
           for a, i in zip(arrays, inputs, strict=False)):
        notes.append(f"{what} data cast from {arrays[0].dtype} to float32 as is (no rescaling)")
    if y is not None:
        y = _check_labels(y, n, f"{what} data {path}")
    elif need_labels:
        raise BadInput(f"{what} data {path}: needs labels: an .npz with keys 'x' and 'y'")
    origin = f"{path.name} ({n} samples{', through --preprocess' if preprocess is not None else ''})"
    return Dataset(xs, y, origin, notes=notes, pixels=pixels)


def _pixels_as_given(x: np.ndarray) -> np.ndarray | None:
    """Data that look like 8-bit images (N, H, W, 1|3 whole numbers 0..255): the pixels, for the diagnosis."""
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype.kind not in "fiu" or x.size == 0:
        return None
    if x.min() < 0 or x.max() > 255 or x.max() <= 1 or not np.all(x == np.round(x)):
        return None
    return x.astype(np.uint8)


def synthetic_dataset(inputs: Sequence[InputInfo], count: int = 64, seed: int = 0) -> Dataset:
    """Seeded standard-normal inputs: a stand-in that says nothing about real value ranges."""
    rng = np.random.default_rng(seed)
    xs = [_random_like(rng, info, count) for info in inputs]
    return Dataset(xs, None, f"synthetic (seeded random, {count} samples)", synthetic=True)


def _random_like(rng: np.random.Generator, info: InputInfo, count: int) -> np.ndarray:
    shape = (count, *info.shape[1:])
    dtype = np.dtype(info.dtype)
    if np.issubdtype(dtype, np.integer):
        hi = min(int(np.iinfo(dtype).max), 127)
        lo = max(int(np.iinfo(dtype).min), -128)
        return rng.integers(lo, hi + 1, shape).astype(dtype)
    return rng.standard_normal(shape).astype(np.float32)


def _np_load(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{what} data {path}: not a readable .npy file ({' '.join(str(exc).split())[:160]})") from None


def _read_npz(path: Path, inputs: Sequence[InputInfo], what: str) -> tuple[list[np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if len(inputs) > 1 and all(i.name in keys for i in inputs):
                arrays = [data[i.name] for i in inputs]
            elif "x" in keys:
                arrays = [data["x"]]
            else:
                raise BadInput(f"{what} data {path}: no key 'x' (keys: {', '.join(keys) or 'none'})")
            y = data["y"] if "y" in keys else None
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{what} data {path}: not a readable .npz file ({' '.join(str(exc).split())[:160]})") from None
    return arrays, y


def _read_directory(path: Path, inputs: Sequence[InputInfo], what: str) -> list[np.ndarray]:
    if len(inputs) != 1:
        raise BadInput(f"{what} data {path}: a directory feeds single-input models only; use an .npz")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    npys = [p for p in files if p.suffix.lower() == ".npy"]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not npys and not images:
        raise BadInput(f"{what} data {path}: no .npy files or images ({', '.join(IMAGE_SUFFIXES)}) in the directory")
    sample_shape = inputs[0].shape[1:]
    parts = []
    for p in npys:
        a = _np_load(p, what)
        parts.append(a[None] if a.shape == tuple(sample_shape) else a)
    if images:
        parts.append(np.stack([_read_image(p, sample_shape, what) for p in images]))
    try:
        return [np.concatenate(parts)]
    except ValueError:
        shapes = sorted({tuple(p.shape[1:]) for p in parts})
        raise BadInput(f"{what} data {path}: files of different shapes {shapes}; "
                       f"the model's input '{inputs[0].name}' takes {list(inputs[0].shape)}") from None


def _read_image(path: Path, sample_shape: Sequence[int], what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    channels = sample_shape[-1] if len(sample_shape) == 3 else None
    modes: dict[int | None, str] = {1: "L", 3: "RGB", 4: "RGBA"}
    mode = modes.get(channels)
    if mode is None:
        raise BadInput(f"{what} data {path}: images feed inputs of shape (N, H, W, 1|3|4), "
                       f"not {['N', *sample_shape]}")
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert(mode), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as exc:
        raise BadInput(f"{what} data {path}: not a readable image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape != tuple(sample_shape):
        h, w = sample_shape[0], sample_shape[1]
        raise BadInput(f"{what} data {path}: image is {list(arr.shape)} (H, W, C) but the model's input takes "
                       f"{list(sample_shape)}; give --preprocess kind=image,size={h}x{w},... (with the scale the "
                       f"model was trained with) to resize them, or resize the images first")
    return arr


def _fit_array(a: np.ndarray, info: InputInfo, where: str, transposed: bool) -> np.ndarray:
    """``a`` as ``(N, *info.shape[1:])`` of the input's dtype, or :class:`BadInput` showing both."""
    sample = tuple(info.shape[1:])
    want = np.dtype(info.dtype)
    expected = f"the model's input '{info.name}' {list(info.shape)} {want.name}"
    if a.dtype.kind not in "fiu" or (np.issubdtype(want, np.integer) and a.dtype.kind == "f"):
        raise BadInput(f"{where}: dtype {a.dtype} does not suit {expected}")
    if a.shape == sample:
        a = a[None]
    if tuple(a.shape[1:]) != sample:
        rank = len(sample)
        source_sample = (sample[-1], *sample[:-1]) if rank >= 2 else sample
        if transposed and rank >= 2 and tuple(a.shape[1:]) == source_sample:
            a = np.transpose(a, (0, *range(2, rank + 1), 1))
        else:
            hint = f" or (N, {', '.join(map(str, source_sample))}) as the source takes it" if transposed else ""
            raise BadInput(f"{where}: shape {list(a.shape)} {a.dtype} does not match {expected} "
                           f"(give (N, {', '.join(map(str, sample))}){hint})")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise BadInput(f"{where}: holds NaN or infinite values")
    return np.ascontiguousarray(a.astype(np.float32 if want.kind == "f" else want, copy=False))


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.dtype.kind not in "fiub":
        raise BadInput(f"{where}: labels 'y' of dtype {y.dtype} are not numbers")
    if len(y) != n:
        raise BadInput(f"{where}: {len(y)} labels 'y' for {n} samples 'x'")
    return y
