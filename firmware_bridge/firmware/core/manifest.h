// The fields of manifest.json the device needs, checked as lepton_edge.artifact.parse_manifest
// checks them: name, version, model.sha256, model.size, arena.recommended_bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton {

constexpr size_t kNameMax = 63;  // longest model name kept (UTF-8 bytes; longer names are cut)

struct Manifest {
  char name[kNameMax + 1];
  uint32_t version;
  uint8_t sha256[32];
  bool sha256_ok;  // lowercase hex (else it cannot name the announced model)
  uint32_t model_size;
  uint32_t recommended_arena;  // 0 when absent or null
  uint32_t host_recommended_arena;  // arena.host_recommended_bytes (x86-64 TFLM's figure), 0 when absent
};

// false with a message in `why` (as the Python parser's, without the "manifest: " prefix).
bool parse_manifest(const uint8_t* json, size_t len, Manifest* out, char* why, size_t why_cap);

}  // namespace lepton
