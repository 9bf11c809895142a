// The scaling and quantization of a preprocessing spec (lepton_edge/preprocess, docs/PREPROCESS.md), bit
// for bit as the numpy implementation computes them in float32:
//   scale/offset:  value = x * scale[c] + offset[c]     (one rounding after each operation)
//   mean/std:      value = (x - mean[c]) / std[c]
//   quantize:      q = clamp(round_half_even(value / scale) + zero_point)   (numpy's np.round)
// plus the colour conversions of an image spec (RGB <-> BGR, RGB -> grayscale as Pillow's "L").
// Every value is a float32 operation in the order written: build with -ffp-contract=off (the Makefile
// does), else GCC fuses x * scale + offset into one FMA on an FPU that has it (Cortex-M4F, M7).
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton::preprocess {

constexpr int32_t kMaxChannels = 4;

struct ChannelNorm {
  int32_t channels;  // interleaved channels (HWC); 0: invalid
  bool mean_std;     // (x - a[c]) / b[c]; else x * a[c] + b[c]
  float a[kMaxChannels];
  float b[kMaxChannels];
};

// Per-channel values: one value (every channel) or `channels` values. channels = 0 in the result when
// the counts do not fit, or a std is 0.
ChannelNorm scale_offset(int32_t channels, const float* scale, int32_t n_scale, const float* offset,
                         int32_t n_offset);
ChannelNorm mean_std(int32_t channels, const float* mean, int32_t n_mean, const float* std, int32_t n_std);

enum class QuantType : uint8_t { kInt8, kUint8, kInt16 };

struct Quant {
  float scale;         // the input tensor's quantization scale (> 0)
  int32_t zero_point;
  QuantType type;
};

// count values (count a multiple of norm.channels), interleaved. false (nothing written) when the count
// is not a whole number of pixels or norm is invalid.
bool normalize_u8(const uint8_t* pixels, size_t count, const ChannelNorm& norm, float* out);
bool normalize_f32(const float* x, size_t count, const ChannelNorm& norm, float* out);

// out: count elements of q.type (int8_t, uint8_t or int16_t, little-endian as the tensor holds them).
// false when the scale is not positive or the zero point is outside the type.
bool quantize(const float* x, size_t count, const Quant& q, void* out);
// normalize_u8 then quantize, one element at a time (no float buffer): the same bits.
bool normalize_quantize_u8(const uint8_t* pixels, size_t count, const ChannelNorm& norm, const Quant& q,
                           void* out);

// In place, pixels RGB triples.
void swap_red_blue(uint8_t* rgb, size_t pixels);
// Pillow's RGB -> "L": (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16.
void rgb_to_gray(const uint8_t* rgb, size_t pixels, uint8_t* gray);

}  // namespace lepton::preprocess
