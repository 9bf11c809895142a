// Scaling, quantization and colour conversion of a preprocessing spec (see scale.h).
#include "core/preprocess/scale.h"

#include <cmath>

namespace lepton::preprocess {
namespace {

bool fill(int32_t channels, const float* values, int32_t n, float* out) {
  if (n != 1 && n != channels) return false;
  for (int32_t c = 0; c < channels; ++c) {
    out[c] = values[n == 1 ? 0 : c];
  }
  return true;
}

inline float apply(const ChannelNorm& norm, int32_t c, float x) {
  return norm.mean_std ? (x - norm.a[c]) / norm.b[c] : x * norm.a[c] + norm.b[c];
}

struct Range {
  int32_t lo;
  int32_t hi;
};

Range range_of(QuantType t) {
  switch (t) {
    case QuantType::kInt8: return {-128, 127};
    case QuantType::kUint8: return {0, 255};
    case QuantType::kInt16: return {-32768, 32767};
  }
  return {0, 0};
}

bool valid(const Quant& q) {
  const Range r = range_of(q.type);
  return q.scale > 0.0f && std::isfinite(q.scale) && q.zero_point >= r.lo && q.zero_point <= r.hi;
}

// round half to even (np.round), in float as numpy rounds a float32 array; NaN -> zero point.
inline int32_t quantize_one(float x, const Quant& q, Range r) {
  const float scaled = std::nearbyint(x / q.scale);
  float v = scaled + static_cast<float>(q.zero_point);
  if (!(v >= static_cast<float>(r.lo))) v = std::isnan(v) ? static_cast<float>(q.zero_point) : r.lo;
  if (v > static_cast<float>(r.hi)) v = static_cast<float>(r.hi);
  return static_cast<int32_t>(v);
}

inline void store(void* out, size_t i, QuantType t, int32_t v) {
  switch (t) {
    case QuantType::kInt8: static_cast<int8_t*>(out)[i] = static_cast<int8_t>(v); break;
    case QuantType::kUint8: static_cast<uint8_t*>(out)[i] = static_cast<uint8_t>(v); break;
    case QuantType::kInt16: {
      const uint16_t u = static_cast<uint16_t>(static_cast<int16_t>(v));
      static_cast<uint8_t*>(out)[2 * i] = static_cast<uint8_t>(u & 0xFF);
      static_cast<uint8_t*>(out)[2 * i + 1] = static_cast<uint8_t>(u >> 8);
      break;
    }
  }
}

}  // namespace

ChannelNorm scale_offset(int32_t channels, const float* scale, int32_t n_scale, const float* offset,
                         int32_t n_offset) {
  ChannelNorm norm{};
  if (channels < 1 || channels > kMaxChannels || !fill(channels, scale, n_scale, norm.a) ||
      !fill(channels, offset, n_offset, norm.b)) {
    return ChannelNorm{};
  }
  norm.channels = channels;
  norm.mean_std = false;
  return norm;
}

ChannelNorm mean_std(int32_t channels, const float* mean, int32_t n_mean, const float* std, int32_t n_std) {
  ChannelNorm norm{};
  if (channels < 1 || channels > kMaxChannels || !fill(channels, mean, n_mean, norm.a) ||
      !fill(channels, std, n_std, norm.b)) {
    return ChannelNorm{};
  }
  for (int32_t c = 0; c < channels; ++c) {
    if (norm.b[c] == 0.0f) return ChannelNorm{};
  }
  norm.channels = channels;
  norm.mean_std = true;
  return norm;
}

bool normalize_u8(const uint8_t* pixels, size_t count, const ChannelNorm& norm, float* out) {
  if (norm.channels < 1 || count % static_cast<size_t>(norm.channels) != 0) return false;
  const size_t channels = static_cast<size_t>(norm.channels);
  for (size_t i = 0; i < count; ++i) {
    out[i] = apply(norm, static_cast<int32_t>(i % channels), static_cast<float>(pixels[i]));
  }
  return true;
}

bool normalize_f32(const float* x, size_t count, const ChannelNorm& norm, float* out) {
  if (norm.channels < 1 || count % static_cast<size_t>(norm.channels) != 0) return false;
  const size_t channels = static_cast<size_t>(norm.channels);
  for (size_t i = 0; i < count; ++i) {
    out[i] = apply(norm, static_cast<int32_t>(i % channels), x[i]);
  }
  return true;
}

bool quantize(const float* x, size_t count, const Quant& q, void* out) {
  if (!valid(q)) return false;
  const Range r = range_of(q.type);
  for (size_t i = 0; i < count; ++i) {
    store(out, i, q.type, quantize_one(x[i], q, r));
  }
  return true;
}

bool normalize_quantize_u8(const uint8_t* pixels, size_t count, const ChannelNorm& norm, const Quant& q,
                           void* out) {
  if (!valid(q) || norm.channels < 1 || count % static_cast<size_t>(norm.channels) != 0) return false;
  const Range r = range_of(q.type);
  const size_t channels = static_cast<size_t>(norm.channels);
  for (size_t i = 0; i < count; ++i) {
    const float v = apply(norm, static_cast<int32_t>(i % channels), static_cast<float>(pixels[i]));
    store(out, i, q.type, quantize_one(v, q, r));
  }
  return true;
}

void swap_red_blue(uint8_t* rgb, size_t pixels) {
  for (size_t i = 0; i < pixels; ++i) {
    const uint8_t r = rgb[3 * i];
    rgb[3 * i] = rgb[3 * i + 2];
    rgb[3 * i + 2] = r;
  }
}

void rgb_to_gray(const uint8_t* rgb, size_t pixels, uint8_t* gray) {
  for (size_t i = 0; i < pixels; ++i) {
    const uint32_t v = rgb[3 * i] * 19595u + rgb[3 * i + 1] * 38470u + rgb[3 * i + 2] * 7471u + 0x8000u;
    gray[i] = static_cast<uint8_t>(v >> 16);
  }
}

}  // namespace lepton::preprocess
