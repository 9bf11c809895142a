// Ed25519 signature verification (RFC 8032, "pure" Ed25519: no context, no prehash).
// No heap, no exceptions, no globals with state; about 4.5 KiB of stack at most (Cortex-M4, -O2).
// Variable time: it only ever handles public data (signature, message, public key).
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton {

// True when `signature` (R || S, 64 bytes) is a valid signature of message[0..len) under the raw
// 32-byte `public_key`, per RFC 8032 section 5.1.7 with the cofactorless equation [S]B = R + [k]A.
// False on any malformed input: S >= L, a public key that is not the canonical encoding of a curve
// point (y >= p, x = 0 with the sign bit set, no square root), or R not equal to the canonical
// encoding of [S]B - [k]A. `message` may be null when len == 0.
bool ed25519_verify(const uint8_t signature[64], const uint8_t* message, size_t len,
                    const uint8_t public_key[32]);

}  // namespace lepton
