// TFLite Micro: the op resolver of ops.h, a static arena, head/tail from the arena allocator,
// the interpreter placement-new'ed into static storage (no heap), and the arena probe.
#include "core/model_runner.h"

#include <cstdio>
#include <cstring>
#include <new>

#include "core/lepton.h"
#include "core/ops.h"
#include "lepton_frame.h"
#include "tensorflow/lite/micro/arena_allocator/single_arena_buffer_allocator.h"
#include "tensorflow/lite/micro/memory_planner/greedy_memory_planner.h"
#include "tensorflow/lite/micro/micro_allocator.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include "tensorflow/compiler/mlir/lite/schema/schema_utils.h"

#ifndef LEPTON_ARENA_RAM_BYTES
#error LEPTON_ARENA_RAM_BYTES must be defined (board.mk ARENA_RAM_BYTES)
#endif

// The arena: the board may place it (a section named for its map file) with LEPTON_ARENA_SECTION.
// ARENA_RAM_BYTES is what the device offers models; a board that stands in for a 32-bit device on a
// 64-bit host may give TFLite Micro more room behind it (LEPTON_ARENA_STATIC_BYTES, see device.cc).
#ifndef LEPTON_ARENA_STATIC_BYTES
#define LEPTON_ARENA_STATIC_BYTES LEPTON_ARENA_RAM_BYTES
#endif
static_assert(LEPTON_ARENA_STATIC_BYTES >= LEPTON_ARENA_RAM_BYTES, "the static arena holds the RAM budget");
#ifdef LEPTON_ARENA_SECTION
__attribute__((section(LEPTON_ARENA_SECTION)))
#endif
alignas(16) uint8_t lepton_arena[LEPTON_ARENA_STATIC_BYTES];

namespace lepton::runner {
namespace {

using Resolver = tflite::MicroMutableOpResolver<kOpCount>;

alignas(Resolver) uint8_t resolver_storage[sizeof(Resolver)];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
Resolver* resolver = nullptr;
tflite::MicroInterpreter* interpreter = nullptr;
tflite::SingleArenaBufferAllocator* buffers = nullptr;
uint32_t model_arena = 0;
uint32_t n_input_bytes = 0;
uint32_t n_output_bytes = 0;

Resolver& ops() {
  if (resolver == nullptr) {
    resolver = new (resolver_storage) Resolver();
#define LEPTON_ADD_OP(name, method) resolver->method();
    LEPTON_OPS(LEPTON_ADD_OP)
#undef LEPTON_ADD_OP
  }
  return *resolver;
}

void say(char* why, size_t cap, const char* text) {
  if (why != nullptr && cap > 0) {
    snprintf(why, cap, "%s", text);
  }
}

// Structure checks before TFLite Micro touches the model: a flatbuffer that verifies, the schema
// version, and every operator in our resolver.
bool check_model(const uint8_t* data, size_t len, char* why, size_t cap) {
  flatbuffers::Verifier verifier(data, len);
  if (len < 8 || !tflite::VerifyModelBuffer(verifier)) {
    say(why, cap, "not a TFLite model (the flatbuffer does not verify)");
    return false;
  }
  const tflite::Model* model = tflite::GetModel(data);
  if (model->version() != TFLITE_SCHEMA_VERSION) {
    snprintf(why, cap, "TFLite schema version %u, this firmware reads %d",
             static_cast<unsigned>(model->version()), TFLITE_SCHEMA_VERSION);
    return false;
  }
  if (model->subgraphs() == nullptr || model->subgraphs()->size() == 0) {
    say(why, cap, "the model has no subgraph");
    return false;
  }
  // Every operator the resolver lacks, named as the simulator names them (engine.py _missing_ops).
  const auto* codes = model->operator_codes();
  char missing[96];
  size_t used = 0;
  missing[0] = '\0';
  if (codes != nullptr) {
    for (const tflite::OperatorCode* code : *codes) {
      const tflite::BuiltinOperator op = tflite::GetBuiltinCode(code);
      const char* name = nullptr;
      if (op == tflite::BuiltinOperator_CUSTOM) {
        name = code->custom_code() != nullptr ? code->custom_code()->c_str() : "CUSTOM";
      } else if (ops().FindOp(op) == nullptr) {
        name = tflite::EnumNameBuiltinOperator(op);
        if (name == nullptr || name[0] == '\0') name = "UNKNOWN";
      }
      if (name == nullptr || strstr(missing, name) != nullptr) continue;
      const int n = snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", name);
      if (n > 0) used += static_cast<size_t>(n);
      if (used >= sizeof missing) {
        used = sizeof missing - 1;
        break;
      }
    }
  }
  if (used > 0) {
    snprintf(why, cap, "operator %s is not in the firmware's op list (core/ops.h)", missing);
    return false;
  }
  return true;
}

// Builds an interpreter over arena[0, size) and allocates tensors. Leaves it in `interpreter`.
bool build(const uint8_t* data, size_t size) {
  if (interpreter != nullptr) {
    interpreter->~MicroInterpreter();
    interpreter = nullptr;
  }
  buffers = nullptr;
  // TFLite Micro places its own objects in the arena without checking they fit: check first.
  constexpr size_t kObjects = sizeof(tflite::SingleArenaBufferAllocator) + sizeof(tflite::GreedyMemoryPlanner) +
                              sizeof(tflite::MicroAllocator) + 64;
  if (size < kObjects || size > sizeof(lepton_arena)) {
    return false;
  }
  buffers = tflite::SingleArenaBufferAllocator::Create(lepton_arena, size);
  if (buffers == nullptr) {
    return false;
  }
  uint8_t* planner_buffer = buffers->AllocatePersistentBuffer(sizeof(tflite::GreedyMemoryPlanner),
                                                              alignof(tflite::GreedyMemoryPlanner));
  if (planner_buffer == nullptr) {
    return false;
  }
  auto* planner = new (planner_buffer) tflite::GreedyMemoryPlanner();
  if (buffers->GetAvailableMemory(alignof(tflite::MicroAllocator)) < sizeof(tflite::MicroAllocator)) {
    return false;
  }
  tflite::MicroAllocator* allocator = tflite::MicroAllocator::Create(buffers, planner);
  if (allocator == nullptr) {
    return false;
  }
  interpreter = new (interpreter_storage) tflite::MicroInterpreter(tflite::GetModel(data), ops(), allocator);
  return interpreter->initialization_status() == kTfLiteOk && interpreter->AllocateTensors() == kTfLiteOk;
}

void drop() {
  if (interpreter != nullptr) {
    interpreter->~MicroInterpreter();
    interpreter = nullptr;
  }
  buffers = nullptr;
  model_arena = n_input_bytes = n_output_bytes = 0;
}

uint32_t sum_bytes(bool inputs) {
  uint32_t total = 0;
  const size_t n = inputs ? interpreter->inputs_size() : interpreter->outputs_size();
  for (size_t i = 0; i < n; ++i) {
    const TfLiteTensor* t = inputs ? interpreter->input(i) : interpreter->output(i);
    total += t != nullptr ? static_cast<uint32_t>(t->bytes) : 0;
  }
  return total;
}

bool zero_inputs() {
  for (size_t i = 0; i < interpreter->inputs_size(); ++i) {
    TfLiteTensor* t = interpreter->input(i);
    if (t == nullptr || (t->bytes > 0 && t->data.raw == nullptr)) {
      return false;
    }
    if (t->bytes > 0) {
      memset(t->data.raw, 0, t->bytes);
    }
  }
  return true;
}

// Walk the concatenated tensors: calls fn(tensor_bytes, offset_in_tensor, count, done_so_far).
template <typename Fn>
uint32_t walk(bool inputs, uint32_t offset, uint32_t n, Fn fn) {
  uint32_t at = 0, done = 0;
  const size_t count = inputs ? interpreter->inputs_size() : interpreter->outputs_size();
  for (size_t i = 0; i < count && done < n; ++i) {
    TfLiteTensor* t = inputs ? interpreter->input(i) : interpreter->output(i);
    const uint32_t size = static_cast<uint32_t>(t->bytes);
    const uint32_t start = offset + done;
    if (start < at + size) {
      const uint32_t in_tensor = start - at;
      uint32_t take = size - in_tensor;
      if (take > n - done) take = n - done;
      fn(reinterpret_cast<uint8_t*>(t->data.raw) + in_tensor, take, done);
      done += take;
    }
    at += size;
  }
  return done;
}

}  // namespace

size_t arena_capacity() { return LEPTON_ARENA_RAM_BYTES; }

Load load(const uint8_t* model, size_t model_len, size_t arena, char* why, size_t cap) {
  drop();
  say(why, cap, "");
  if (!check_model(model, model_len, why, cap)) {
    return Load::kInvalid;
  }
  if (arena > sizeof(lepton_arena)) {
    snprintf(why, cap, "arena of %u bytes exceeds the %u bytes of RAM", static_cast<unsigned>(arena),
             static_cast<unsigned>(arena_capacity()));
    return Load::kArena;
  }
  if (!build(model, arena)) {
    // Too small an arena, or a model TFLite Micro cannot prepare? Try the whole arena to tell.
    const bool fits_larger = arena < sizeof(lepton_arena) && build(model, sizeof(lepton_arena));
    drop();
    if (fits_larger) {
      snprintf(why, cap, "TFLite Micro cannot allocate the model in an arena of %u bytes",
               static_cast<unsigned>(arena));
      return Load::kArena;
    }
    say(why, cap, "TFLite Micro cannot prepare the model (AllocateTensors failed)");
    return Load::kInvalid;
  }
  model_arena = static_cast<uint32_t>(arena);
  n_input_bytes = sum_bytes(true);
  n_output_bytes = sum_bytes(false);
  return Load::kOk;
}

void unload() { drop(); }
bool loaded() { return interpreter != nullptr; }
uint32_t arena_bytes() { return model_arena; }
uint32_t head_bytes() { return buffers != nullptr && interpreter ? static_cast<uint32_t>(buffers->GetNonPersistentUsedBytes()) : 0; }
uint32_t tail_bytes() { return buffers != nullptr && interpreter ? static_cast<uint32_t>(buffers->GetPersistentUsedBytes()) : 0; }
uint32_t input_bytes() { return n_input_bytes; }
uint32_t output_bytes() { return n_output_bytes; }

bool write_input(uint32_t offset, const uint8_t* data, uint32_t n) {
  if (interpreter == nullptr || offset > n_input_bytes || n > n_input_bytes - offset) {
    return false;
  }
  walk(true, offset, n, [&](uint8_t* dst, uint32_t take, uint32_t done) { memcpy(dst, data + done, take); });
  return true;
}

uint32_t input_crc32() {
  uint32_t crc = 0;
  if (interpreter != nullptr) {
    walk(true, 0, n_input_bytes, [&](uint8_t* src, uint32_t take, uint32_t) { crc = lf_crc32(crc, src, take); });
  }
  return crc;
}

bool invoke() { return interpreter != nullptr && interpreter->Invoke() == kTfLiteOk; }

uint32_t read_output(uint32_t offset, uint8_t* out, uint32_t n) {
  if (interpreter == nullptr || offset >= n_output_bytes) {
    return 0;
  }
  if (n > n_output_bytes - offset) n = n_output_bytes - offset;
  return walk(false, offset, n, [&](uint8_t* src, uint32_t take, uint32_t done) { memcpy(out + done, src, take); });
}

uint32_t output_crc32() {
  uint32_t crc = 0;
  if (interpreter != nullptr) {
    walk(false, 0, n_output_bytes, [&](uint8_t* src, uint32_t take, uint32_t) { crc = lf_crc32(crc, src, take); });
  }
  return crc;
}

}  // namespace lepton::runner

namespace lepton {

ProbeResult probe(const uint8_t* model, size_t model_len, size_t capacity) {
  using namespace lepton::runner;
  ProbeResult r{false, 0, 0, 0, 0, nullptr};
  static char why[128];
  if (capacity == 0) capacity = arena_capacity();
  if (capacity > sizeof(lepton_arena)) {
    snprintf(why, sizeof why, "capacity %u is above this firmware's arena of %u bytes",
             static_cast<unsigned>(capacity), static_cast<unsigned>(sizeof(lepton_arena)));
    r.error = why;
    return r;
  }
  capacity &= ~static_cast<size_t>(15);
  if (!check_model(model, model_len, why, sizeof why)) {
    r.error = why;
    return r;
  }
  auto runs = [&](size_t size) {
    const bool ok = build(model, size) && zero_inputs() && interpreter->Invoke() == kTfLiteOk;
    return ok;
  };
  if (!runs(capacity)) {
    drop();
    snprintf(why, sizeof why, "the model does not run in an arena of %u bytes", static_cast<unsigned>(capacity));
    r.error = why;
    return r;
  }
  r.head = static_cast<uint32_t>(buffers->GetNonPersistentUsedBytes());
  r.tail = static_cast<uint32_t>(buffers->GetPersistentUsedBytes());
  r.used = static_cast<uint32_t>(interpreter->arena_used_bytes());
  // Smallest multiple of 16 that runs: [lo, hi] with hi known to run.
  size_t lo = 16, hi = capacity;
  size_t guess = (r.used + 15) & ~static_cast<size_t>(15);
  if (guess < hi && runs(guess)) {
    hi = guess;
  } else if (guess < hi) {
    lo = guess + 16;
  }
  while (lo < hi) {
    const size_t mid = ((lo + hi) / 2) & ~static_cast<size_t>(15);
    const size_t m = mid < lo ? lo : mid;
    if (runs(m)) {
      hi = m;
    } else {
      lo = m + 16;
    }
  }
  drop();
  r.min_arena = static_cast<uint32_t>(hi);
  r.ok = true;
  return r;
}

size_t probe_json(const ProbeResult& r, char* out, size_t cap) {
  int n;
  if (r.ok) {
    n = snprintf(out, cap, "{\"head\": %u, \"tail\": %u, \"used\": %u, \"min_arena\": %u, \"ok\": true}",
                 static_cast<unsigned>(r.head), static_cast<unsigned>(r.tail), static_cast<unsigned>(r.used),
                 static_cast<unsigned>(r.min_arena));
  } else {
    char escaped[160];
    size_t j = 0;
    for (const char* c = r.error != nullptr ? r.error : "probe failed"; *c != '\0' && j + 2 < sizeof escaped; ++c) {
      if (*c == '"' || *c == '\\') escaped[j++] = '\\';
      escaped[j++] = (*c >= 0x20) ? *c : ' ';
    }
    escaped[j] = '\0';
    n = snprintf(out, cap, "{\"ok\": false, \"error\": \"%s\"}", escaped);
  }
  return (n < 0 || static_cast<size_t>(n) >= cap) ? 0 : static_cast<size_t>(n);
}

}  // namespace lepton
