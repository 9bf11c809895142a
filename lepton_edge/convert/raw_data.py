"""Raw calibration, evaluation and training data read through a preprocessing spec (``--preprocess``).

What each spec kind reads (a directory, one ``.npy`` or an ``.npz`` with key ``x``):

* image: image files of any size (JPEG, PNG, ...), ``.npy`` of 8-bit pixels, one (H, W[, C]) image or a
  batch (N, H, W, C), any size: centre crop, grayscale, resize, channel order and scale by the spec;
* audio: ``.wav`` files, ``.npy`` of samples at the spec's rate, one clip (L,) or a batch (N, L)
  (floats in [-1, 1] or 16-bit integers): the spec's features;
* tensor: ``.npy`` of the model's input shape, one sample or a batch: ``x * scale + offset``.

Every sample comes out in the model's input shape, float32. For images the pixels at the model's size
(before channel order and scaling) are kept too: the mismatch diagnosis tries other scalings on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_edge.errors import BadInput
from lepton_edge.preprocess import (
    AudioSpec,
    ImageSpec,
    PreprocessSpec,
    ScaleSpec,
    array_to_input,
    tensor_to_input,
    wav_to_input,
)
from lepton_edge.preprocess.image import finish_pixels, fit_pixels, open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
AUDIO_SUFFIXES = (".wav", ".wave")


@dataclass
class RawData:
    x: np.ndarray  # (N, *input shape[1:]) float32
    y: np.ndarray | None
    pixels: np.ndarray | None  # images: (N, H, W, C) uint8 at the model's size, RGB, before scaling


def read_raw(path: Path, spec: PreprocessSpec, sample_shape: tuple[int, ...], what: str) -> RawData:
    """Read ``path`` through ``spec``; every problem one BadInput line naming the file."""
    reader = _RawReader(spec, sample_shape, what)
    y = None
    if path.is_dir():
        reader.directory(path)
    elif path.suffix.lower() == ".npy":
        reader.array(_load_npy(path, what), str(path))
    elif path.suffix.lower() == ".npz":
        x, y = _load_npz(path, what)
        reader.array(x, str(path))
    elif path.suffix.lower() in IMAGE_SUFFIXES + AUDIO_SUFFIXES:
        reader.file(path)
    else:
        raise BadInput(f"{what} data {path}: unknown format '{path.suffix}' (use a directory, .npy or .npz)")
    if not reader.samples:
        raise BadInput(f"{what} data {path}: holds no samples")
    x = np.stack(reader.samples).astype(np.float32)
    pixels = np.stack(reader.pixels) if reader.pixels and len(reader.pixels) == len(reader.samples) else None
    return RawData(x, y, pixels)


class _RawReader:
    def __init__(self, spec: PreprocessSpec, sample_shape: tuple[int, ...], what: str) -> None:
        self.spec = spec
        self.sample_shape = sample_shape
        self.what = what
        self.samples: list[np.ndarray] = []
        self.pixels: list[np.ndarray] = []

    def _add(self, x: np.ndarray) -> None:
        if x.size != math.prod(self.sample_shape):
            shape = "x".join(map(str, x.shape[1:]))
            raise BadInput(f"the preprocessing gives {shape}, the model's input takes "
                           f"{'x'.join(map(str, self.sample_shape))}")
        self.samples.append(x.reshape(self.sample_shape))

    def _guard(self, where: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BadInput as exc:
            raise BadInput(f"{self.what} data {where}: {exc}") from None

    def _image(self, pixels: np.ndarray) -> None:
        assert isinstance(self.spec, ImageSpec)
        fitted = fit_pixels(self.spec, pixels)
        self.pixels.append(fitted)
        self._add(finish_pixels(self.spec, fitted)[0])

    def _encoded_image(self, data: bytes) -> None:
        self._image(open_image(data))

    def _wav(self, data: bytes) -> None:
        assert isinstance(self.spec, AudioSpec)
        self._add(wav_to_input(self.spec, data)[0])

    def _clip(self, samples: np.ndarray) -> None:
        assert isinstance(self.spec, AudioSpec)
        self._add(array_to_input(self.spec, samples)[0])

    def _tensor(self, values: np.ndarray) -> None:
        assert isinstance(self.spec, ScaleSpec)
        self._add(tensor_to_input(self.spec, values))

    def file(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES and isinstance(self.spec, ImageSpec):
            self._guard(str(path), self._encoded_image, _read_bytes(path, self.what))
        elif suffix in AUDIO_SUFFIXES and isinstance(self.spec, AudioSpec):
            self._guard(str(path), self._wav, _read_bytes(path, self.what))
        elif suffix == ".npy":
            self.array(_load_npy(path, self.what), str(path))

    def array(self, arr: np.ndarray, where: str) -> None:
        """One sample or a batch of raw values, as the spec's kind reads them."""
        spec = self.spec
        if isinstance(spec, ImageSpec):
            batch = arr if arr.ndim == 4 else arr[None]
            for i, pixels in enumerate(batch):
                self._guard(f"{where}[{i}]" if arr.ndim == 4 else where, self._image, pixels)
        elif isinstance(spec, AudioSpec):
            batch = arr if arr.ndim == 2 else arr.reshape(1, -1)
            for i, clip in enumerate(batch):
                self._guard(f"{where}[{i}]" if arr.ndim == 2 else where, self._clip, clip)
        else:
            batch = arr[None] if arr.shape == self.sample_shape else arr
            for i, values in enumerate(batch):
                self._guard(f"{where}[{i}]", self._tensor, values)

    def directory(self, path: Path) -> None:
        wanted = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "tensor": ()}[self.spec.kind] + (".npy",)
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in wanted)
        if not files:
            raise BadInput(f"{self.what} data {path}: no {', '.join(wanted)} files in the directory "
                           f"(the {self.spec.kind} preprocessing reads those)")
        for f in files:
            self.file(f)


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(f"{what} data {path}: cannot read: {exc.strerror or exc}") from None


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{what} data {path}: not a readable .npy file ({' '.join(str(exc).split())[:160]})") from None


def _load_npz(path: Path, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise BadInput(f"{what} data {path}: no key 'x' (keys: {', '.join(data.keys()) or 'none'})")
            return data["x"], (data["y"] if "y" in data else None)
    except (ValueError, OSError, EOFError) as exc:
        raise BadInput(f"{what} data {path}: not a readable .npz file ({' '.join(str(exc).split())[:160]})") from None
