// What a port's main() calls: the device loop, and the arena probe.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton {

// Boot (load the active slot, after checking its SHA-256), send ANNOUNCE, serve PROTOCOL.md forever.
// trusted_keys: raw Ed25519 public keys; with any, the device requires signed manifests.
// Calls board::init() first.
[[noreturn]] void run(const uint8_t (*trusted_keys)[32], size_t key_count);

struct ProbeResult {
  bool ok;
  uint32_t head;       // non-persistent bytes TFLite Micro used, on the full capacity
  uint32_t tail;       // persistent bytes
  uint32_t used;       // head + tail (MicroInterpreter::arena_used_bytes())
  uint32_t min_arena;  // smallest arena (multiple of 16) with which AllocateTensors and Invoke succeed
  const char* error;   // when !ok
};

// Measure the arena a model needs on this target, with this firmware's op resolver and kernels.
// capacity 0: the firmware's whole arena (ARENA_RAM_BYTES). The model must stay readable and
// 16-byte aligned while this runs.
ProbeResult probe(const uint8_t* model, size_t model_len, size_t capacity);

// The probe's one JSON line (no newline):
// {"head": H, "tail": T, "used": U, "min_arena": M, "ok": true} or {"ok": false, "error": "..."}.
// Returns its length (0 if cap is too small).
size_t probe_json(const ProbeResult& result, char* out, size_t cap);

}  // namespace lepton
