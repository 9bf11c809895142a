// Test driver for core/preprocess (tests/test_preprocess_c.py), not part of the firmware:
//   test_preprocess audio IN.wav OUT.f32 key=value...   features of a 16-bit mono PCM WAV
//       keys: clip window stride fft mel coeffs (0: log-mel) lower upper log_offset power (0|1)
//       normalize (none|max|peak);
//       window, stride and clip in samples; the WAV's rate is the sample rate
//   test_preprocess image IN.u8 OUT.f32 channels=C (scale=.. offset=.. | mean=.. std=..)
//       per-channel values as comma lists; IN holds interleaved pixels
//   test_preprocess quantize IN.f32 OUT.bin scale=S zero_point=Z dtype=int8|uint8|int16
//   test_preprocess image_quantize IN.u8 OUT.bin channels=.. (scale/offset | mean/std) qscale=.. zero_point=.. dtype=..
//   test_preprocess resize IN.u8 OUT.u8 h=.. w=.. channels=.. out_h=.. out_w=.. method=nearest|bilinear
//   test_preprocess pipeline IN.u8 OUT.bin h=.. w=.. out_h=.. out_w=.. crop=0|1 method=.. color=rgb|bgr|grayscale
//       (scale/offset | mean/std) qscale=.. zero_point=.. dtype=int8|uint8: an RGB frame to the input tensor
//   test_preprocess gray IN.u8 OUT.u8          RGB -> L (Pillow's weights)
//   test_preprocess swap IN.u8 OUT.u8          RGB <-> BGR
// Exit 0, or 2 with one line on stderr.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/preprocess/audio.h"
#include "core/preprocess/image.h"
#include "core/preprocess/scale.h"

using lepton::preprocess::AudioConfig;
using lepton::preprocess::AudioFrontend;
using lepton::preprocess::ChannelNorm;
using lepton::preprocess::ConfigError;
using lepton::preprocess::Features;
using lepton::preprocess::ImageView;
using lepton::preprocess::Resize;
using lepton::preprocess::Resizer;
using lepton::preprocess::QuantType;

namespace {

[[noreturn]] void fail(const char* what, const char* detail = "") {
  std::fprintf(stderr, "test_preprocess: %s%s\n", what, detail);
  std::exit(2);
}

std::vector<unsigned char> read_file(const char* path) {
  std::FILE* f = std::fopen(path, "rb");
  if (f == nullptr) fail("cannot open ", path);
  std::vector<unsigned char> data;
  unsigned char chunk[65536];
  size_t n;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) data.insert(data.end(), chunk, chunk + n);
  std::fclose(f);
  return data;
}

void write_file(const char* path, const void* data, size_t n) {
  std::FILE* f = std::fopen(path, "wb");
  if (f == nullptr || std::fwrite(data, 1, n, f) != n || std::fclose(f) != 0) fail("cannot write ", path);
}

const char* arg(int argc, char** argv, const char* key, const char* fallback = nullptr) {
  const size_t len = std::strlen(key);
  for (int i = 4; i < argc; ++i) {
    if (std::strncmp(argv[i], key, len) == 0 && argv[i][len] == '=') return argv[i] + len + 1;
  }
  if (fallback == nullptr) fail("missing ", key);
  return fallback;
}

double number(const char* text) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0') fail("not a number: ", text);
  return v;
}

int floats(const char* text, float* out, int cap) {
  int n = 0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s", text);
  for (char* tok = std::strtok(buf, ","); tok != nullptr; tok = std::strtok(nullptr, ",")) {
    if (n == cap) fail("too many values: ", text);
    out[n++] = static_cast<float>(number(tok));
  }
  return n;
}

uint32_t le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24); }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

// A 16-bit mono PCM WAV: its samples and rate.
std::vector<int16_t> read_wav(const std::vector<unsigned char>& d, int32_t* rate) {
  if (d.size() < 12 || std::memcmp(d.data(), "RIFF", 4) != 0 || std::memcmp(d.data() + 8, "WAVE", 4) != 0) {
    fail("not a RIFF/WAVE file");
  }
  bool have_fmt = false;
  size_t at = 12;
  while (at + 8 <= d.size()) {
    const uint32_t size = le32(d.data() + at + 4);
    const unsigned char* body = d.data() + at + 8;
    if (at + 8 + size > d.size()) fail("truncated chunk");
    if (std::memcmp(d.data() + at, "fmt ", 4) == 0) {
      if (size < 16 || le16(body) != 1 || le16(body + 2) != 1 || le16(body + 14) != 16) {
        fail("not 16-bit mono PCM");
      }
      *rate = static_cast<int32_t>(le32(body + 4));
      have_fmt = true;
    } else if (std::memcmp(d.data() + at, "data", 4) == 0) {
      if (!have_fmt) fail("data before fmt");
      std::vector<int16_t> pcm(size / 2);
      for (size_t i = 0; i < pcm.size(); ++i) pcm[i] = static_cast<int16_t>(le16(body + 2 * i));
      return pcm;
    }
    at += 8 + size + (size & 1);
  }
  fail("no data chunk");
}

int32_t int_arg(int argc, char** argv, const char* key) {
  return static_cast<int32_t>(number(arg(argc, argv, key)));
}

Resize method_arg(int argc, char** argv) {
  const char* m = arg(argc, argv, "method");
  if (std::strcmp(m, "nearest") == 0) return Resize::kNearest;
  if (std::strcmp(m, "bilinear") == 0) return Resize::kBilinear;
  fail("unknown method ", m);
}

ChannelNorm norm_args(int argc, char** argv, int32_t channels = 0) {
  ChannelNorm norm{};
  norm.channels = channels > 0 ? channels : static_cast<int32_t>(number(arg(argc, argv, "channels")));
  if (norm.channels < 1 || norm.channels > 4) fail("channels must be 1 to 4");
  const char* mean = arg(argc, argv, "mean", "");
  float a[4], b[4];
  int na, nb;
  if (*mean != '\0') {
    na = floats(mean, a, 4);
    nb = floats(arg(argc, argv, "std"), b, 4);
    norm = lepton::preprocess::mean_std(norm.channels, a, na, b, nb);
  } else {
    na = floats(arg(argc, argv, "scale"), a, 4);
    nb = floats(arg(argc, argv, "offset"), b, 4);
    norm = lepton::preprocess::scale_offset(norm.channels, a, na, b, nb);
  }
  if (norm.channels == 0) fail("bad per-channel values");
  return norm;
}

QuantType dtype_arg(const char* name) {
  if (std::strcmp(name, "int8") == 0) return QuantType::kInt8;
  if (std::strcmp(name, "uint8") == 0) return QuantType::kUint8;
  if (std::strcmp(name, "int16") == 0) return QuantType::kInt16;
  fail("unknown dtype ", name);
}

size_t width(QuantType t) { return t == QuantType::kInt16 ? 2 : 1; }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) fail("usage: test_preprocess MODE IN OUT key=value...");
  const char* mode = argv[1];
  const std::vector<unsigned char> in = read_file(argv[2]);
  if (std::strcmp(mode, "audio") == 0) {
    AudioConfig c{};
    const std::vector<int16_t> pcm = read_wav(in, &c.sample_rate);
    c.clip_samples = static_cast<int32_t>(number(arg(argc, argv, "clip", "0")));
    c.window_samples = static_cast<int32_t>(number(arg(argc, argv, "window")));
    c.stride_samples = static_cast<int32_t>(number(arg(argc, argv, "stride")));
    c.fft_size = static_cast<int32_t>(number(arg(argc, argv, "fft")));
    c.mel_bins = static_cast<int32_t>(number(arg(argc, argv, "mel")));
    c.coefficients = static_cast<int32_t>(number(arg(argc, argv, "coeffs", "0")));
    c.features = c.coefficients > 0 ? Features::kMfcc : Features::kLogMel;
    c.lower_hz = static_cast<float>(number(arg(argc, argv, "lower")));
    c.upper_hz = static_cast<float>(number(arg(argc, argv, "upper")));
    c.log_offset = static_cast<float>(number(arg(argc, argv, "log_offset")));
    c.power = number(arg(argc, argv, "power", "0")) != 0.0;
    const char* normalize = arg(argc, argv, "normalize", "none");
    c.normalize = std::strcmp(normalize, "max") == 0    ? lepton::preprocess::Normalize::kMax
                  : std::strcmp(normalize, "peak") == 0 ? lepton::preprocess::Normalize::kPeak
                                                        : lepton::preprocess::Normalize::kNone;
    static AudioFrontend frontend;  // about 40 KB: static, as on a device
    const ConfigError err = frontend.init(c);
    if (err != ConfigError::kOk) fail("bad configuration: ", lepton::preprocess::config_error_name(err));
    std::vector<float> out(static_cast<size_t>(frontend.frame_count(pcm.size()) * frontend.frame_features()));
    const size_t n = frontend.features_pcm16(pcm.data(), pcm.size(), out.data(), out.size());
    if (n != out.size()) fail("features: wrong count");
    std::printf("%d %d\n", frontend.frame_count(pcm.size()), frontend.frame_features());
    write_file(argv[3], out.data(), n * sizeof(float));
  } else if (std::strcmp(mode, "image") == 0) {
    const ChannelNorm norm = norm_args(argc, argv);
    std::vector<float> out(in.size());
    if (!lepton::preprocess::normalize_u8(in.data(), in.size(), norm, out.data())) fail("normalize_u8 refused");
    write_file(argv[3], out.data(), out.size() * sizeof(float));
  } else if (std::strcmp(mode, "quantize") == 0) {
    const QuantType t = dtype_arg(arg(argc, argv, "dtype"));
    const lepton::preprocess::Quant q{static_cast<float>(number(arg(argc, argv, "scale"))),
                                      static_cast<int32_t>(number(arg(argc, argv, "zero_point"))), t};
    const size_t n = in.size() / sizeof(float);
    std::vector<float> x(n);
    std::memcpy(x.data(), in.data(), n * sizeof(float));
    std::vector<unsigned char> out(n * width(t));
    if (!lepton::preprocess::quantize(x.data(), n, q, out.data())) fail("quantize refused");
    write_file(argv[3], out.data(), out.size());
  } else if (std::strcmp(mode, "image_quantize") == 0) {
    const ChannelNorm norm = norm_args(argc, argv);
    const QuantType t = dtype_arg(arg(argc, argv, "dtype"));
    const lepton::preprocess::Quant q{static_cast<float>(number(arg(argc, argv, "qscale"))),
                                      static_cast<int32_t>(number(arg(argc, argv, "zero_point"))), t};
    std::vector<unsigned char> out(in.size() * width(t));
    if (!lepton::preprocess::normalize_quantize_u8(in.data(), in.size(), norm, q, out.data())) {
      fail("normalize_quantize_u8 refused");
    }
    write_file(argv[3], out.data(), out.size());
  } else if (std::strcmp(mode, "resize") == 0) {
    const ImageView view{in.data(), int_arg(argc, argv, "h"), int_arg(argc, argv, "w"),
                         int_arg(argc, argv, "channels"),
                         static_cast<size_t>(int_arg(argc, argv, "w") * int_arg(argc, argv, "channels"))};
    if (in.size() != static_cast<size_t>(view.height) * view.stride) fail("input size is not h * w * channels");
    static Resizer resizer;
    const int32_t out_h = int_arg(argc, argv, "out_h"), out_w = int_arg(argc, argv, "out_w");
    if (!resizer.init(view.height, view.width, out_h, out_w, method_arg(argc, argv))) fail("resizer refused");
    std::vector<unsigned char> out(static_cast<size_t>(out_h * out_w * view.channels));
    if (!resizer.run(view, out.data())) fail("resize refused");
    write_file(argv[3], out.data(), out.size());
  } else if (std::strcmp(mode, "pipeline") == 0) {
    // An RGB frame as a device has it; grayscale converts it in place first, as image.h says.
    std::vector<unsigned char> frame(in);
    const int32_t h = int_arg(argc, argv, "h"), w = int_arg(argc, argv, "w");
    if (frame.size() != static_cast<size_t>(h * w * 3)) fail("input size is not h * w * 3");
    const char* color = arg(argc, argv, "color");
    const bool gray = std::strcmp(color, "grayscale") == 0;
    if (gray) lepton::preprocess::rgb_to_gray(frame.data(), static_cast<size_t>(h * w), frame.data());
    const int32_t channels = gray ? 1 : 3;
    const ImageView view{frame.data(), h, w, channels, static_cast<size_t>(w * channels)};
    const int32_t out_h = int_arg(argc, argv, "out_h"), out_w = int_arg(argc, argv, "out_w");
    static Resizer resizer;
    std::vector<unsigned char> out(static_cast<size_t>(out_h * out_w * channels));
    if (!lepton::preprocess::image_pixels(view, out_h, out_w, int_arg(argc, argv, "crop") != 0,
                                          method_arg(argc, argv), std::strcmp(color, "bgr") == 0, &resizer,
                                          out.data())) {
      fail("image_pixels refused");
    }
    const QuantType t = dtype_arg(arg(argc, argv, "dtype"));
    if (t == QuantType::kInt16) fail("the pipeline quantizes in place: int8 or uint8");
    const lepton::preprocess::Quant q{static_cast<float>(number(arg(argc, argv, "qscale"))),
                                      int_arg(argc, argv, "zero_point"), t};
    if (!lepton::preprocess::normalize_quantize_u8(out.data(), out.size(), norm_args(argc, argv, channels), q,
                                                   out.data())) {
      fail("normalize_quantize_u8 refused");
    }
    write_file(argv[3], out.data(), out.size());
  } else if (std::strcmp(mode, "gray") == 0) {
    std::vector<unsigned char> out(in.size() / 3);
    lepton::preprocess::rgb_to_gray(in.data(), out.size(), out.data());
    write_file(argv[3], out.data(), out.size());
  } else if (std::strcmp(mode, "swap") == 0) {
    std::vector<unsigned char> out(in);
    lepton::preprocess::swap_red_blue(out.data(), out.size() / 3);
    write_file(argv[3], out.data(), out.size());
  } else {
    fail("unknown mode ", mode);
  }
  return 0;
}
