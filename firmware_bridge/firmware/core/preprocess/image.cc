// Centre crop and Pillow's resize on 8-bit pixels (see image.h). Pillow's Resample.c, step by step:
// precompute_coeffs (double), normalize_coeffs_8bpc (22-bit fixed point), ImagingResampleHorizontal_8bpc
// then ImagingResampleVertical_8bpc (int32 sums from 1 << 21, >> 22, clipped to 0..255), the vertical pass
// first when the height shrinks by more than twice the width's shrink (Pillow 13, as image.py's resize);
// for "nearest", ImagingScaleAffine's source coordinate (scale / 2, plus scale per pixel).
#include "core/preprocess/image.h"

#include <cmath>
#include <cstring>

#include "core/preprocess/scale.h"

namespace lepton::preprocess {
namespace {

constexpr int kPrecisionBits = 22;  // Pillow: 32 - 8 - 2

inline uint8_t clip8(int32_t sum) {
  const int32_t v = sum >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

}  // namespace

ImageView center_crop(const ImageView& in, int32_t out_h, int32_t out_w) {
  ImageView v = in;
  if (out_h <= 0 || out_w <= 0 || in.height <= 0 || in.width <= 0) return v;
  const int64_t h = in.height, w = in.width;
  if (w * out_h > h * out_w) {  // too wide
    int32_t new_w = static_cast<int32_t>(std::nearbyint(static_cast<double>(h * out_w) / out_h));
    if (new_w < 1) new_w = 1;
    const int32_t left = (in.width - new_w) / 2;
    v.data = in.data + static_cast<size_t>(left) * static_cast<size_t>(in.channels);
    v.width = new_w;
  } else {
    int32_t new_h = static_cast<int32_t>(std::nearbyint(static_cast<double>(w * out_h) / out_w));
    if (new_h < 1) new_h = 1;
    const int32_t top = (in.height - new_h) / 2;
    v.data = in.data + static_cast<size_t>(top) * in.stride;
    v.height = new_h;
  }
  return v;
}

bool Resizer::bilinear_axis(int32_t in_size, int32_t out_size, Axis* axis) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale > 1.0 ? scale : 1.0;
  const double support = 1.0 * filterscale;  // the triangle filter's support is 1
  const int32_t taps = static_cast<int32_t>(std::ceil(support)) * 2 + 1;
  if (taps > LEPTON_PRE_MAX_TAPS) return false;
  axis->taps = taps;
  const double ss = 1.0 / filterscale;
  for (int32_t xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int32_t xmin = static_cast<int32_t>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int32_t xmax = static_cast<int32_t>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    if (xmax > taps) return false;  // cannot happen: xmax <= 2 * ceil(support) + 1
    double k[LEPTON_PRE_MAX_TAPS];
    double total = 0.0;
    for (int32_t x = 0; x < xmax; ++x) {
      double t = (x + xmin - center + 0.5) * ss;
      if (t < 0.0) t = -t;
      k[x] = t < 1.0 ? 1.0 - t : 0.0;
      total += k[x];
    }
    int32_t* fixed = axis->weight + xx * taps;
    for (int32_t x = 0; x < taps; ++x) {
      if (x >= xmax) {
        fixed[x] = 0;
        continue;
      }
      const double kx = total != 0.0 ? k[x] / total : k[x];
      fixed[x] = kx < 0 ? static_cast<int32_t>(-0.5 + kx * (1 << kPrecisionBits))
                        : static_cast<int32_t>(0.5 + kx * (1 << kPrecisionBits));
    }
    axis->first[xx] = static_cast<int16_t>(xmin);
    axis->count[xx] = static_cast<int16_t>(xmax);
  }
  return true;
}

void Resizer::nearest_axis(int32_t in_size, int32_t out_size, Axis* axis) {
  const double scale = static_cast<double>(in_size) / out_size;
  double coord = scale * 0.5;
  axis->taps = 1;
  for (int32_t i = 0; i < out_size; ++i) {
    int32_t index = coord >= 0 ? static_cast<int32_t>(coord) : 0;
    if (index > in_size - 1) index = in_size - 1;
    axis->first[i] = static_cast<int16_t>(index);
    axis->count[i] = 1;
    coord += scale;
  }
}

bool Resizer::init(int32_t in_h, int32_t in_w, int32_t out_h, int32_t out_w, Resize method) {
  if (ready_ && method == method_ && in_h == y_.in_size && in_w == x_.in_size && out_h == y_.out_size &&
      out_w == x_.out_size) {
    return true;
  }
  ready_ = false;
  if (in_h <= 0 || in_w <= 0 || out_h <= 0 || out_w <= 0 || out_h > LEPTON_PRE_MAX_SIDE ||
      out_w > LEPTON_PRE_MAX_SIDE || in_h > INT16_MAX || in_w > INT16_MAX) {
    return false;
  }
  method_ = method;
  x_.in_size = in_w;
  x_.out_size = out_w;
  y_.in_size = in_h;
  y_.out_size = out_h;
  if (method == Resize::kNearest) {
    nearest_axis(in_w, out_w, &x_);
    nearest_axis(in_h, out_h, &y_);
  } else if (!bilinear_axis(in_w, out_w, &x_) || !bilinear_axis(in_h, out_h, &y_)) {
    return false;
  }
  vertical_first_ = method == Resize::kBilinear && out_h < in_h && in_h - out_h > 2 * (in_w - out_w);
  if (vertical_first_ && in_w > LEPTON_PRE_MAX_IN_WIDTH) return false;
  ready_ = true;
  return true;
}

const uint8_t* Resizer::horizontal_row(const ImageView& in, int32_t y) {
  const uint8_t* src = in.data + static_cast<size_t>(y) * in.stride;
  if (x_.in_size == x_.out_size) return src;  // no horizontal pass
  if (y >= ring_first_ && y < ring_next_) return ring_[y % LEPTON_PRE_MAX_TAPS];
  if (y < ring_first_ || y > ring_next_) {  // not the next row: start the ring again there
    ring_first_ = y;
    ring_next_ = y;
  }
  uint8_t* dst = ring_[y % LEPTON_PRE_MAX_TAPS];
  horizontal(src, in.channels, dst);
  ring_next_ = y + 1;
  if (ring_next_ - ring_first_ > LEPTON_PRE_MAX_TAPS) ring_first_ = ring_next_ - LEPTON_PRE_MAX_TAPS;
  return dst;
}

void Resizer::horizontal(const uint8_t* src, int32_t channels, uint8_t* dst) const {
  for (int32_t xx = 0; xx < x_.out_size; ++xx) {
    const uint8_t* px = src + static_cast<size_t>(x_.first[xx]) * static_cast<size_t>(channels);
    const int32_t* k = x_.weight + xx * x_.taps;
    for (int32_t c = 0; c < channels; ++c) {
      int32_t sum = 1 << (kPrecisionBits - 1);
      for (int32_t j = 0; j < x_.count[xx]; ++j) {
        sum += px[j * channels + c] * k[j];
      }
      dst[xx * channels + c] = clip8(sum);
    }
  }
}

bool Resizer::run_vertical_first(const ImageView& in, uint8_t* out) {
  const int32_t channels = in.channels;
  const size_t in_row = static_cast<size_t>(x_.in_size) * static_cast<size_t>(channels);
  const size_t out_row = static_cast<size_t>(x_.out_size) * static_cast<size_t>(channels);
  for (int32_t yy = 0; yy < y_.out_size; ++yy) {
    const uint8_t* src = in.data + static_cast<size_t>(y_.first[yy]) * in.stride;
    const int32_t* k = y_.weight + yy * y_.taps;
    for (size_t i = 0; i < in_row; ++i) {
      int32_t sum = 1 << (kPrecisionBits - 1);
      for (int32_t j = 0; j < y_.count[yy]; ++j) {
        sum += src[static_cast<size_t>(j) * in.stride + i] * k[j];
      }
      column_pass_[i] = clip8(sum);
    }
    uint8_t* dst = out + static_cast<size_t>(yy) * out_row;
    if (x_.in_size == x_.out_size) {
      std::memcpy(dst, column_pass_, out_row);
    } else {
      horizontal(column_pass_, channels, dst);
    }
  }
  return true;
}

bool Resizer::run(const ImageView& in, uint8_t* out) {
  if (!ready_ || in.height != y_.in_size || in.width != x_.in_size || in.channels < 1 || in.channels > 4) {
    return false;
  }
  const int32_t channels = in.channels;
  const size_t row_bytes = static_cast<size_t>(x_.out_size) * static_cast<size_t>(channels);
  if (method_ == Resize::kNearest) {
    for (int32_t yy = 0; yy < y_.out_size; ++yy) {
      const uint8_t* src = in.data + static_cast<size_t>(y_.first[yy]) * in.stride;
      uint8_t* dst = out + static_cast<size_t>(yy) * row_bytes;
      for (int32_t xx = 0; xx < x_.out_size; ++xx) {
        std::memcpy(dst + xx * channels, src + x_.first[xx] * channels, static_cast<size_t>(channels));
      }
    }
    return true;
  }
  if (vertical_first_) return run_vertical_first(in, out);
  ring_first_ = 0;
  ring_next_ = 0;
  for (int32_t yy = 0; yy < y_.out_size; ++yy) {
    uint8_t* dst = out + static_cast<size_t>(yy) * row_bytes;
    if (y_.in_size == y_.out_size) {  // no vertical pass
      std::memcpy(dst, horizontal_row(in, yy), row_bytes);
      continue;
    }
    const int32_t first = y_.first[yy];
    const int32_t count = y_.count[yy];
    const int32_t* k = y_.weight + yy * y_.taps;
    const uint8_t* rows[LEPTON_PRE_MAX_TAPS];
    for (int32_t j = 0; j < count; ++j) {
      rows[j] = horizontal_row(in, first + j);
    }
    for (size_t i = 0; i < row_bytes; ++i) {
      int32_t sum = 1 << (kPrecisionBits - 1);
      for (int32_t j = 0; j < count; ++j) {
        sum += rows[j][i] * k[j];
      }
      dst[i] = clip8(sum);
    }
  }
  return true;
}

bool image_pixels(const ImageView& in, int32_t out_h, int32_t out_w, bool crop, Resize method, bool bgr,
                  Resizer* resizer, uint8_t* out) {
  const ImageView view = crop ? center_crop(in, out_h, out_w) : in;
  if (!resizer->init(view.height, view.width, out_h, out_w, method) || !resizer->run(view, out)) return false;
  if (bgr && view.channels == 3) {
    swap_red_blue(out, static_cast<size_t>(out_h) * static_cast<size_t>(out_w));
  }
  return true;
}

}  // namespace lepton::preprocess
