#include "core/slots.h"

#include <cstring>

#include "core/board.h"
#include "lepton_frame.h"

namespace lepton::slots {
namespace {

constexpr uint32_t kMagic = 0x4C45534Cu;  // "LSEL"
MetaRecord current;
uint32_t current_page = 1;  // which record page holds `current` (the next write goes to the other)

uint32_t page_bytes() {
  const uint32_t p = board::storage_page_bytes();
  return p > 4096 ? p : 4096;
}

uint32_t record_crc(const MetaRecord& r) {
  return lf_crc32(0, reinterpret_cast<const uint8_t*>(&r), offsetof(MetaRecord, crc));
}

bool valid_record(const MetaRecord& r) {
  return r.magic == kMagic && r.crc == record_crc(r) && (r.active == kNoSlot || r.active < kSlotCount);
}

bool write_meta(MetaRecord next) {
  next.magic = kMagic;
  next.sequence = current.sequence + 1;
  next.crc = record_crc(next);
  const uint32_t page = current_page ^ 1u;
  const uint32_t offset = page * page_bytes();
  if (!board::storage_erase(offset, page_bytes()) ||
      !board::storage_write(offset, reinterpret_cast<const uint8_t*>(&next), sizeof next) ||
      !board::storage_flush()) {
    return false;
  }
  current = next;
  current_page = page;
  return true;
}

}  // namespace

void init() {
  MetaRecord a, b;
  memcpy(&a, board::storage_map(), sizeof a);
  memcpy(&b, board::storage_map() + page_bytes(), sizeof b);
  const bool va = valid_record(a), vb = valid_record(b);
  if (va && (!vb || a.sequence >= b.sequence)) {
    current = a;
    current_page = 0;
  } else if (vb) {
    current = b;
    current_page = 1;
  } else {
    memset(&current, 0, sizeof current);
    current.magic = kMagic;
    current.active = kNoSlot;
    current_page = 1;
  }
  for (auto& s : current.slot) s.name[kNameMax] = '\0';
  for (auto& f : current.floors) f.name[kNameMax] = '\0';
}

const MetaRecord& meta() { return current; }
uint32_t meta_bytes() { return 2 * page_bytes(); }
uint32_t slot_offset(uint32_t index) { return meta_bytes() + index * kSlotBytes; }
const uint8_t* slot_data(uint32_t index) { return board::storage_map() + slot_offset(index); }
uint32_t align16(uint32_t n) { return (n + 15u) & ~15u; }

uint32_t inactive_index() { return current.active == kNoSlot ? 0 : (current.active + 1) % kSlotCount; }

uint32_t layout_bytes(uint32_t model_size, uint32_t manifest_len, uint32_t signature_len) {
  return align16(model_size) + manifest_len + signature_len;
}

bool open_slot(uint32_t index, uint32_t bytes) {
  if (current.slot[index].valid || current.active == index) {
    MetaRecord next = current;
    memset(&next.slot[index], 0, sizeof next.slot[index]);
    if (next.active == index) {
      next.active = kNoSlot;
      next.confirmed = 0;
    }
    if (!write_meta(next)) return false;
  }
  const uint32_t page = board::storage_page_bytes();
  uint32_t len = (bytes + page - 1) & ~(page - 1);
  if (len > kSlotBytes) len = kSlotBytes;
  return len == 0 || board::storage_erase(slot_offset(index), len);
}

bool write_transfer(uint32_t index, uint32_t model_size, uint32_t manifest_len, uint32_t signature_len,
                    uint32_t offset, const uint8_t* data, uint32_t len) {
  const uint32_t base = slot_offset(index);
  const uint32_t extras = align16(model_size);  // where the manifest and signature go
  const uint32_t head = manifest_len + signature_len;
  // Transfer bytes [0, head): manifest and signature; [head, head+model_size): the model.
  while (len > 0) {
    uint32_t at, take;
    if (offset < head) {
      at = extras + offset;
      take = head - offset;
    } else {
      at = offset - head;
      if (at >= model_size) return false;
      take = model_size - at;
    }
    if (take > len) take = len;
    if (take == 0 || at + take > kSlotBytes || !board::storage_write(base + at, data, take)) return false;
    offset += take;
    data += take;
    len -= take;
  }
  return true;
}

bool activate(uint32_t index, const SlotMeta& slot) {
  if (!board::storage_flush()) return false;
  MetaRecord next = current;
  next.slot[index] = slot;
  next.slot[index].valid = 1;
  next.active = static_cast<uint8_t>(index);
  next.confirmed = 0;
  return write_meta(next);
}

uint32_t floor(const char* name) {
  for (const Floor& f : current.floors) {
    if (f.used && strncmp(f.name, name, kNameMax) == 0) return f.version;
  }
  return kNoVersion;
}

bool confirm() {
  if (current.active == kNoSlot) return false;
  MetaRecord next = current;
  next.confirmed = 1;
  const SlotMeta& s = next.slot[next.active];
  if (s.version != kNoVersion) {
    Floor* slot = nullptr;
    for (Floor& f : next.floors) {
      if (f.used && strncmp(f.name, s.name, kNameMax) == 0) slot = &f;
    }
    if (slot == nullptr) {
      for (Floor& f : next.floors) {
        if (!f.used) { slot = &f; break; }
      }
    }
    if (slot == nullptr) {  // full: forget the oldest entry
      memmove(&next.floors[0], &next.floors[1], sizeof(Floor) * (kFloors - 1));
      slot = &next.floors[kFloors - 1];
      memset(slot, 0, sizeof *slot);
    }
    if (!slot->used || s.version > slot->version) {
      memcpy(slot->name, s.name, sizeof slot->name);
      slot->version = s.version;
      slot->used = 1;
    }
  }
  return write_meta(next);
}

}  // namespace lepton::slots
