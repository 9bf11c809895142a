// The audio front end of a preprocessing spec (lepton_edge/preprocess/audio.py, docs/PREPROCESS.md):
// the clip trimmed, normalised and zero-padded, frames, a periodic Hann window, the real FFT of TFLite Micro's signal library (signal/src/rfft.h,
// kissfft in float), the magnitude (or power) spectrum, a mel filter bank built as
// tf.signal.linear_to_mel_weight_matrix builds it, log(mel + log_offset) and, for MFCC, the DCT-II of
// tf.signal.mfccs_from_log_mel_spectrograms. MLPerf Tiny KWS: 16 kHz, 1 s clips, 30 ms windows every
// 20 ms, FFT 512, magnitude, 40 mel bins from 20 to 4000 Hz, log offset 1e-6, 10 coefficients, the
// clip divided by its largest sample: 49 frames of 10 features. Resampling is left to the caller (a
// device's microphone runs at the model's rate).
//
// Single-precision float throughout (a Cortex-M4F has the FPU for it). No heap: every table lives in the
// AudioFrontend object, sized at compile time by the LEPTON_PRE_MAX_* bounds below; init() refuses a
// configuration beyond them. An AudioFrontend is large (about 40 KB with the defaults): make it static.
#pragma once
#include <cstddef>
#include <cstdint>

#include "signal/src/complex.h"

#ifndef LEPTON_PRE_MAX_FFT
#define LEPTON_PRE_MAX_FFT 1024  // largest FFT size (a power of two)
#endif
#ifndef LEPTON_PRE_MAX_MEL
#define LEPTON_PRE_MAX_MEL 64  // most mel bins
#endif
#ifndef LEPTON_PRE_MAX_COEFFS
#define LEPTON_PRE_MAX_COEFFS 40  // most MFCC coefficients
#endif

namespace lepton::preprocess {

enum class Features : uint8_t { kLogMel, kMfcc };
// The spec's `normalize`: none, max (divide by the clip's largest sample, as MLPerf Tiny KWS's
// wav / tf.reduce_max(wav)), peak (by the largest magnitude); a clip whose divisor is 0 is left as is.
enum class Normalize : uint8_t { kNone, kMax, kPeak };

struct AudioConfig {
  int32_t sample_rate;     // Hz
  int32_t clip_samples;    // the clip is zero-padded or trimmed to this many samples; 0: taken as it comes
  int32_t window_samples;  // frame length
  int32_t stride_samples;  // frame step
  int32_t fft_size;        // a power of two, at least window_samples
  Features features;
  int32_t mel_bins;
  int32_t coefficients;    // MFCC: the first `coefficients` of the DCT (ignored for log-mel)
  float lower_hz;
  float upper_hz;
  float log_offset;        // log(mel + log_offset)
  bool power;              // |X|^2 instead of |X| before the filter bank
  Normalize normalize;     // over the trimmed clip, before the zero padding
};

// Why init() refused a configuration (kOk: it did not).
enum class ConfigError : uint8_t {
  kOk,
  kSampleRate,      // not positive
  kWindow,          // window or stride not positive, or window longer than the FFT
  kFftSize,         // not a power of two, or above LEPTON_PRE_MAX_FFT
  kMelBins,         // not positive, or above LEPTON_PRE_MAX_MEL
  kCoefficients,    // MFCC: not in [1, mel_bins] or above LEPTON_PRE_MAX_COEFFS
  kFrequencies,     // not 0 <= lower < upper <= sample_rate / 2
  kLogOffset,       // negative or not finite
  kFftState,        // the FFT state does not fit (a bound below is wrong for this compiler)
};

const char* config_error_name(ConfigError error);

class AudioFrontend {
 public:
  // Builds the window, the filter bank, the DCT table and the FFT state. No allocation.
  ConfigError init(const AudioConfig& config);

  // Features per frame: coefficients (MFCC) or mel_bins (log-mel).
  int32_t frame_features() const { return frame_features_; }
  // Frames in a clip of n samples (after padding or trimming to clip_samples when that is set), as
  // tf.signal.frame with pad_end=False counts them: 1 + (n - window) / stride, 0 when n < window.
  int32_t frame_count(size_t n) const;

  // One frame: window_samples samples in [-1, 1] -> frame_features() floats.
  void frame(const float* samples, float* out);

  // A whole clip of 16-bit PCM (sample / 32768, as a 16-bit WAV decodes): trimmed to clip_samples,
  // normalised, zero-padded to clip_samples, framed, written frame by frame to out
  // (frame_count(n) * frame_features() floats).
  // Returns the number of floats written, or 0 when out_cap is too small (nothing written then).
  size_t features_pcm16(const int16_t* pcm, size_t n, float* out, size_t out_cap);
  // The same for samples already in [-1, 1].
  size_t features(const float* samples, size_t n, float* out, size_t out_cap);

 private:
  // frame_ holds a windowed frame (zero past window_samples): spectrum, filter bank, log, DCT.
  void transform(float* out);
  template <typename Sample>
  size_t run(const Sample* samples, size_t n, float* out, size_t out_cap);

  static constexpr int32_t kMaxBins = LEPTON_PRE_MAX_FFT / 2 + 1;
  // A kissfft real FFT of N points takes about 10 N + 300 bytes (its twiddles and a scratch buffer).
  static constexpr size_t kFftStateBytes = 12 * LEPTON_PRE_MAX_FFT + 1024;

  AudioConfig config_{};
  int32_t bins_ = 0;            // fft_size / 2 + 1
  int32_t frame_features_ = 0;
  void* fft_ = nullptr;         // the FFT state in fft_state_
  float window_[LEPTON_PRE_MAX_FFT];
  float frame_[LEPTON_PRE_MAX_FFT];
  Complex<float> spectrum_[kMaxBins];
  float magnitude_[kMaxBins];
  // The filter bank, sparse: channel c weighs bins [first_[c], first_[c] + width_[c]) with
  // weights_[offset_[c] ...]. A bin falls in at most two adjacent triangles: 2 * kMaxBins weights.
  int16_t first_[LEPTON_PRE_MAX_MEL];
  int16_t width_[LEPTON_PRE_MAX_MEL];
  int16_t offset_[LEPTON_PRE_MAX_MEL];
  float weights_[2 * kMaxBins];
  float log_mel_[LEPTON_PRE_MAX_MEL];
  float dct_[LEPTON_PRE_MAX_COEFFS * LEPTON_PRE_MAX_MEL];
  alignas(16) uint8_t fft_state_[kFftStateBytes];
};

}  // namespace lepton::preprocess
