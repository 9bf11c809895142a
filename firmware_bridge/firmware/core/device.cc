// PROTOCOL.md, device side. Mirrors firmware_bridge/device.py: same checks in the same order,
// same NAK codes, details and (closely) messages. Every buffer is static and sized at compile time.
#include "core/device.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>

#include "core/board.h"
#include "core/crypto/ed25519.h"
#include "core/crypto/sha256.h"
#include "core/manifest.h"
#include "core/model_runner.h"
#include "core/ranges.h"
#include "core/slots.h"
#include "lepton_frame.h"

#ifndef LEPTON_MAX_PAYLOAD
#error LEPTON_MAX_PAYLOAD must be defined (board.mk MAX_PAYLOAD)
#endif
#ifndef LEPTON_WINDOW
#define LEPTON_WINDOW 1u
#endif
#ifndef LEPTON_PROFILE
#define LEPTON_PROFILE "unknown"
#endif
#ifndef LEPTON_FIRMWARE
#define LEPTON_FIRMWARE "lepton-edge-fw"
#endif

namespace lepton::device {
namespace {

// Message types and NAK codes (PROTOCOL.md section 4).
enum Msg : uint8_t {
  kHello = 0x01, kInfo = 0x02, kStats = 0x03,
  kModelBegin = 0x10, kModelData = 0x11, kModelCommit = 0x12, kModelConfirm = 0x13,
  kInputData = 0x20, kInvoke = 0x21, kOutputRead = 0x22, kReset = 0x30,
  kAck = 0x80, kNak = 0x81, kAnnounce = 0x82,
};
enum Nak : uint8_t {
  kCrc = 1, kSequence = 2, kTooLarge = 3, kNoModel = 4, kArenaTooSmall = 5, kBusy = 6,
  kBadRequest = 7, kIncomplete = 8, kHashMismatch = 9, kModelInvalid = 10, kVersion = 11,
  kSignature = 12, kInvokeFailed = 13, kUnsupported = 14,
};

constexpr uint32_t kMaxPayload = LEPTON_MAX_PAYLOAD;
constexpr uint32_t kDefaultHostPayload = 256;
constexpr uint32_t kNoTransfer = 0xFFFFFFFFu;
constexpr size_t kNakMessageMax = 120;
constexpr size_t kRemembered = 8;
constexpr size_t kStoredAnswerMax = 6 + kNakMessageMax;  // a whole NAK; INVOKE ACKs up to this
constexpr size_t kRanges = 32;
constexpr size_t kMaxKeys = 8;
static_assert(kMaxPayload >= 256 && kMaxPayload <= 65535, "MAX_PAYLOAD out of range");

// --- state ---------------------------------------------------------------------------------

uint8_t rx_buf[LF_DECODER_BUFFER(kMaxPayload)];
lf_decoder decoder;
uint8_t answer[kMaxPayload];                       // the payload being built
uint8_t wire[LF_WIRE_MAX(kMaxPayload)];            // its frame on the line

const uint8_t (*keys)[32] = nullptr;
size_t key_count = 0;

uint32_t host_payload = kDefaultHostPayload;
bool reset_pending = false;

struct Transfer {
  bool open;
  uint16_t xfer;
  uint32_t model_size;
  uint8_t sha256[32];
  uint32_t arena_bytes;
  uint16_t manifest_len;
  uint16_t signature_len;
  uint32_t slot;
  RangeSet<kRanges> held;
  uint32_t total() const { return manifest_len + signature_len + model_size; }
} transfer;

struct Staged {
  uint16_t xfer;  // 0: nothing staged
  RangeSet<kRanges> held;
} staged;

uint32_t active = slots::kNoSlot;   // the loaded model's slot
bool slot_ok[slots::kSlotCount];    // valid in the meta record and its SHA-256 checked
char boot_error[96];
bool output_valid = false;
uint32_t invoke_generation = 0;

struct Counters {
  uint32_t invocations, invoke_errors, last_invoke_us, naks_sent, model_bytes_received;
  uint32_t frames_ok, frames_bad, crc_errors;
} counters;
uint64_t uptime_us = 0;
uint32_t last_micros = 0;

struct Remembered {
  bool used;
  uint16_t seq;
  uint8_t type;
  uint32_t crc;
  uint8_t kind;  // 0: stored bytes; 1: INVOKE ACK rebuilt from the output tensors
  uint32_t generation;
  uint16_t len;  // kind 0: bytes; kind 1: inline output bytes (room)
  uint8_t bytes[kStoredAnswerMax];
} remembered[kRemembered];
size_t remembered_next = 0;

// --- helpers -------------------------------------------------------------------------------

struct Writer {
  uint8_t* p;
  size_t n = 0;
  void u8(uint32_t v) { p[n++] = static_cast<uint8_t>(v); }
  void u16(uint32_t v) { u8(v); u8(v >> 8); }
  void u32(uint32_t v) { u16(v); u16(v >> 16); }
  void bytes(const void* d, size_t len) { memcpy(p + n, d, len); n += len; }
  void pstr(const char* s) {
    size_t len = strlen(s);
    if (len > 255) len = 255;
    u8(static_cast<uint32_t>(len));
    bytes(s, len);
  }
};

uint16_t get_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t get_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// A refusal: what a handler returns instead of an ACK payload.
struct Refusal {
  bool refused = false;
  uint8_t code = 0;
  uint32_t detail = 0;
  char message[kNakMessageMax + 1] = {};
};

__attribute__((format(printf, 4, 5))) void refuse(Refusal* r, uint8_t code, uint32_t detail, const char* fmt, ...) {
  r->refused = true;
  r->code = code;
  r->detail = detail;
  va_list args;
  va_start(args, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, args);
  va_end(args);
}

// A payload too short: BAD_REQUEST as protocol.py's PayloadError says it.
bool need(Refusal* r, const char* what, size_t have, size_t want) {
  if (have >= want) return true;
  refuse(r, kBadRequest, 0, "%s: %u bytes, needs at least %u", what, static_cast<unsigned>(have),
         static_cast<unsigned>(want));
  return false;
}

void send(uint8_t type, uint16_t seq, const uint8_t* payload, size_t len) {
  size_t out = 0;
  if (lf_frame_encode(type, seq, payload, static_cast<uint16_t>(len), wire, sizeof wire, &out) == LF_OK) {
    board::uart_write(wire, out);
  }
}

// NAK payload into buf; returns its length.
size_t nak_payload(uint8_t* buf, uint8_t code, uint8_t request, uint32_t detail, const char* message) {
  Writer w{buf};
  w.u8(code);
  w.u8(request);
  w.u32(detail);
  // Valid UTF-8 of at most kNakMessageMax bytes: whole characters only, '?' for stray bytes.
  const uint8_t* m = reinterpret_cast<const uint8_t*>(message);
  size_t used = 0;
  while (*m != 0) {
    const uint8_t c = *m;
    size_t n = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    for (size_t k = 1; k < n; ++k) {
      if ((m[k] & 0xC0) != 0x80) {  // also stops at the terminating NUL
        n = 0;
        break;
      }
    }
    if (n == 3 && ((c == 0xE0 && m[1] < 0xA0) || (c == 0xED && m[1] >= 0xA0))) n = 0;
    if (n == 4 && ((c == 0xF0 && m[1] < 0x90) || (c == 0xF4 && m[1] >= 0x90))) n = 0;
    const size_t take = n == 0 ? 1 : n;
    if (used + take > kNakMessageMax) break;
    if (n == 0) {
      w.u8('?');
    } else {
      w.bytes(m, n);
    }
    used += take;
    m += take;
  }
  return w.n;
}

void send_nak(uint16_t seq, uint8_t request, uint8_t code, uint32_t detail, const char* message) {
  ++counters.naks_sent;
  const size_t n = nak_payload(answer, code, request, detail, message);
  send(kNak, seq, answer, n);
}

size_t hello_payload(uint8_t* buf) {
  Writer w{buf};
  w.u8(LF_PROTOCOL_VERSION);
  w.u8(LEPTON_WINDOW);
  w.u16(kMaxPayload);
  w.u32(static_cast<uint32_t>(runner::arena_capacity()));
  w.u32(slots::kSlotBytes);
  w.pstr(LEPTON_PROFILE);
  w.pstr(LEPTON_FIRMWARE);
  return w.n;
}

void hex_prefix(const uint8_t* digest, char* out) {  // 16 hex digits
  static const char kHex[] = "0123456789abcdef";
  for (int i = 0; i < 8; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  out[16] = '\0';
}

bool slot_hash_ok(uint32_t index) {
  const slots::SlotMeta& s = slots::meta().slot[index];
  if (!s.valid || s.size > slots::kSlotBytes) return false;
  uint8_t digest[32];
  Sha256 sha;
  sha.update(slots::slot_data(index), s.size);
  sha.finish(digest);
  return memcmp(digest, s.sha256, 32) == 0;
}

// The arena TFLite Micro gets for a model whose device arena is `arena`: that arena, except on a board
// that stands in for a 32-bit device on a 64-bit host (the host port), where x86-64 TFLite Micro may
// need more than a figure measured on the target. There, as in the Python simulator
// (firmware_bridge.payload.host_arena_bytes), the manifest's arena.host_recommended_bytes when the
// device's arena is at least its arena.recommended_bytes; INFO and STATS still say `arena`.
uint32_t interpreter_arena(uint32_t arena, const uint8_t* manifest, uint32_t manifest_len) {
#ifdef LEPTON_HOST_ARENA_FROM_MANIFEST
  if (manifest_len > 0) {
    Manifest m;
    char why[8];
    if (parse_manifest(manifest, manifest_len, &m, why, sizeof why) && m.host_recommended_arena > 0 &&
        !(m.recommended_arena > 0 && arena < m.recommended_arena)) {
      return m.host_recommended_arena > arena ? m.host_recommended_arena : arena;
    }
  }
#else
  (void)manifest;
  (void)manifest_len;
#endif
  return arena;
}

// Loads slot `index` (already checked) into TFLite Micro; sets `active` on success.
bool load_slot(uint32_t index, char* why, size_t cap) {
  const slots::SlotMeta& s = slots::meta().slot[index];
  output_valid = false;
  staged.xfer = 0;
  const uint8_t* model = slots::slot_data(index);
  const uint32_t arena = interpreter_arena(s.arena_bytes, model + slots::align16(s.size), s.manifest_len);
  if (runner::load(model, s.size, arena, why, cap) != runner::Load::kOk) {
    active = slots::kNoSlot;
    return false;
  }
  active = index;
  return true;
}

uint32_t room_for(uint32_t reply_max, uint32_t overhead) {
  uint32_t room = host_payload > overhead ? host_payload - overhead : 0;
  if (room > kMaxPayload - overhead) room = kMaxPayload - overhead;
  return reply_max < room ? reply_max : room;
}

size_t invoke_answer(uint8_t* buf, uint32_t us, uint32_t room) {
  const uint32_t out_len = runner::output_bytes();
  Writer w{buf};
  w.u32(us);
  w.u32(out_len);
  w.u32(runner::output_crc32());
  w.n += runner::read_output(0, buf + w.n, room < out_len ? room : out_len);
  return w.n;
}

// --- requests ------------------------------------------------------------------------------

size_t do_hello(const uint8_t* p, size_t n, Refusal* r) {
  if (n > 0) {
    if (!need(r, "HELLO", n, 2)) return 0;
    const uint32_t v = get_u16(p);
    host_payload = v > kDefaultHostPayload ? v : kDefaultHostPayload;
  }
  for (auto& a : remembered) a.used = false;  // a new session: sequence numbers start over
  return hello_payload(answer);
}

size_t do_info(const uint8_t*, size_t, Refusal*) {
  Writer w{answer};
  w.u8(active == slots::kNoSlot ? slots::kNoSlot : active);
  w.u8(slots::kSlotCount);
  const slots::MetaRecord& m = slots::meta();
  for (uint32_t i = 0; i < slots::kSlotCount; ++i) {
    const slots::SlotMeta& s = m.slot[i];
    const bool valid = slot_ok[i];
    const bool confirmed = valid && i == active && m.confirmed;
    w.u8((valid ? 1u : 0u) | (confirmed ? 2u : 0u));
    w.u32(valid ? s.size : 0);
    w.u32(valid ? s.arena_bytes : 0);
    w.u32(valid ? s.version : slots::kNoVersion);
    if (valid) {
      w.bytes(s.sha256, 32);
    } else {
      memset(answer + w.n, 0, 32);
      w.n += 32;
    }
    w.pstr(valid ? s.name : "");
  }
  w.u16(transfer.open ? transfer.xfer : 0);
  w.u32(transfer.open ? transfer.total() : 0);
  w.u32(transfer.open ? transfer.held.prefix() : 0);
  w.u32(runner::loaded() ? runner::input_bytes() : 0);
  w.u32(runner::loaded() ? runner::output_bytes() : 0);
  return w.n;
}

size_t do_stats(const uint8_t*, size_t, Refusal*) {
  Writer w{answer};
  const bool m = runner::loaded() && active != slots::kNoSlot;
  w.u32(m ? slots::meta().slot[active].arena_bytes : 0);  // the device's arena (see interpreter_arena)
  w.u32(m ? runner::head_bytes() : 0);
  w.u32(m ? runner::tail_bytes() : 0);
  w.u32(counters.invocations);
  w.u32(counters.invoke_errors);
  w.u32(counters.last_invoke_us);
  w.u32(counters.frames_ok);
  w.u32(counters.frames_bad);
  w.u32(counters.crc_errors);
  w.u32(counters.naks_sent);
  w.u32(counters.model_bytes_received);
  const uint64_t ms = uptime_us / 1000;
  w.u32(ms > 0xFFFFFFFFu ? 0xFFFFFFFFu : static_cast<uint32_t>(ms));
  return w.n;
}

size_t do_model_begin(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "MODEL_BEGIN", n, 46)) return 0;
  const uint16_t xfer = get_u16(p);
  const uint32_t model_size = get_u32(p + 2);
  const uint8_t* sha = p + 6;
  const uint32_t arena = get_u32(p + 38);
  const uint16_t mlen = get_u16(p + 42), slen = get_u16(p + 44);
  const uint32_t ram = static_cast<uint32_t>(runner::arena_capacity());
  if (xfer == 0) {
    refuse(r, kBadRequest, 0, "transfer id 0 is reserved");
    return 0;
  }
  if (model_size > slots::kSlotBytes) {
    refuse(r, kTooLarge, slots::kSlotBytes, "model of %u bytes, a slot holds %u", static_cast<unsigned>(model_size),
           static_cast<unsigned>(slots::kSlotBytes));
    return 0;
  }
  if (arena > ram) {
    refuse(r, kArenaTooSmall, ram, "arena of %u bytes, %u available", static_cast<unsigned>(arena),
           static_cast<unsigned>(ram));
    return 0;
  }
  if (slots::layout_bytes(model_size, mlen, slen) > slots::kSlotBytes) {
    refuse(r, kTooLarge, slots::kSlotBytes, "manifest and signature too large");
    return 0;
  }
  Transfer& t = transfer;
  const bool same = t.open && t.model_size == model_size && memcmp(t.sha256, sha, 32) == 0 &&
                    t.arena_bytes == arena && t.manifest_len == mlen && t.signature_len == slen;
  if (same) {
    t.xfer = xfer;  // resume: keep what already arrived
  } else {
    t.open = false;
    const uint32_t index = slots::inactive_index();
    slot_ok[index] = false;
    if (!slots::open_slot(index, slots::layout_bytes(model_size, mlen, slen))) {
      refuse(r, kBusy, 0, "slot storage failed to erase");
      return 0;
    }
    t.open = true;
    t.xfer = xfer;
    t.model_size = model_size;
    memcpy(t.sha256, sha, 32);
    t.arena_bytes = arena;
    t.manifest_len = mlen;
    t.signature_len = slen;
    t.slot = index;
    t.held.clear();
  }
  Writer w{answer};
  w.u32(t.held.prefix());
  return w.n;
}

size_t data_ack(uint16_t xfer, uint32_t offset, uint32_t len, uint32_t contiguous) {
  Writer w{answer};
  w.u16(xfer);
  w.u32(offset);
  w.u16(len);
  w.u32(contiguous);
  return w.n;
}

size_t do_model_data(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "data frame", n, 6)) return 0;
  const uint16_t xfer = get_u16(p);
  const uint32_t offset = get_u32(p + 2);
  const uint32_t len = static_cast<uint32_t>(n - 6);
  Transfer& t = transfer;
  if (!t.open || t.xfer != xfer) {
    refuse(r, kSequence, kNoTransfer, "no transfer %u open", static_cast<unsigned>(xfer));
    return 0;
  }
  const uint64_t end = static_cast<uint64_t>(offset) + len;
  if (end > t.total()) {
    refuse(r, kTooLarge, t.total(), "bytes %u..%llu past the end %u", static_cast<unsigned>(offset),
           static_cast<unsigned long long>(end), static_cast<unsigned>(t.total()));
    return 0;
  }
  if (len > 0) {
    if (!slots::write_transfer(t.slot, t.model_size, t.manifest_len, t.signature_len, offset, p + 6, len)) {
      refuse(r, kBusy, 0, "slot storage failed to write");
      return 0;
    }
    if (!t.held.add(offset, offset + len)) {
      refuse(r, kSequence, t.held.prefix(), "too many gaps: send from %u", static_cast<unsigned>(t.held.prefix()));
      return 0;
    }
  }
  counters.model_bytes_received += len;
  return data_ack(xfer, offset, len, t.held.prefix());
}

// Signature (when keys are set), manifest, floor, then the model's hash, as device.py _verify.
bool verify(slots::SlotMeta* out, Refusal* r) {
  Transfer& t = transfer;
  const uint8_t* slot = slots::slot_data(t.slot);
  const uint8_t* manifest = slot + slots::align16(t.model_size);
  const uint8_t* signature = manifest + t.manifest_len;
  memset(out, 0, sizeof *out);
  out->version = slots::kNoVersion;
  uint32_t arena = t.arena_bytes;
  if (t.manifest_len > 0) {
    if (t.signature_len == 0) {
      if (key_count > 0) {
        t.open = false;
        refuse(r, kSignature, 0, "unsigned, and signatures are required");
        return false;
      }
    } else {
      if (t.signature_len != 64) {
        t.open = false;
        refuse(r, kSignature, 0, "signature has %u bytes, an Ed25519 signature has 64",
               static_cast<unsigned>(t.signature_len));
        return false;
      }
      bool ok = key_count == 0;
      for (size_t i = 0; i < key_count && !ok; ++i) {
        ok = ed25519_verify(signature, manifest, t.manifest_len, keys[i]);
      }
      if (!ok) {
        t.open = false;
        refuse(r, kSignature, 0, "signature does not verify with any trusted key");
        return false;
      }
    }
    Manifest m;
    char why[kNakMessageMax + 1];
    if (!parse_manifest(manifest, t.manifest_len, &m, why, sizeof why)) {
      t.open = false;
      refuse(r, kBadRequest, 0, "%s", why);
      return false;
    }
    if (!m.sha256_ok || memcmp(m.sha256, t.sha256, 32) != 0 || m.model_size != t.model_size) {
      t.open = false;
      refuse(r, kHashMismatch, 0, "MODEL_BEGIN and the manifest name different models");
      return false;
    }
    memcpy(out->name, m.name, sizeof out->name);
    out->version = m.version;
    if (arena == 0) arena = m.recommended_arena;
    const uint32_t floor = slots::floor(m.name);
    if (floor != slots::kNoVersion && m.version < floor) {
      t.open = false;
      refuse(r, kVersion, floor, "version %u is older than the confirmed %u", static_cast<unsigned>(m.version),
             static_cast<unsigned>(floor));
      return false;
    }
  } else if (key_count > 0) {
    t.open = false;
    refuse(r, kSignature, 0, "this device only takes signed artifacts");
    return false;
  }
  uint8_t digest[32];
  Sha256 sha;
  sha.update(slot, t.model_size);
  sha.finish(digest);
  if (memcmp(digest, t.sha256, 32) != 0) {
    char have[17], want[17];
    hex_prefix(digest, have);
    hex_prefix(t.sha256, want);
    t.open = false;
    refuse(r, kHashMismatch, 0, "sha256 %s... is not %s...", have, want);
    return false;
  }
  const uint32_t ram = static_cast<uint32_t>(runner::arena_capacity());
  if (arena == 0) {
    refuse(r, kBadRequest, 0, "no arena size given");
    return false;
  }
  if (arena > ram) {
    t.open = false;
    refuse(r, kArenaTooSmall, ram, "arena of %u bytes, %u available", static_cast<unsigned>(arena),
           static_cast<unsigned>(ram));
    return false;
  }
  out->size = t.model_size;
  out->arena_bytes = arena;
  memcpy(out->sha256, digest, 32);
  out->manifest_len = t.manifest_len;
  out->signature_len = t.signature_len;
  return true;
}

size_t do_model_commit(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "transfer id", n, 2)) return 0;
  const uint16_t xfer = get_u16(p);
  Transfer& t = transfer;
  if (!t.open || t.xfer != xfer) {
    refuse(r, kSequence, kNoTransfer, "no transfer %u open", static_cast<unsigned>(xfer));
    return 0;
  }
  const uint32_t gap = t.held.first_gap(t.total());
  if (gap < t.total()) {
    refuse(r, kIncomplete, gap, "bytes from %u missing", static_cast<unsigned>(gap));
    return 0;
  }
  slots::SlotMeta record;
  if (!verify(&record, r)) return 0;
  char why[kNakMessageMax + 1];
  const uint8_t* model = slots::slot_data(t.slot);
  const uint32_t arena = interpreter_arena(record.arena_bytes, model + slots::align16(record.size), t.manifest_len);
  const runner::Load loaded = runner::load(model, record.size, arena, why, sizeof why);
  if (loaded != runner::Load::kOk) {
    t.open = false;
    const uint32_t previous = active;
    active = slots::kNoSlot;
    output_valid = false;
    staged.xfer = 0;
    if (previous != slots::kNoSlot) {
      char ignored[8];
      load_slot(previous, ignored, sizeof ignored);  // the previous model runs on
    }
    if (loaded == runner::Load::kArena) {
      refuse(r, kArenaTooSmall, static_cast<uint32_t>(runner::arena_capacity()), "%s", why);
    } else {
      refuse(r, kModelInvalid, 0, "%s", why);
    }
    return 0;
  }
  const uint32_t index = t.slot;
  if (!slots::activate(index, record)) {
    t.open = false;
    const uint32_t previous = active;
    if (previous != slots::kNoSlot) {
      char ignored[8];
      load_slot(previous, ignored, sizeof ignored);
    } else {
      runner::unload();
    }
    refuse(r, kBusy, 0, "slot storage failed to write the meta record");
    return 0;
  }
  slot_ok[index] = true;
  active = index;
  t.open = false;
  staged.xfer = 0;
  output_valid = false;
  boot_error[0] = '\0';
  answer[0] = static_cast<uint8_t>(index);
  return 1;
}

size_t do_model_confirm(const uint8_t*, size_t, Refusal* r) {
  if (active == slots::kNoSlot) {
    refuse(r, kNoModel, 0, "no model to confirm");
    return 0;
  }
  if (!slots::confirm()) {
    refuse(r, kBusy, 0, "slot storage failed to write the meta record");
    return 0;
  }
  answer[0] = static_cast<uint8_t>(active);
  return 1;
}

bool require_model(Refusal* r) {
  if (active != slots::kNoSlot && runner::loaded()) return true;
  if (boot_error[0] != '\0') {
    refuse(r, kNoModel, 0, "no model: flash one first (%s)", boot_error);
  } else {
    refuse(r, kNoModel, 0, "no model: flash one first");
  }
  return false;
}

size_t do_input_data(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "data frame", n, 6)) return 0;
  const uint16_t xfer = get_u16(p);
  const uint32_t offset = get_u32(p + 2);
  const uint32_t len = static_cast<uint32_t>(n - 6);
  if (!require_model(r)) return 0;
  if (xfer == 0) {
    refuse(r, kBadRequest, 0, "transfer id 0 is reserved");
    return 0;
  }
  if (staged.xfer != xfer) {
    staged.xfer = xfer;
    staged.held.clear();
  }
  const uint32_t input_bytes = runner::input_bytes();
  const uint64_t end = static_cast<uint64_t>(offset) + len;
  if (end > input_bytes) {
    refuse(r, kTooLarge, input_bytes, "input has %u bytes", static_cast<unsigned>(input_bytes));
    return 0;
  }
  runner::write_input(offset, p + 6, len);
  if (!staged.held.add(offset, offset + len)) {
    refuse(r, kSequence, staged.held.prefix(), "too many gaps: send from %u", static_cast<unsigned>(staged.held.prefix()));
    return 0;
  }
  return data_ack(xfer, offset, len, staged.held.prefix());
}

// INVOKE answers too large to keep are rebuilt from the output tensors on a repeat.
uint32_t last_invoke_us_for_answer = 0;
uint32_t last_invoke_room = 0;

size_t do_invoke(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "INVOKE", n, 12)) return 0;
  const uint16_t xfer = get_u16(p);
  const uint32_t input_len = get_u32(p + 2);
  const uint32_t input_crc = get_u32(p + 6);
  const uint16_t reply_max = get_u16(p + 10);
  const uint8_t* inline_data = p + 12;
  const uint32_t inline_len = static_cast<uint32_t>(n - 12);
  if (!require_model(r)) return 0;
  const uint32_t input_bytes = runner::input_bytes();
  if (input_len != input_bytes) {
    refuse(r, kBadRequest, input_bytes, "the model takes %u input bytes, not %u", static_cast<unsigned>(input_bytes),
           static_cast<unsigned>(input_len));
    return 0;
  }
  if (xfer == 0) {
    if (inline_len != input_len) {
      refuse(r, kBadRequest, 0, "%u inline input bytes, %u announced", static_cast<unsigned>(inline_len),
             static_cast<unsigned>(input_len));
      return 0;
    }
    const uint32_t crc = lf_crc32(0, inline_data, inline_len);
    if (crc != input_crc) {
      refuse(r, kHashMismatch, crc, "input CRC mismatch");
      return 0;
    }
    runner::write_input(0, inline_data, inline_len);
    staged.xfer = 0;  // the input tensors now hold this input
  } else {
    if (staged.xfer != xfer) {
      refuse(r, kSequence, kNoTransfer, "no input %u staged", static_cast<unsigned>(xfer));
      return 0;
    }
    const uint32_t gap = staged.held.first_gap(input_bytes);
    if (gap < input_bytes) {
      refuse(r, kIncomplete, gap, "input bytes from %u missing", static_cast<unsigned>(gap));
      return 0;
    }
    const uint32_t crc = runner::input_crc32();
    if (crc != input_crc) {
      refuse(r, kHashMismatch, crc, "input CRC mismatch");
      return 0;
    }
  }
  // The interpreter may reuse the input tensors' memory: the staged input is spent either way.
  staged.xfer = 0;
  const uint32_t start = board::micros();
  const bool ok = runner::invoke();
  const uint32_t us = board::micros() - start;
  ++invoke_generation;
  if (!ok) {
    ++counters.invoke_errors;
    output_valid = false;
    refuse(r, kInvokeFailed, 0, "TFLite Micro: Invoke failed");
    return 0;
  }
  ++counters.invocations;
  counters.last_invoke_us = us;
  output_valid = true;
  last_invoke_us_for_answer = us;
  last_invoke_room = room_for(reply_max, 12);
  return invoke_answer(answer, us, last_invoke_room);
}

size_t do_output_read(const uint8_t* p, size_t n, Refusal* r) {
  if (!need(r, "OUTPUT_READ", n, 6)) return 0;
  const uint32_t offset = get_u32(p);
  const uint16_t max_len = get_u16(p + 4);
  if (!output_valid) {
    refuse(r, kSequence, kNoTransfer, "no output to read: INVOKE first");
    return 0;
  }
  const uint32_t total = runner::output_bytes();
  if (offset > total) {
    refuse(r, kTooLarge, total, "output has %u bytes", static_cast<unsigned>(total));
    return 0;
  }
  uint32_t room = room_for(max_len, 4);
  if (room < 1) room = 1;
  Writer w{answer};
  w.u32(offset);
  w.n += runner::read_output(offset, answer + w.n, room);
  return w.n;
}

size_t do_reset(const uint8_t*, size_t, Refusal*) {
  reset_pending = true;
  return 0;
}

using Handler = size_t (*)(const uint8_t*, size_t, Refusal*);

Handler handler_for(uint8_t type) {
  switch (type) {
    case kHello: return do_hello;
    case kInfo: return do_info;
    case kStats: return do_stats;
    case kModelBegin: return do_model_begin;
    case kModelData: return do_model_data;
    case kModelCommit: return do_model_commit;
    case kModelConfirm: return do_model_confirm;
    case kInputData: return do_input_data;
    case kInvoke: return do_invoke;
    case kOutputRead: return do_output_read;
    case kReset: return do_reset;
    default: return nullptr;
  }
}

// --- the line ------------------------------------------------------------------------------

Remembered* find_remembered(uint16_t seq, uint8_t type, uint32_t crc) {
  for (auto& a : remembered) {
    if (a.used && a.seq == seq && a.type == type && a.crc == crc) return &a;
  }
  return nullptr;
}

void replay(const Remembered& a) {
  if (a.kind == 0) {
    memcpy(answer, a.bytes + 1, a.len - 1u);
    send(a.bytes[0], a.seq, answer, a.len - 1u);
  } else {
    const size_t len = invoke_answer(answer, get_u32(a.bytes), a.len);
    send(kAck, a.seq, answer, len);
  }
}

// A remembered INVOKE answer rebuilt from the output tensors holds only until the next INVOKE.
bool replayable(const Remembered& a) { return a.kind == 0 || (a.generation == invoke_generation && output_valid); }

void remember(uint16_t seq, uint8_t type, uint32_t crc, uint8_t answer_type, const uint8_t* payload, size_t len,
              bool invoke_ack) {
  Remembered& a = remembered[remembered_next];
  remembered_next = (remembered_next + 1) % kRemembered;
  a.used = true;
  a.seq = seq;
  a.type = type;
  a.crc = crc;
  a.generation = invoke_generation;
  if (len + 1 <= sizeof a.bytes) {
    a.kind = 0;
    a.bytes[0] = answer_type;
    memcpy(a.bytes + 1, payload, len);
    a.len = static_cast<uint16_t>(len + 1);
  } else if (invoke_ack) {
    a.kind = 1;
    memcpy(a.bytes, payload, 4);  // device_us
    a.len = static_cast<uint16_t>(last_invoke_room);
  } else {
    a.used = false;  // cannot happen: every other remembered answer is small
  }
}

void request(const lf_frame& f) {
  if (f.type >= kAck) return;  // an answer type: our own echo on a loop, or noise
  const bool remembered_type = f.type == kModelCommit || f.type == kInvoke;
  const uint32_t crc = lf_crc32(0, f.payload, f.length);
  if (remembered_type) {
    if (Remembered* a = find_remembered(f.seq, f.type, crc)) {
      if (replayable(*a)) {
        replay(*a);
        return;
      }
      a->used = false;  // its outputs are gone (a later INVOKE ran): run it again
    }
  }
  // The payload lives in the decoder's buffer, which is not touched until the next feed.
  Refusal r;
  size_t len = 0;
  Handler h = handler_for(f.type);
  if (h == nullptr) {
    refuse(&r, kUnsupported, LF_PROTOCOL_VERSION, "unknown request type 0x%02x", f.type);
  } else {
    len = h(f.payload, f.length, &r);
  }
  if (r.refused) {
    ++counters.naks_sent;
    len = nak_payload(answer, r.code, f.type, r.detail, r.message);
    send(kNak, f.seq, answer, len);
    if (remembered_type) remember(f.seq, f.type, crc, kNak, answer, len, false);
  } else {
    send(kAck, f.seq, answer, len);
    if (remembered_type) remember(f.seq, f.type, crc, kAck, answer, len, f.type == kInvoke);
  }
}

void frame_error(lf_status status, const lf_frame& f) {
  ++counters.frames_bad;
  if (status == LF_ERR_CRC) ++counters.crc_errors;
  if (!f.header_valid) return;  // nothing to answer to: garbage, or a frame cut short
  char text[64];
  switch (status) {
    case LF_ERR_CRC:
      if (f.header_consistent) send_nak(f.seq, f.type, kCrc, 0, "frame CRC mismatch");
      break;
    case LF_ERR_OVERFLOW:
      snprintf(text, sizeof text, "frame exceeds %u payload bytes", static_cast<unsigned>(kMaxPayload));
      send_nak(f.seq, f.type, kTooLarge, kMaxPayload, text);
      break;
    case LF_ERR_VERSION:
      snprintf(text, sizeof text, "protocol version %u only", static_cast<unsigned>(LF_PROTOCOL_VERSION));
      send_nak(f.seq, f.type, kUnsupported, LF_PROTOCOL_VERSION, text);
      break;
    case LF_ERR_LENGTH:
      snprintf(text, sizeof text, "header says %u payload bytes, frame has another length",
               static_cast<unsigned>(f.length));
      send_nak(f.seq, f.type, kBadRequest, 0, text);
      break;
    default:
      break;
  }
}

}  // namespace

void boot(const uint8_t (*trusted_keys)[32], size_t count) {
  keys = trusted_keys;
  key_count = count > kMaxKeys ? kMaxKeys : count;
  lf_decoder_init(&decoder, rx_buf, sizeof rx_buf);
  last_micros = board::micros();
  slots::init();
  for (uint32_t i = 0; i < slots::kSlotCount; ++i) slot_ok[i] = slot_hash_ok(i);
  const uint32_t index = slots::meta().active;
  if (index != slots::kNoSlot && slot_ok[index]) {
    char why[80];
    if (!load_slot(index, why, sizeof why)) {
      snprintf(boot_error, sizeof boot_error, "slot %u: %s", static_cast<unsigned>(index), why);
    }
  }
}

void announce() {
  const size_t n = hello_payload(answer);
  send(kAnnounce, 0, answer, n);
}

void tick() {
  const uint32_t now = board::micros();
  uptime_us += static_cast<uint32_t>(now - last_micros);
  last_micros = now;
}

void feed(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len && !reset_pending; ++i) {
    lf_frame f;
    const lf_status s = lf_decoder_feed(&decoder, data[i], &f);
    if (s == LF_NONE) continue;
    if (s == LF_FRAME) {
      ++counters.frames_ok;
      request(f);
    } else {
      frame_error(s, f);
    }
  }
}

bool reset_requested() { return reset_pending; }

}  // namespace lepton::device
