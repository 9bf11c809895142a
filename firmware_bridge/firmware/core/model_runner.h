// TFLite Micro on a static arena: one model at a time, inputs and outputs as concatenated bytes.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton::runner {

enum class Load { kOk, kInvalid, kArena };

// Load a model (read in place: it must stay readable, 16-byte aligned) with the first arena_bytes
// of the static arena (at most arena_capacity()). On failure, why holds a message (NUL-terminated).
Load load(const uint8_t* model, size_t model_len, size_t arena_bytes, char* why, size_t why_cap);
void unload();
bool loaded();
size_t arena_capacity();

uint32_t arena_bytes();  // of the loaded model (0 without one)
uint32_t head_bytes();   // non-persistent bytes TFLite Micro uses (0 without a model)
uint32_t tail_bytes();   // persistent bytes

uint32_t input_bytes();   // sum over input tensors
uint32_t output_bytes();  // sum over output tensors
// Bytes [offset, offset+n) of the concatenated input tensors; false when past the end.
bool write_input(uint32_t offset, const uint8_t* data, uint32_t n);
uint32_t input_crc32();
bool invoke();
// Copies up to n bytes of the concatenated outputs from offset; returns how many.
uint32_t read_output(uint32_t offset, uint8_t* out, uint32_t n);
uint32_t output_crc32();

}  // namespace lepton::runner
