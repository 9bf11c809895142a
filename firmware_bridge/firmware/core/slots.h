// Two model slots and A/B meta records on board storage, crash-safe:
//   [meta record A | meta record B | slot 0 | slot 1]
// Each meta record takes one page (max(4096, storage_page_bytes())); slots are page aligned.
// A slot holds the model at offset 0 (read in place by TFLite Micro), then the manifest and the
// signature at align16(model_size). A reset at any moment boots the previous model: a new transfer
// first marks its slot invalid, COMMIT flushes the data before the record that activates it.
#pragma once
#include <cstddef>
#include <cstdint>

#include "core/manifest.h"

#ifndef LEPTON_SLOT_BYTES
#error LEPTON_SLOT_BYTES must be defined (board.mk SLOT_BYTES)
#endif

namespace lepton::slots {

constexpr uint32_t kSlotCount = 2;
constexpr uint32_t kNoSlot = 0xFF;
constexpr uint32_t kNoVersion = 0xFFFFFFFFu;
constexpr uint32_t kFloors = 8;
constexpr uint32_t kSlotBytes = LEPTON_SLOT_BYTES;

// The storage region a board provides: two meta pages and two slots.
constexpr uint32_t storage_bytes(uint32_t page_bytes) {
  return 2 * (page_bytes > 4096 ? page_bytes : 4096) + kSlotCount * kSlotBytes;
}

struct SlotMeta {
  uint8_t valid;
  uint8_t reserved[3];
  uint32_t size;         // model bytes
  uint32_t arena_bytes;
  uint32_t version;      // kNoVersion: none
  uint8_t sha256[32];
  char name[kNameMax + 1];
  uint16_t manifest_len;
  uint16_t signature_len;
};

struct Floor {
  char name[kNameMax + 1];
  uint32_t version;
  uint8_t used;
  uint8_t reserved[3];
};

struct MetaRecord {
  uint32_t magic;
  uint32_t sequence;
  uint8_t active;     // kNoSlot: none
  uint8_t confirmed;
  uint8_t reserved[2];
  SlotMeta slot[kSlotCount];
  Floor floors[kFloors];  // name -> highest confirmed version
  uint32_t crc;           // lf_crc32 of everything before it
};

// Reads the newest valid meta record (or starts empty). Call after board::init().
void init();
const MetaRecord& meta();
uint32_t meta_bytes();               // both records
uint32_t slot_offset(uint32_t index);  // in storage
const uint8_t* slot_data(uint32_t index);  // storage_map() + slot_offset
uint32_t align16(uint32_t n);

uint32_t inactive_index();
// Bytes a transfer takes in a slot (model, then manifest and signature at align16(model_size)).
uint32_t layout_bytes(uint32_t model_size, uint32_t manifest_len, uint32_t signature_len);
// Marks `index` invalid (durably) and erases what a transfer of `bytes` will use.
bool open_slot(uint32_t index, uint32_t bytes);
// Writes transfer bytes [offset, offset+len) of [manifest | signature | model] into the slot.
bool write_transfer(uint32_t index, uint32_t model_size, uint32_t manifest_len, uint32_t signature_len,
                    uint32_t offset, const uint8_t* data, uint32_t len);
// Flushes the data, then writes the record that makes `index` active (unconfirmed).
bool activate(uint32_t index, const SlotMeta& slot);
// Confirms the active model and raises the floor of its name to its version.
bool confirm();
// The highest confirmed version of `name`, or kNoVersion.
uint32_t floor(const char* name);

}  // namespace lepton::slots
