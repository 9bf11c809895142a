// Writes of any offset and length onto a flash that programs 64-bit double words, each only once
// after an erase (STM32L4: programming a double word that is not erased fails with PROGERR).
// A double word written in part waits in a small table until all 8 bytes are known, or until
// flush(); so chunks that split a double word, in any order, program it once.
// No hardware here: the board passes the flash's read view and its double-word program operation
// (and the host test passes a simulated flash with the same rule).
#pragma once
#include <cstdint>
#include <cstring>

namespace lepton::nucleo {

struct FlashOps {
  // Program the erased double word at addr (8-byte aligned) with lo (bytes 0-3), hi (bytes 4-7).
  bool (*program_dword)(uint32_t addr, uint32_t lo, uint32_t hi);
  // The flash's current contents at addr (8 bytes).
  const uint8_t* (*view)(uint32_t addr);
};

// Programs `bytes` where `mask` says (the flash's current bytes elsewhere) into the double word at
// addr. Nothing to do when the flash already holds that; false when the double word was programmed
// before with something else (it must be erased first) or programming failed.
inline bool program_merged(const FlashOps& ops, uint32_t addr, const uint8_t* bytes, uint8_t mask) {
  uint8_t now[8], want[8];
  std::memcpy(now, ops.view(addr), 8);
  for (int i = 0; i < 8; ++i) want[i] = (mask >> i) & 1 ? bytes[i] : now[i];
  if (std::memcmp(now, want, 8) == 0) return true;
  for (int i = 0; i < 8; ++i) {
    if (now[i] != 0xFF) return false;
  }
  uint32_t lo, hi;
  std::memcpy(&lo, want, 4);
  std::memcpy(&hi, want + 4, 4);
  return ops.program_dword(addr, lo, hi) && std::memcmp(ops.view(addr), want, 8) == 0;
}

template <int kPendingMax>
class DwordWriter {
 public:
  constexpr explicit DwordWriter(const FlashOps& ops) : ops_(ops) {}

  // Bytes [addr, addr + len) of the flash.
  bool write(uint32_t addr, const uint8_t* data, uint32_t len) {
    while (len > 0) {
      const uint32_t dword = addr & ~7u, from = addr - dword;
      const uint32_t n = 8 - from < len ? 8 - from : len;
      if (!write_dword(dword, from, data, n)) return false;
      addr += n;
      data += n;
      len -= n;
    }
    return true;
  }

  // Programs the double words still written in part (their other bytes stay as they are: erased).
  bool flush() {
    bool ok = true;
    for (Pending& p : pending_) {
      if (p.used && !program_pending(p)) ok = false;
    }
    return ok;
  }

  // Forgets what is pending in [begin, end): the range is being erased.
  void drop(uint32_t begin, uint32_t end) {
    for (Pending& p : pending_) {
      if (p.used && p.addr >= begin && p.addr < end) p.used = false;
    }
  }

  int pending() const {
    int n = 0;
    for (const Pending& p : pending_) n += p.used;
    return n;
  }

 private:
  struct Pending {
    uint32_t addr;
    uint8_t bytes[8];
    uint8_t mask;  // which bytes were written
    bool used;
  };

  bool program_pending(Pending& p) {
    p.used = false;
    return program_merged(ops_, p.addr, p.bytes, p.mask);
  }

  bool write_dword(uint32_t addr, uint32_t from, const uint8_t* data, uint32_t n) {
    Pending* slot = nullptr;
    Pending* free_slot = nullptr;
    for (Pending& p : pending_) {
      if (p.used && p.addr == addr) slot = &p;
      if (!p.used && free_slot == nullptr) free_slot = &p;
    }
    if (slot == nullptr && n == 8) return program_merged(ops_, addr, data, 0xFF);
    if (slot == nullptr) {
      if (free_slot == nullptr) {  // table full: program the oldest-placed entry as it is
        free_slot = &pending_[next_evict_];
        next_evict_ = (next_evict_ + 1) % kPendingMax;
        if (!program_pending(*free_slot)) return false;
      }
      slot = free_slot;
      slot->addr = addr;
      slot->mask = 0;
      slot->used = true;
    }
    for (uint32_t i = 0; i < n; ++i) {
      slot->bytes[from + i] = data[i];
      slot->mask = static_cast<uint8_t>(slot->mask | (1u << (from + i)));
    }
    return slot->mask == 0xFF ? program_pending(*slot) : true;
  }

  const FlashOps& ops_;
  Pending pending_[kPendingMax] = {};
  int next_evict_ = 0;
};

}  // namespace lepton::nucleo
