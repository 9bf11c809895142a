// SHA-512 per FIPS 180-4, section 6.4. Byte-oriented (endian neutral).
#include "sha512.h"

#include <cstring>

namespace lepton {
namespace {

// FIPS 180-4 4.2.3: first 64 bits of the fractional parts of the cube roots of the first 80 primes.
constexpr uint64_t kK[80] = {
    0x428a2f98d728ae22ULL, 0x7137449123ef65cdULL, 0xb5c0fbcfec4d3b2fULL, 0xe9b5dba58189dbbcULL,
    0x3956c25bf348b538ULL, 0x59f111f1b605d019ULL, 0x923f82a4af194f9bULL, 0xab1c5ed5da6d8118ULL,
    0xd807aa98a3030242ULL, 0x12835b0145706fbeULL, 0x243185be4ee4b28cULL, 0x550c7dc3d5ffb4e2ULL,
    0x72be5d74f27b896fULL, 0x80deb1fe3b1696b1ULL, 0x9bdc06a725c71235ULL, 0xc19bf174cf692694ULL,
    0xe49b69c19ef14ad2ULL, 0xefbe4786384f25e3ULL, 0x0fc19dc68b8cd5b5ULL, 0x240ca1cc77ac9c65ULL,
    0x2de92c6f592b0275ULL, 0x4a7484aa6ea6e483ULL, 0x5cb0a9dcbd41fbd4ULL, 0x76f988da831153b5ULL,
    0x983e5152ee66dfabULL, 0xa831c66d2db43210ULL, 0xb00327c898fb213fULL, 0xbf597fc7beef0ee4ULL,
    0xc6e00bf33da88fc2ULL, 0xd5a79147930aa725ULL, 0x06ca6351e003826fULL, 0x142929670a0e6e70ULL,
    0x27b70a8546d22ffcULL, 0x2e1b21385c26c926ULL, 0x4d2c6dfc5ac42aedULL, 0x53380d139d95b3dfULL,
    0x650a73548baf63deULL, 0x766a0abb3c77b2a8ULL, 0x81c2c92e47edaee6ULL, 0x92722c851482353bULL,
    0xa2bfe8a14cf10364ULL, 0xa81a664bbc423001ULL, 0xc24b8b70d0f89791ULL, 0xc76c51a30654be30ULL,
    0xd192e819d6ef5218ULL, 0xd69906245565a910ULL, 0xf40e35855771202aULL, 0x106aa07032bbd1b8ULL,
    0x19a4c116b8d2d0c8ULL, 0x1e376c085141ab53ULL, 0x2748774cdf8eeb99ULL, 0x34b0bcb5e19b48a8ULL,
    0x391c0cb3c5c95a63ULL, 0x4ed8aa4ae3418acbULL, 0x5b9cca4f7763e373ULL, 0x682e6ff3d6b2b8a3ULL,
    0x748f82ee5defb2fcULL, 0x78a5636f43172f60ULL, 0x84c87814a1f0ab72ULL, 0x8cc702081a6439ecULL,
    0x90befffa23631e28ULL, 0xa4506cebde82bde9ULL, 0xbef9a3f7b2c67915ULL, 0xc67178f2e372532bULL,
    0xca273eceea26619cULL, 0xd186b8c721c0c207ULL, 0xeada7dd6cde0eb1eULL, 0xf57d4f7fee6ed178ULL,
    0x06f067aa72176fbaULL, 0x0a637dc5a2c898a6ULL, 0x113f9804bef90daeULL, 0x1b710b35131c471bULL,
    0x28db77f523047d84ULL, 0x32caab7b40c72493ULL, 0x3c9ebe0a15c9bebcULL, 0x431d67c49c100d4cULL,
    0x4cc5d4becb3e42b6ULL, 0x597f299cfc657e2aULL, 0x5fcb6fab3ad6faecULL, 0x6c44198c4a475817ULL,
};

// FIPS 180-4 5.3.5: initial hash value.
constexpr uint64_t kInit[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

inline uint64_t rotr(uint64_t x, unsigned n) { return (x >> n) | (x << (64 - n)); }

inline uint64_t load_be64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

inline void store_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = uint8_t(v);
}

}  // namespace

Sha512::Sha512() { reset(); }

void Sha512::reset() {
  std::memcpy(state_, kInit, sizeof state_);
  total_bytes_ = 0;
  block_used_ = 0;
}

void Sha512::compress(const uint8_t block[kBlockBytes]) {
  // Message schedule as a 16-word ring buffer (FIPS 180-4 6.4.2 step 1, computed on the fly).
  uint64_t w[16];
  for (int i = 0; i < 16; ++i) w[i] = load_be64(block + 8 * i);

  uint64_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
  uint64_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
  for (int t = 0; t < 80; ++t) {
    if (t >= 16) {
      const uint64_t w15 = w[(t - 15) & 15], w2 = w[(t - 2) & 15];
      const uint64_t s0 = rotr(w15, 1) ^ rotr(w15, 8) ^ (w15 >> 7);
      const uint64_t s1 = rotr(w2, 19) ^ rotr(w2, 61) ^ (w2 >> 6);
      w[t & 15] += s0 + w[(t - 7) & 15] + s1;
    }
    const uint64_t S1 = rotr(e, 14) ^ rotr(e, 18) ^ rotr(e, 41);
    const uint64_t ch = (e & f) ^ (~e & g);
    const uint64_t t1 = h + S1 + ch + kK[t] + w[t & 15];
    const uint64_t S0 = rotr(a, 28) ^ rotr(a, 34) ^ rotr(a, 39);
    const uint64_t maj = (a & b) ^ (a & c) ^ (b & c);
    const uint64_t t2 = S0 + maj;
    h = g; g = f; f = e; e = d + t1;
    d = c; c = b; b = a; a = t1 + t2;
  }
  state_[0] += a; state_[1] += b; state_[2] += c; state_[3] += d;
  state_[4] += e; state_[5] += f; state_[6] += g; state_[7] += h;
}

void Sha512::update(const uint8_t* data, size_t n) {
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

void Sha512::finish(uint8_t out[kDigestBytes]) {
  // Padding (5.1.2): 0x80, zeros, then the 128-bit big-endian bit length, to a block boundary.
  block_[block_used_++] = 0x80;
  if (block_used_ > kBlockBytes - 16) {
    std::memset(block_ + block_used_, 0, kBlockBytes - block_used_);
    compress(block_);
    block_used_ = 0;
  }
  std::memset(block_ + block_used_, 0, kBlockBytes - 16 - block_used_);
  store_be64(block_ + 112, total_bytes_ >> 61);  // high 64 bits of the bit length
  store_be64(block_ + 120, total_bytes_ << 3);   // low 64 bits
  compress(block_);
  for (int i = 0; i < 8; ++i) store_be64(out + 8 * i, state_[i]);
  reset();
}

void Sha512::hash(const uint8_t* data, size_t n, uint8_t out[kDigestBytes]) {
  Sha512 h;
  h.update(data, n);
  h.finish(out);
}

}  // namespace lepton
