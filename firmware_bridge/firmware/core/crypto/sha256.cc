// SHA-256 per FIPS 180-4, section 6.2. Byte-oriented (endian neutral), no tables in RAM.
#include "sha256.h"

#include <cstring>

namespace lepton {
namespace {

// FIPS 180-4 4.2.2: first 32 bits of the fractional parts of the cube roots of the first 64 primes.
constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

// FIPS 180-4 5.3.3: initial hash value.
constexpr uint32_t kInit[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

inline uint32_t rotr(uint32_t x, unsigned n) { return (x >> n) | (x << (32 - n)); }

inline uint32_t load_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

inline void store_be32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v >> 24);
  p[1] = uint8_t(v >> 16);
  p[2] = uint8_t(v >> 8);
  p[3] = uint8_t(v);
}

}  // namespace

Sha256::Sha256() { reset(); }

void Sha256::reset() {
  std::memcpy(state_, kInit, sizeof state_);
  total_bytes_ = 0;
  block_used_ = 0;
}

void Sha256::compress(const uint8_t block[kBlockBytes]) {
  // Message schedule as a 16-word ring buffer (FIPS 180-4 6.2.2 step 1, computed on the fly).
  uint32_t w[16];
  for (int i = 0; i < 16; ++i) w[i] = load_be32(block + 4 * i);

  uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
  for (int t = 0; t < 64; ++t) {
    if (t >= 16) {
      const uint32_t w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
      const uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
      const uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
      w[t & 15] += s0 + w[(t - 7) & 15] + s1;
    }
    const uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    const uint32_t ch = (e & f) ^ (~e & g);
    const uint32_t t1 = h + S1 + ch + kK[t] + w[t & 15];
    const uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    const uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    const uint32_t t2 = S0 + maj;
    h = g; g = f; f = e; e = d + t1;
    d = c; c = b; b = a; a = t1 + t2;
  }
  state_[0] += a; state_[1] += b; state_[2] += c; state_[3] += d;
  state_[4] += e; state_[5] += f; state_[6] += g; state_[7] += h;
}

void Sha256::update(const uint8_t* data, size_t n) {
  if (n == 0) return;  // data may be null then
  total_bytes_ += n;
  if (block_used_ > 0) {  // top up the pending partial block first
    size_t take = kBlockBytes - block_used_;
    if (take > n) take = n;
    std::memcpy(block_ + block_used_, data, take);
    block_used_ += take;
    data += take;
    n -= take;
    if (block_used_ < kBlockBytes) return;
    compress(block_);
    block_used_ = 0;
  }
  for (; n >= kBlockBytes; data += kBlockBytes, n -= kBlockBytes) compress(data);
  if (n > 0) std::memcpy(block_, data, n);
  block_used_ = n;
}

void Sha256::finish(uint8_t out[kDigestBytes]) {
  // Padding (5.1.1): 0x80, zeros, then the 64-bit big-endian bit length, to a block boundary.
  const uint64_t bits = total_bytes_ * 8;
  block_[block_used_++] = 0x80;
  if (block_used_ > kBlockBytes - 8) {
    std::memset(block_ + block_used_, 0, kBlockBytes - block_used_);
    compress(block_);
    block_used_ = 0;
  }
  std::memset(block_ + block_used_, 0, kBlockBytes - 8 - block_used_);
  store_be32(block_ + 56, uint32_t(bits >> 32));
  store_be32(block_ + 60, uint32_t(bits));
  compress(block_);
  for (int i = 0; i < 8; ++i) store_be32(out + 4 * i, state_[i]);
  reset();
}

void Sha256::hash(const uint8_t* data, size_t n, uint8_t out[kDigestBytes]) {
  Sha256 h;
  h.update(data, n);
  h.finish(out);
}

}  // namespace lepton
