// The image steps of a preprocessing spec before scaling (lepton_edge/preprocess/image.py), bit for bit:
// the centre crop to the model's aspect ratio, and the resize as Pillow's Image.resize does it on 8-bit
// pixels: "bilinear" (Pillow's separable triangle filter, its support widened by the downscale factor,
// 22-bit fixed-point weights, one pass rounded to 8 bits, then the other: horizontal first, unless the
// height shrinks by more than twice what the width does, as Pillow 13 chooses) and "nearest" (Pillow's
// affine nearest neighbour). Grayscale (rgb_to_gray in scale.h, in place) comes before the
// resize, the channel swap and the scaling after it, as in the numpy pipeline.
//
// No heap: a Resizer holds its weight tables and a ring of horizontally resized rows, sized at compile
// time by LEPTON_PRE_MAX_SIDE (largest output side), LEPTON_PRE_MAX_TAPS (input pixels one output pixel
// reads: 2 * ceil(input / output) + 1 for a downscale, so 16 taps take up to 7x down) and
// LEPTON_PRE_MAX_IN_WIDTH (widest input row a vertical-first resize holds). About 28 KB with the
// defaults: make it static. The weights are computed in double precision at init(), as Pillow
// computes them (software double on a Cortex-M4: once per configuration, not per frame).
#pragma once
#include <cstddef>
#include <cstdint>

#ifndef LEPTON_PRE_MAX_SIDE
#define LEPTON_PRE_MAX_SIDE 128
#endif
#ifndef LEPTON_PRE_MAX_TAPS
#define LEPTON_PRE_MAX_TAPS 16
#endif
#ifndef LEPTON_PRE_MAX_IN_WIDTH
#define LEPTON_PRE_MAX_IN_WIDTH 640
#endif

namespace lepton::preprocess {

// 8-bit interleaved pixels: `channels` bytes per pixel, `stride` bytes from one row to the next.
struct ImageView {
  const uint8_t* data;
  int32_t height;
  int32_t width;
  int32_t channels;  // 1 to 4
  size_t stride;
};

// The largest centred region with the aspect ratio of out_h x out_w (a view into the same pixels), with the
// integer bounds of image.py's center_crop (the side rounded half to even).
ImageView center_crop(const ImageView& in, int32_t out_h, int32_t out_w);

enum class Resize : uint8_t { kNearest, kBilinear };

class Resizer;

// The spec's image steps up to the 8-bit pixels its scaling takes: the centre crop (when crop), the resize
// into out (out_h * out_w * in.channels bytes), RGB -> BGR (when bgr). For a grayscale spec, convert the
// frame first (rgb_to_gray in scale.h works in place) and pass a one-channel view. Then
// normalize_quantize_u8(out, ..., out) makes the int8/uint8 input tensor in place. false (nothing written)
// when the resizer cannot take the sizes.
bool image_pixels(const ImageView& in, int32_t out_h, int32_t out_w, bool crop, Resize method, bool bgr,
                  Resizer* resizer, uint8_t* out);

class Resizer {
 public:
  // false when a side is not positive, an output side is above LEPTON_PRE_MAX_SIDE, a bilinear
  // downscale needs more than LEPTON_PRE_MAX_TAPS taps, or a vertical-first one a row wider than
  // LEPTON_PRE_MAX_IN_WIDTH. The same configuration again costs nothing.
  bool init(int32_t in_h, int32_t in_w, int32_t out_h, int32_t out_w, Resize method);
  // in (of the init() size, channels <= 4) -> out_h * out_w * channels bytes, interleaved. false when the
  // view's size is not the one init() was given (nothing written then).
  bool run(const ImageView& in, uint8_t* out);

 private:
  struct Axis {
    int32_t in_size = 0;
    int32_t out_size = 0;
    int32_t taps = 0;  // weights per output pixel in the table
    int16_t first[LEPTON_PRE_MAX_SIDE];  // first input pixel (bilinear) or the input pixel (nearest)
    int16_t count[LEPTON_PRE_MAX_SIDE];  // input pixels read (bilinear)
    int32_t weight[LEPTON_PRE_MAX_SIDE * LEPTON_PRE_MAX_TAPS];
  };
  static bool bilinear_axis(int32_t in_size, int32_t out_size, Axis* axis);
  static void nearest_axis(int32_t in_size, int32_t out_size, Axis* axis);
  // Row y of the input, resized horizontally (or copied when the width stays), into the ring.
  const uint8_t* horizontal_row(const ImageView& in, int32_t y);
  // One horizontal pass over a row of in_size pixels.
  void horizontal(const uint8_t* src, int32_t channels, uint8_t* dst) const;
  bool run_vertical_first(const ImageView& in, uint8_t* out);

  Resize method_ = Resize::kBilinear;
  bool ready_ = false;
  bool vertical_first_ = false;
  Axis x_;
  Axis y_;
  int32_t ring_first_ = 0;  // the input row held in ring slot ring_first_ % LEPTON_PRE_MAX_TAPS ...
  int32_t ring_next_ = 0;   // ... up to (not including) this one
  uint8_t ring_[LEPTON_PRE_MAX_TAPS][LEPTON_PRE_MAX_SIDE * 4];
  uint8_t column_pass_[LEPTON_PRE_MAX_IN_WIDTH * 4];  // a vertical-first resize's row
};

}  // namespace lepton::preprocess
