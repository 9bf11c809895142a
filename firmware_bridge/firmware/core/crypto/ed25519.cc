// Ed25519 verification, RFC 8032. The structure follows TweetNaCl (16 limbs of 16 bits in int64,
// extended twisted Edwards coordinates), written afresh for verification only, with the RFC's
// canonical-encoding checks and a joint (Straus/Shamir) double-scalar multiplication.
//
// Curve: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p), p = 2^255 - 19, d = -121665/121666.
// Group order of the base point B: L = 2^252 + 27742317777372353535851937790883648493.
#include "ed25519.h"

#include <cstring>

#include "sha512.h"

namespace lepton {
namespace {

// ---------------------------------------------------------------------------------------------
// Field arithmetic mod p = 2^255 - 19.
//
// An element is a[0] + a[1] 2^16 + ... + a[15] 2^240 with signed 64-bit limbs. After fe_carry()
// every limb is back in [0, 2^16) (limb 0 may briefly exceed it); additions and subtractions let
// limbs grow or go negative, which the next multiplication absorbs (|limb| < 2^18 in every use
// here, so products and their sums stay far below 2^63). The value is only fully reduced (to the
// unique representative in [0, p)) by fe_pack().
// ---------------------------------------------------------------------------------------------
typedef int64_t Fe[16];

constexpr Fe kZero = {0};
constexpr Fe kOne = {1};
// d = -121665 / 121666 mod p
constexpr Fe kD = {0x78a3, 0x1359, 0x4dca, 0x75eb, 0xd8ab, 0x4141, 0x0a4d, 0x0070,
                   0xe898, 0x7779, 0x4079, 0x8cc7, 0xfe73, 0x2b6f, 0x6cee, 0x5203};
// 2 d mod p
constexpr Fe kD2 = {0xf159, 0x26b2, 0x9b94, 0xebd6, 0xb156, 0x8283, 0x149a, 0x00e0,
                    0xd130, 0xeef3, 0x80f2, 0x198e, 0xfce7, 0x56df, 0xd9dc, 0x2406};
// sqrt(-1) = 2^((p-1)/4) mod p
constexpr Fe kSqrtM1 = {0xa0b0, 0x4a0e, 0x1b27, 0xc4ee, 0xe478, 0xad2f, 0x1806, 0x2f43,
                        0xd7a7, 0x3dfb, 0x0099, 0x2b4d, 0xdf0b, 0x4fc1, 0x2480, 0x2b83};
// Base point B: y = 4/5, x the even ("positive") square root.
constexpr Fe kBaseX = {0xd51a, 0x8f25, 0x2d60, 0xc956, 0xa7b2, 0x9525, 0xc760, 0x692c,
                       0xdc5c, 0xfdd6, 0xe231, 0xc0a4, 0x53fe, 0xcd6e, 0x36d3, 0x2169};
constexpr Fe kBaseY = {0x6658, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666,
                       0x6666, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666, 0x6666};

void fe_copy(Fe out, const Fe a) {
  for (int i = 0; i < 16; ++i) out[i] = a[i];
}

// Moves each limb's excess above 16 bits into the next limb; the excess of limb 15 is worth
// 2^256 = 38 (mod p) and wraps into limb 0.
void fe_carry(Fe a) {
  for (int i = 0; i < 16; ++i) {
    // floor(a[i] / 2^16). Right-shifting a negative value is arithmetic on every compiler we
    // target (GCC, Clang, Arm); it is implementation-defined before C++20, not undefined.
    const int64_t c = a[i] >> 16;
    a[i] -= c * 65536;  // not c << 16: left-shifting a negative value is undefined in C++17
    if (i < 15) {
      a[i + 1] += c;
    } else {
      a[0] += 38 * c;
    }
  }
}

void fe_add(Fe out, const Fe a, const Fe b) {
  for (int i = 0; i < 16; ++i) out[i] = a[i] + b[i];
}

void fe_sub(Fe out, const Fe a, const Fe b) {
  for (int i = 0; i < 16; ++i) out[i] = a[i] - b[i];
}

// Schoolbook product into 31 limbs, then fold limbs 16..30 down (2^256 = 38 mod p). `out` may
// alias `a` or `b`.
void fe_mul(Fe out, const Fe a, const Fe b) {
  int64_t t[31] = {0};
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) t[i + j] += a[i] * b[j];
  }
  for (int i = 0; i < 15; ++i) t[i] += 38 * t[i + 16];
  for (int i = 0; i < 16; ++i) out[i] = t[i];
  fe_carry(out);
  fe_carry(out);
}

void fe_sq(Fe out, const Fe a) { fe_mul(out, a, a); }

// a^(p-2) = 1/a (Fermat). p - 2 = 2^255 - 21: bits 254..0 are all ones except bits 4 and 2.
void fe_invert(Fe out, const Fe a) {
  Fe c;
  fe_copy(c, a);  // bit 254
  for (int bit = 253; bit >= 0; --bit) {
    fe_sq(c, c);
    if (bit != 4 && bit != 2) fe_mul(c, c, a);
  }
  fe_copy(out, c);
}

// a^((p-5)/8), the core of the square root. (p-5)/8 = 2^252 - 3: bits 251..0 all ones but bit 1.
void fe_pow_p58(Fe out, const Fe a) {
  Fe c;
  fe_copy(c, a);  // bit 251
  for (int bit = 250; bit >= 0; --bit) {
    fe_sq(c, c);
    if (bit != 1) fe_mul(c, c, a);
  }
  fe_copy(out, c);
}

// The canonical 32-byte little-endian encoding of a, i.e. of its representative in [0, p).
void fe_pack(uint8_t out[32], const Fe a) {
  Fe t;
  fe_copy(t, a);
  // Three carry passes leave every limb in [0, 2^16), so 0 <= t < 2^256 < 3p.
  fe_carry(t);
  fe_carry(t);
  fe_carry(t);
  // Subtract p while t >= p (at most twice). m = t - p with the borrow propagated limb by limb;
  // p's limbs are 0xffed, 0xffff x 14, 0x7fff.
  for (int pass = 0; pass < 2; ++pass) {
    Fe m;
    m[0] = t[0] - 0xffed;
    for (int i = 1; i < 15; ++i) {
      m[i] = t[i] - 0xffff - ((m[i - 1] >> 16) & 1);  // borrow = 1 when m[i-1] went negative
      m[i - 1] &= 0xffff;
    }
    m[15] = t[15] - 0x7fff - ((m[14] >> 16) & 1);
    m[14] &= 0xffff;
    const bool t_below_p = m[15] < 0;
    if (!t_below_p) fe_copy(t, m);
  }
  for (int i = 0; i < 16; ++i) {
    out[2 * i] = uint8_t(t[i] & 0xff);
    out[2 * i + 1] = uint8_t(t[i] >> 8);
  }
}

// Reads 255 bits little-endian (bit 255, the sign bit of a point encoding, is ignored). The value
// may be >= p: callers that need canonical input check it themselves.
void fe_unpack(Fe out, const uint8_t in[32]) {
  for (int i = 0; i < 16; ++i) out[i] = int64_t(in[2 * i]) | (int64_t(in[2 * i + 1]) << 8);
  out[15] &= 0x7fff;
}

bool fe_equal(const Fe a, const Fe b) {
  uint8_t pa[32], pb[32];
  fe_pack(pa, a);
  fe_pack(pb, b);
  return std::memcmp(pa, pb, 32) == 0;
}

bool fe_is_zero(const Fe a) { return fe_equal(a, kZero); }

// The "sign" of x in RFC 8032: the low bit of its canonical representative.
int fe_is_odd(const Fe a) {
  uint8_t pa[32];
  fe_pack(pa, a);
  return pa[0] & 1;
}

// ---------------------------------------------------------------------------------------------
// Points in extended coordinates (X : Y : Z : T): x = X/Z, y = Y/Z, x y = T/Z.
// ---------------------------------------------------------------------------------------------
struct Point {
  Fe x, y, z, t;
};

void point_identity(Point& p) {
  fe_copy(p.x, kZero);
  fe_copy(p.y, kOne);
  fe_copy(p.z, kOne);
  fe_copy(p.t, kZero);
}

void point_base(Point& p) {
  fe_copy(p.x, kBaseX);
  fe_copy(p.y, kBaseY);
  fe_copy(p.z, kOne);
  fe_mul(p.t, kBaseX, kBaseY);
}

// out = p + q ("add-2008-hwcd-3" for a = -1). The formula is complete on Ed25519 (d is not a
// square), so it also doubles (p == q) and handles the identity. `out` may alias `p` or `q`.
void point_add(Point& out, const Point& p, const Point& q) {
  Fe a, b, c, d, t, e, f, g, h;
  fe_sub(a, p.y, p.x);
  fe_sub(t, q.y, q.x);
  fe_mul(a, a, t);      // A = (Y1 - X1)(Y2 - X2)
  fe_add(b, p.y, p.x);
  fe_add(t, q.y, q.x);
  fe_mul(b, b, t);      // B = (Y1 + X1)(Y2 + X2)
  fe_mul(c, p.t, q.t);
  fe_mul(c, c, kD2);    // C = 2 d T1 T2
  fe_mul(d, p.z, q.z);
  fe_add(d, d, d);      // D = 2 Z1 Z2
  fe_sub(e, b, a);      // E = B - A
  fe_sub(f, d, c);      // F = D - C
  fe_add(g, d, c);      // G = D + C
  fe_add(h, b, a);      // H = B + A
  fe_mul(out.x, e, f);  // X3 = E F
  fe_mul(out.y, g, h);  // Y3 = G H
  fe_mul(out.t, e, h);  // T3 = E H
  fe_mul(out.z, f, g);  // Z3 = F G
}

void point_negate(Point& p) {
  fe_sub(p.x, kZero, p.x);
  fe_sub(p.t, kZero, p.t);
}

// RFC 8032 5.1.2: the 255-bit y, then the sign (low bit) of x in bit 255.
void point_encode(uint8_t out[32], const Point& p) {
  Fe zinv, x, y;
  fe_invert(zinv, p.z);
  fe_mul(x, p.x, zinv);
  fe_mul(y, p.y, zinv);
  fe_pack(out, y);
  out[31] |= uint8_t(fe_is_odd(x) << 7);
}

// RFC 8032 5.1.3, strict: rejects y >= p, a y with no matching x on the curve, and x = 0 with
// the sign bit set (the non-canonical encodings the RFC says decoding must fail on).
bool point_decode(Point& p, const uint8_t in[32]) {
  Fe y;
  fe_unpack(y, in);
  uint8_t canonical[32];
  fe_pack(canonical, y);
  if (std::memcmp(canonical, in, 31) != 0 || canonical[31] != (in[31] & 0x7f)) return false;  // y >= p
  const int sign = in[31] >> 7;

  // x^2 = u / v with u = y^2 - 1, v = d y^2 + 1.
  Fe u, v, t;
  fe_sq(t, y);
  fe_sub(u, t, kOne);
  fe_mul(v, t, kD);
  fe_add(v, v, kOne);

  // Candidate root x = u v^3 (u v^7)^((p-5)/8).
  Fe v3, v7, x;
  fe_sq(t, v);
  fe_mul(v3, t, v);   // v^3
  fe_sq(t, v3);
  fe_mul(v7, t, v);   // v^7
  fe_mul(t, u, v7);
  fe_pow_p58(t, t);
  fe_mul(t, t, v3);
  fe_mul(x, t, u);

  // v x^2 == u: x is a root; v x^2 == -u: x sqrt(-1) is; otherwise u/v is not a square.
  Fe vxx, neg_u;
  fe_sq(t, x);
  fe_mul(vxx, t, v);
  fe_sub(neg_u, kZero, u);
  if (!fe_equal(vxx, u)) {
    if (!fe_equal(vxx, neg_u)) return false;
    fe_mul(x, x, kSqrtM1);
  }
  if (sign == 1 && fe_is_zero(x)) return false;  // "-0" is not a valid encoding
  if (fe_is_odd(x) != sign) fe_sub(x, kZero, x);

  fe_copy(p.x, x);
  fe_copy(p.y, y);
  fe_copy(p.z, kOne);
  fe_mul(p.t, x, y);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Scalars: 32-byte little-endian integers modulo L.
// ---------------------------------------------------------------------------------------------
constexpr uint8_t kL[32] = {
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
};

bool scalar_below_L(const uint8_t s[32]) {
  for (int i = 31; i >= 0; --i) {
    if (s[i] != kL[i]) return s[i] < kL[i];
  }
  return false;  // s == L
}

// out = h mod L for a 64-byte little-endian h, by binary long division: feed h's bits in from the
// top, doubling the remainder and subtracting L whenever it reaches L. The remainder stays below
// L < 2^253, so 2 r + 1 fits in 32 bytes. 512 rounds of 32-byte arithmetic: cheap next to the
// point arithmetic, and obviously right.
void scalar_reduce(uint8_t out[32], const uint8_t h[64]) {
  uint8_t r[32] = {0};
  for (int bit = 511; bit >= 0; --bit) {
    unsigned carry = (h[bit >> 3] >> (bit & 7)) & 1u;
    for (int i = 0; i < 32; ++i) {  // r = 2 r + bit
      const unsigned v = (unsigned(r[i]) << 1) | carry;
      r[i] = uint8_t(v);
      carry = v >> 8;
    }
    if (!scalar_below_L(r)) {  // r -= L
      int borrow = 0;
      for (int i = 0; i < 32; ++i) {
        const int v = int(r[i]) - int(kL[i]) - borrow;
        borrow = v < 0;
        r[i] = uint8_t(v + 256 * borrow);
      }
    }
  }
  std::memcpy(out, r, 32);
}

int scalar_bit(const uint8_t s[32], int i) { return (s[i >> 3] >> (i & 7)) & 1; }

// out = [s]B + [k]Q with one shared chain of doublings (Straus/Shamir), most significant bit
// first. Both scalars are below L < 2^253, so bits 252..0 suffice.
void double_scalar_mult(Point& out, const uint8_t s[32], const uint8_t k[32], const Point& q) {
  Point b, bq;
  point_base(b);
  point_add(bq, b, q);  // B + Q, for the rounds where both bits are set
  point_identity(out);
  for (int i = 252; i >= 0; --i) {
    point_add(out, out, out);
    const int sb = scalar_bit(s, i), kb = scalar_bit(k, i);
    if (sb && kb) {
      point_add(out, out, bq);
    } else if (sb) {
      point_add(out, out, b);
    } else if (kb) {
      point_add(out, out, q);
    }
  }
}

}  // namespace

bool ed25519_verify(const uint8_t signature[64], const uint8_t* message, size_t len,
                    const uint8_t public_key[32]) {
  const uint8_t* r_bytes = signature;
  const uint8_t* s_bytes = signature + 32;

  // RFC 8032 5.1.7 step 1: S must be in [0, L) (this is what makes signatures non-malleable),
  // and A must decode.
  if (!scalar_below_L(s_bytes)) return false;
  Point minus_a;
  if (!point_decode(minus_a, public_key)) return false;
  point_negate(minus_a);

  // Step 2: k = SHA-512(R || A || M) mod L.
  uint8_t digest[64], k[32];
  Sha512 sha;
  sha.update(r_bytes, 32);
  sha.update(public_key, 32);
  sha.update(message, len);
  sha.finish(digest);
  scalar_reduce(k, digest);

  // Step 3, cofactorless: [S]B = R + [k]A  <=>  [S]B - [k]A = R. Comparing the canonical encoding
  // of the left side with the bytes of R also rejects every R that is not the canonical encoding
  // of a curve point, so R needs no separate decoding.
  Point check;
  double_scalar_mult(check, s_bytes, k, minus_a);
  uint8_t check_bytes[32];
  point_encode(check_bytes, check);
  return std::memcmp(check_bytes, r_bytes, 32) == 0;
}

}  // namespace lepton
