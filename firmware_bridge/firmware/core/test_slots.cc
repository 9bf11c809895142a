// Power cut at every storage operation of a flash: core/slots.cc on a fake board whose storage is
// RAM, interrupted before each erase, write and flush (and with each one torn half-way). After every
// cut, a boot must find the previous model or the new one, each whole (its SHA-256 matches), never
// none; and flashing the new model again from scratch must work. Exit 0 when so.
// Built and run by tests/test_firmware_core.py (g++, ASan, UBSan); not part of the firmware.
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "core/board.h"
#include "core/crypto/sha256.h"
#include "core/slots.h"

using namespace lepton;

namespace {
uint8_t store[slots::storage_bytes(4096)];
uint8_t saved[sizeof store];
long ops = 0, cut_at = -1;
bool tear = false;
jmp_buf cut;

void step() {
  if (++ops == cut_at) longjmp(cut, 1);
}
bool cutting_now() { return tear && ops + 1 == cut_at; }

void digest(const uint8_t* d, size_t n, uint8_t out[32]) {
  Sha256 s;
  s.update(d, n);
  s.finish(out);
}

uint8_t model_a[100000], model_b[70001];

int flash(const uint8_t* m, uint32_t n) {
  const uint32_t index = slots::inactive_index();
  if (!slots::open_slot(index, slots::layout_bytes(n, 0, 0))) return -1;
  for (uint32_t off = 0; off < n; off += 4090) {
    const uint32_t k = n - off < 4090 ? n - off : 4090;
    if (!slots::write_transfer(index, n, 0, 0, off, m + off, k)) return -1;
  }
  slots::SlotMeta s{};
  s.size = n;
  s.arena_bytes = 1000;
  s.version = slots::kNoVersion;
  digest(m, n, s.sha256);
  return slots::activate(index, s) ? static_cast<int>(index) : -1;
}

// 1: model A active and whole, 2: model B, 0: none, negative: a broken slot.
int booted() {
  slots::init();
  const slots::MetaRecord& m = slots::meta();
  if (m.active == slots::kNoSlot) return 0;
  const slots::SlotMeta& s = m.slot[m.active];
  uint8_t d[32], da[32], db[32];
  digest(slots::slot_data(m.active), s.size, d);
  if (memcmp(d, s.sha256, 32) != 0) return -1;
  digest(model_a, sizeof model_a, da);
  digest(model_b, sizeof model_b, db);
  if (memcmp(d, da, 32) == 0) return 1;
  if (memcmp(d, db, 32) == 0) return 2;
  return -2;
}
}  // namespace

namespace lepton::board {
const uint8_t* storage_map() { return store; }
uint32_t storage_page_bytes() { return 4096; }
bool storage_erase(uint32_t offset, uint32_t len) {
  if (cutting_now()) memset(store + offset, 0xFF, len / 2);
  step();
  memset(store + offset, 0xFF, len);
  return true;
}
bool storage_write(uint32_t offset, const uint8_t* data, uint32_t len) {
  if (cutting_now()) memcpy(store + offset, data, len / 2);
  step();
  memcpy(store + offset, data, len);
  return true;
}
bool storage_flush() {
  step();
  return true;
}
}  // namespace lepton::board

int main() {
  for (size_t i = 0; i < sizeof model_a; ++i) model_a[i] = static_cast<uint8_t>(i * 7 + 1);
  for (size_t i = 0; i < sizeof model_b; ++i) model_b[i] = static_cast<uint8_t>(i * 13 + 5);
  slots::init();
  if (flash(model_a, sizeof model_a) < 0 || !slots::confirm() || booted() != 1) {
    printf("the first flash failed\n");
    return 1;
  }
  memcpy(saved, store, sizeof store);
  ops = 0;
  flash(model_b, sizeof model_b);
  const long total = ops;
  int previous = 0, next = 0, bad = 0;
  for (int torn = 0; torn < 2; ++torn) {
    for (long k = 1; k <= total + 1; ++k) {
      memcpy(store, saved, sizeof store);
      slots::init();
      ops = 0;
      cut_at = k;
      tear = torn != 0;
      if (setjmp(cut) == 0) flash(model_b, sizeof model_b);
      cut_at = -1;
      const int r = booted();
      if (r == 1) {
        ++previous;
      } else if (r == 2) {
        ++next;
      } else {
        ++bad;
        printf("cut before operation %ld (torn %d): boot finds %d\n", k, torn, r);
      }
      if (flash(model_b, sizeof model_b) < 0 || booted() != 2) {
        ++bad;
        printf("flashing again after the cut before operation %ld failed\n", k);
      }
    }
  }
  printf("storage operations per flash: %ld; boots with the previous model %d, the new one %d, broken %d\n",
         total, previous, next, bad);
  return bad == 0 ? 0 : 1;
}
