"""Images -> the model's input: decode (Pillow), centre crop, grayscale, resize, channel order, scale.

The resize is Pillow's own arithmetic in numpy, bit for bit on 8-bit pixels: ``bilinear`` is Pillow's
separable triangle filter (support widened by the downscale factor, 22-bit fixed-point weights,
horizontal pass rounded to 8 bits, then vertical -- vertical first when the height shrinks by more than
twice as many pixels as the width, as Pillow 13 does; older Pillow always went horizontal first and can
differ by one level in some pixels of such resizes), ``nearest`` is Pillow's affine nearest-neighbour
(source index ``floor((i + 0.5) * in / out)``, accumulated as Pillow does). Grayscale is Pillow's
``convert("L")`` (ITU-R 601-2 luma in 16-bit fixed point). So an array given here and a photo given to
Pillow end the same, and a C front end can follow the same steps.

Pillow is imported only to decode JPEG/PNG bytes; without it those raise one BadInput line.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from lepton_edge.errors import BadInput, one_line
from lepton_edge.preprocess.spec import ImageSpec

if TYPE_CHECKING:
    from PIL import Image as PILImage

_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise BadInput("decoding JPEG/PNG needs Pillow: pip install 'lepton-edge[device]' (or pip install Pillow)") \
            from None
    return Image


def open_image(data: bytes) -> np.ndarray:
    """JPEG/PNG/... bytes -> uint8 RGB pixels (H, W, 3); BadInput (one line) for anything Pillow cannot read."""
    image = _pillow()
    try:
        with image.open(io.BytesIO(data)) as im:
            im.load()
            return pil_to_rgb(im)
    except image.UnidentifiedImageError:
        raise BadInput(f"not a readable image ({len(data)} bytes): not a format Pillow recognises") from None
    except image.DecompressionBombError as exc:
        raise BadInput(f"image refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadInput(f"not a readable image ({len(data)} bytes): {one_line(exc)}") from None


def pil_to_rgb(im: PILImage.Image) -> np.ndarray:
    """A Pillow image in any mode -> uint8 RGB (H, W, 3) (alpha dropped, palettes expanded)."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 (H, W), as Pillow's ``convert("L")``: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def center_crop(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The largest centred region with the aspect ratio of ``size`` (height, width); integer pixel bounds."""
    h, w = pixels.shape[:2]
    th, tw = size
    if w * th > h * tw:  # too wide
        new_w = max(1, round(h * tw / th))
        left = (w - new_w) // 2
        return pixels[:, left:left + new_w]
    new_h = max(1, round(w * th / tw))
    top = (h - new_h) // 2
    return pixels[top:top + new_h]


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for the triangle filter: an int64 (out, in) matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ks = []
        total = 0.0  # added in order, as Pillow does (not sum(): Python 3.12 compensates)
        for x in range(xmax):
            t = abs(((x + xmin) - center + 0.5) * (1.0 / filterscale))
            ks.append(1.0 - t if t < 1.0 else 0.0)
            total += ks[-1]
        for x, k in enumerate(ks):
            k = k / total if total != 0.0 else k
            fixed = int(-0.5 + k * (1 << _PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << _PRECISION_BITS))
            weights[xx, xmin + x] = fixed
    return weights


def _apply_8bpc(pixels: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """One Pillow resampling pass along ``axis``: rounded fixed-point sums, clipped to 0..255."""
    moved = np.moveaxis(pixels.astype(np.int64), axis, -1)
    sums = moved @ weights.T + (1 << (_PRECISION_BITS - 1))
    out = np.clip(sums >> _PRECISION_BITS, 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, axis)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's ImagingScaleAffine: the source coordinate starts at scale / 2 and adds scale per pixel."""
    scale = in_size / out_size
    coord = scale * 0.5
    index = np.empty(out_size, dtype=np.int64)
    for i in range(out_size):
        index[i] = min(int(coord), in_size - 1) if coord >= 0 else 0
        coord += scale
    return index


def resize(pixels: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> ``size`` (height, width), as Pillow's ``Image.resize`` with that filter."""
    h, w = pixels.shape[:2]
    th, tw = size
    if (h, w) == (th, tw):
        return pixels
    if method == "nearest":
        return pixels[_nearest_index(h, th)][:, _nearest_index(w, tw)]
    if method != "bilinear":
        raise BadInput(f"preprocess resize: {method!r} is not one of nearest, bilinear")
    out = pixels
    if th < h and h - th > 2 * (w - tw):  # Pillow 13: height shrinks much more than width: vertical pass first
        out = _apply_8bpc(out, _bilinear_weights(h, th), axis=0)
        return out if w == tw else _apply_8bpc(out, _bilinear_weights(w, tw), axis=1)
    if w != tw:
        out = _apply_8bpc(out, _bilinear_weights(w, tw), axis=1)
    if h != th:
        out = _apply_8bpc(out, _bilinear_weights(h, th), axis=0)
    return out


def _as_pixels(pixels: np.ndarray) -> np.ndarray:
    """Any array of 8-bit pixel values -> uint8 (H, W, C); BadInput for what is not one."""
    arr = np.asarray(pixels)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.size == 0:
        raise BadInput(f"an image is height x width x channels (1, 3 or 4), got shape {list(np.shape(pixels))}")
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)) \
                or arr.min() < 0 or arr.max() > 255:
            raise BadInput(f"image pixels must be whole numbers 0..255 (8-bit), got {arr.dtype} values "
                           f"in [{arr.min():g}, {arr.max():g}]")
        arr = arr.astype(np.uint8)
    return arr[:, :, :3] if arr.shape[2] == 4 else arr


def scale_pixels(spec: ImageSpec, pixels: np.ndarray) -> np.ndarray:
    """uint8/float pixels at the model's size -> float32 (1, H, W, C) by the spec's scale/offset or mean/std."""
    x = np.asarray(pixels, dtype=np.float32)
    if spec.mean is not None and spec.std is not None:
        out = (x - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    else:
        out = x * np.float32(spec.scale) + np.float32(spec.offset)
    return out.astype(np.float32, copy=False)[None]


def fit_pixels(spec: ImageSpec, pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels of any size -> uint8 (H, W, C) at the spec's size: centre crop, grayscale, resize
    (RGB order still; :func:`finish_pixels` applies the channel order and the scaling)."""
    arr = _as_pixels(pixels)
    if spec.crop == "center":
        arr = center_crop(arr, spec.size)
    if spec.color == "grayscale":
        arr = arr if arr.shape[2] == 1 else to_grayscale(arr)[:, :, None]
    elif arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return resize(arr, spec.size, spec.resize)


def finish_pixels(spec: ImageSpec, pixels: np.ndarray) -> np.ndarray:
    """Pixels at the model's size, RGB -> float32 (1, H, W, C): channel order, then scale/offset or mean/std."""
    return scale_pixels(spec, pixels[:, :, ::-1] if spec.color == "bgr" else pixels)


def pixels_to_input(spec: ImageSpec, pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels of any size (H, W), (H, W, 1|3|4), RGB -> float32 (1, H, W, C) for the model."""
    return finish_pixels(spec, fit_pixels(spec, pixels))


def image_to_input(spec: ImageSpec, data: bytes | PILImage.Image) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) or a Pillow image -> float32 (1, H, W, C) for the model."""
    pixels = open_image(data) if isinstance(data, (bytes, bytearray, memoryview)) else pil_to_rgb(data)
    return pixels_to_input(spec, pixels)
