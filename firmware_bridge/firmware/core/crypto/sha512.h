// SHA-512 (FIPS 180-4), streaming. Used by Ed25519. No heap, no exceptions, fixed-size state.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton {

class Sha512 {
 public:
  static constexpr size_t kDigestBytes = 64;
  static constexpr size_t kBlockBytes = 128;

  Sha512();
  // Absorbs n bytes (any split of the message gives the same digest).
  void update(const uint8_t* data, size_t n);
  // Writes the digest; the object then starts over as if newly constructed.
  void finish(uint8_t out[kDigestBytes]);
  // One-shot convenience.
  static void hash(const uint8_t* data, size_t n, uint8_t out[kDigestBytes]);

 private:
  void reset();
  void compress(const uint8_t block[kBlockBytes]);

  uint64_t state_[8];
  uint64_t total_bytes_;            // message length so far, in bytes (< 2^64 is plenty here)
  uint8_t block_[kBlockBytes];      // partial block waiting for more input
  size_t block_used_;               // bytes of block_ in use (< kBlockBytes)
};

}  // namespace lepton
