// The audio front end (see audio.h). Tables are computed as TensorFlow computes them in float32:
// tf.signal.hann_window(periodic=True), tf.signal.linear_to_mel_weight_matrix (HTK mel scale, the DC bin
// left out), the DCT-II of tf.signal.mfccs_from_log_mel_spectrograms (scaled by 1 / sqrt(2 * mel_bins)).
#include "core/preprocess/audio.h"

#include <cmath>
#include <cstring>

#include "signal/src/rfft.h"

namespace lepton::preprocess {
namespace {

constexpr float kTwoPi = 6.28318530717958647692f;
constexpr double kPi = 3.14159265358979323846;

bool power_of_two(int32_t n) { return n > 0 && (n & (n - 1)) == 0; }

float hertz_to_mel(float hz) { return 1127.0f * logf(1.0f + hz / 700.0f); }

// tf.linspace in float32: start + i * step, the last point exactly stop.
float linspace(float start, float stop, int32_t count, int32_t i) {
  if (i == count - 1) {
    return stop;
  }
  const float step = (stop - start) / static_cast<float>(count - 1);
  return start + static_cast<float>(i) * step;
}

}  // namespace

const char* config_error_name(ConfigError error) {
  switch (error) {
    case ConfigError::kOk: return "ok";
    case ConfigError::kSampleRate: return "sample_rate";
    case ConfigError::kWindow: return "window";
    case ConfigError::kFftSize: return "fft_size";
    case ConfigError::kMelBins: return "mel_bins";
    case ConfigError::kCoefficients: return "coefficients";
    case ConfigError::kFrequencies: return "lower_hz/upper_hz";
    case ConfigError::kLogOffset: return "log_offset";
    case ConfigError::kFftState: return "fft_state";
  }
  return "?";
}

ConfigError AudioFrontend::init(const AudioConfig& c) {
  fft_ = nullptr;
  if (c.sample_rate <= 0) return ConfigError::kSampleRate;
  if (!power_of_two(c.fft_size) || c.fft_size > LEPTON_PRE_MAX_FFT || c.fft_size < 4) {
    return ConfigError::kFftSize;
  }
  if (c.window_samples <= 0 || c.stride_samples <= 0 || c.window_samples > c.fft_size || c.clip_samples < 0) {
    return ConfigError::kWindow;
  }
  if (c.mel_bins <= 0 || c.mel_bins > LEPTON_PRE_MAX_MEL) return ConfigError::kMelBins;
  if (c.features == Features::kMfcc &&
      (c.coefficients <= 0 || c.coefficients > c.mel_bins || c.coefficients > LEPTON_PRE_MAX_COEFFS)) {
    return ConfigError::kCoefficients;
  }
  const float nyquist = static_cast<float>(c.sample_rate) / 2.0f;
  if (!(c.lower_hz >= 0.0f) || !(c.lower_hz < c.upper_hz) || !(c.upper_hz <= nyquist)) {
    return ConfigError::kFrequencies;
  }
  if (!(c.log_offset >= 0.0f) || !std::isfinite(c.log_offset)) return ConfigError::kLogOffset;
  config_ = c;
  bins_ = c.fft_size / 2 + 1;
  frame_features_ = c.features == Features::kMfcc ? c.coefficients : c.mel_bins;

  // Periodic Hann window over window_samples (tf.signal.hann_window, float32); the rest of the FFT
  // frame stays zero (tf.signal.stft pads each windowed frame to fft_length).
  const float n = static_cast<float>(c.window_samples);
  for (int32_t i = 0; i < c.window_samples; ++i) {
    const float arg = kTwoPi * static_cast<float>(i) / n;
    window_[i] = 0.5f - 0.5f * cosf(arg);
  }
  std::memset(frame_, 0, sizeof frame_);

  // The mel filter bank: bin k (1 <= k < bins) at linspace(0, nyquist, bins)[k] Hz; band c spans the
  // mel points c, c + 1, c + 2 of linspace(mel(lower), mel(upper), mel_bins + 2).
  const float mel_low = hertz_to_mel(c.lower_hz);
  const float mel_high = hertz_to_mel(c.upper_hz);
  int32_t used = 0;
  for (int32_t ch = 0; ch < c.mel_bins; ++ch) {
    const float lower = linspace(mel_low, mel_high, c.mel_bins + 2, ch);
    const float center = linspace(mel_low, mel_high, c.mel_bins + 2, ch + 1);
    const float upper = linspace(mel_low, mel_high, c.mel_bins + 2, ch + 2);
    first_[ch] = 0;
    width_[ch] = 0;
    offset_[ch] = static_cast<int16_t>(used);
    for (int32_t k = 1; k < bins_; ++k) {
      const float mel = hertz_to_mel(linspace(0.0f, nyquist, bins_, k));
      const float rising = (mel - lower) / (center - lower);
      const float falling = (upper - mel) / (upper - center);
      const float w = fmaxf(0.0f, fminf(rising, falling));
      if (w <= 0.0f) {
        if (width_[ch] > 0) break;  // past the triangle
        continue;
      }
      if (width_[ch] == 0) first_[ch] = static_cast<int16_t>(k);
      if (used >= 2 * kMaxBins) return ConfigError::kMelBins;
      weights_[used++] = w;
      ++width_[ch];
    }
  }

  // DCT-II scaled as tf.signal.mfccs_from_log_mel_spectrograms: 2 cos(pi k (2n + 1) / 2N) / sqrt(2N).
  if (c.features == Features::kMfcc) {
    const int32_t mels = c.mel_bins;
    const double norm = 1.0 / std::sqrt(2.0 * mels);
    for (int32_t k = 0; k < c.coefficients; ++k) {
      for (int32_t m = 0; m < mels; ++m) {
        dct_[k * mels + m] = static_cast<float>(2.0 * std::cos(kPi * k * (2 * m + 1) / (2.0 * mels)) * norm);
      }
    }
  }

  // The real FFT of TFLite Micro's signal library, its state in fft_state_ (no allocation).
  const size_t needed = tflm_signal::RfftFloatGetNeededMemory(c.fft_size);
  if (needed > sizeof fft_state_) return ConfigError::kFftState;
  fft_ = tflm_signal::RfftFloatInit(c.fft_size, fft_state_, sizeof fft_state_);
  return fft_ != nullptr ? ConfigError::kOk : ConfigError::kFftState;
}

int32_t AudioFrontend::frame_count(size_t n) const {
  const size_t clip = config_.clip_samples > 0 ? static_cast<size_t>(config_.clip_samples) : n;
  const size_t window = static_cast<size_t>(config_.window_samples);
  if (fft_ == nullptr || clip < window) return 0;
  return static_cast<int32_t>(1 + (clip - window) / static_cast<size_t>(config_.stride_samples));
}

void AudioFrontend::frame(const float* samples, float* out) {
  for (int32_t i = 0; i < config_.window_samples; ++i) {
    frame_[i] = samples[i] * window_[i];
  }
  transform(out);
}

void AudioFrontend::transform(float* out) {
  tflm_signal::RfftFloatApply(fft_, frame_, spectrum_);
  for (int32_t k = 0; k < bins_; ++k) {
    const float re = spectrum_[k].real;
    const float im = spectrum_[k].imag;
    const float energy = re * re + im * im;
    magnitude_[k] = config_.power ? energy : sqrtf(energy);
  }
  const int32_t mels = config_.mel_bins;
  float* log_mel = config_.features == Features::kMfcc ? log_mel_ : out;
  for (int32_t ch = 0; ch < mels; ++ch) {
    float sum = 0.0f;
    const float* w = weights_ + offset_[ch];
    const float* x = magnitude_ + first_[ch];
    for (int32_t j = 0; j < width_[ch]; ++j) {
      sum += x[j] * w[j];
    }
    log_mel[ch] = logf(sum + config_.log_offset);
  }
  if (config_.features == Features::kMfcc) {
    for (int32_t k = 0; k < config_.coefficients; ++k) {
      const float* row = dct_ + k * mels;
      float sum = 0.0f;
      for (int32_t m = 0; m < mels; ++m) {
        sum += log_mel_[m] * row[m];
      }
      out[k] = sum;
    }
  }
}

namespace {
inline float to_unit(float x) { return x; }
inline float to_unit(int16_t x) { return static_cast<float>(x) / 32768.0f; }
}  // namespace

template <typename Sample>
size_t AudioFrontend::run(const Sample* samples, size_t n, float* out, size_t out_cap) {
  const int32_t frames = frame_count(n);
  const size_t total = static_cast<size_t>(frames) * static_cast<size_t>(frame_features_);
  if (frames == 0 || total > out_cap) return 0;
  const size_t clip = config_.clip_samples > 0 ? static_cast<size_t>(config_.clip_samples) : n;
  const size_t have = n < clip ? n : clip;  // samples past `have` are the zero padding
  float top = 0.0f;
  if (config_.normalize != Normalize::kNone && have > 0) {
    const bool peak = config_.normalize == Normalize::kPeak;
    top = peak ? fabsf(to_unit(samples[0])) : to_unit(samples[0]);
    for (size_t i = 1; i < have; ++i) {
      const float v = to_unit(samples[i]);
      top = fmaxf(top, peak ? fabsf(v) : v);
    }
  }
  for (int32_t f = 0; f < frames; ++f) {
    const size_t start = static_cast<size_t>(f) * static_cast<size_t>(config_.stride_samples);
    for (int32_t i = 0; i < config_.window_samples; ++i) {
      const size_t at = start + static_cast<size_t>(i);
      float v = at < have ? to_unit(samples[at]) : 0.0f;
      if (top != 0.0f && at < have) v /= top;
      frame_[i] = v * window_[i];
    }
    transform(out + static_cast<size_t>(f) * static_cast<size_t>(frame_features_));
  }
  return total;
}

size_t AudioFrontend::features_pcm16(const int16_t* pcm, size_t n, float* out, size_t out_cap) {
  return run(pcm, n, out, out_cap);
}

size_t AudioFrontend::features(const float* samples, size_t n, float* out, size_t out_cap) {
  return run(samples, n, out, out_cap);
}

}  // namespace lepton::preprocess
