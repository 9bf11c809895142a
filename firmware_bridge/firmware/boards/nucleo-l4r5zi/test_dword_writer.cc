// Host test of dword_writer.h on a simulated STM32L4 flash (a double word programs once after an
// erase; programming one that is not erased fails, as PROGERR). Built and run by
// tests/test_firmware_nucleo_flash.py: `test_dword_writer [SEED]` prints "ok" and exits 0.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "dword_writer.h"

namespace {

constexpr uint32_t kBase = 0x08000000;
constexpr uint32_t kBytes = 64 * 1024;
constexpr uint32_t kPage = 4096;
uint8_t flash[kBytes];
unsigned programs[kBytes / 8];
unsigned progerr = 0;

bool program_dword(uint32_t addr, uint32_t lo, uint32_t hi) {
  if (addr % 8 || addr < kBase || addr + 8 > kBase + kBytes) return false;
  uint8_t* p = flash + (addr - kBase);
  for (int i = 0; i < 8; ++i) {
    if (p[i] != 0xFF) {
      ++progerr;
      return false;
    }
  }
  std::memcpy(p, &lo, 4);
  std::memcpy(p + 4, &hi, 4);
  ++programs[(addr - kBase) / 8];
  return true;
}
const uint8_t* view(uint32_t addr) { return flash + (addr - kBase); }
const lepton::nucleo::FlashOps ops = {program_dword, view};

int failures = 0;
#define CHECK(cond, ...)                                   \
  do {                                                     \
    if (!(cond)) {                                         \
      std::printf("FAIL line %d: %s: ", __LINE__, #cond);  \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
      if (++failures > 10) std::exit(1);                   \
    }                                                      \
  } while (0)

void erase_all(lepton::nucleo::DwordWriter<64>& w) {
  std::memset(flash, 0xFF, sizeof flash);
  std::memset(programs, 0, sizeof programs);
  w.drop(kBase, kBase + kBytes);
}

}  // namespace

int main(int argc, char** argv) {
  std::mt19937 rng(argc > 1 ? static_cast<unsigned>(std::atoi(argv[1])) : 1u);
  auto uniform = [&](uint32_t lo, uint32_t hi) { return std::uniform_int_distribution<uint32_t>(lo, hi)(rng); };
  lepton::nucleo::DwordWriter<64> w(ops);

  // 1. Random ranges in chunks of random sizes, in random order, some sent twice: every byte
  //    lands, nothing else changes, no double word is programmed twice.
  for (int trial = 0; trial < 3000; ++trial) {
    erase_all(w);
    const uint32_t len = uniform(1, 6000), off = uniform(0, kBytes - len);
    std::vector<uint8_t> data(len);
    for (auto& b : data) b = static_cast<uint8_t>(uniform(0, 255));
    std::vector<std::pair<uint32_t, uint32_t>> chunks;
    for (uint32_t at = 0; at < len;) {
      const uint32_t n = std::min(len - at, uniform(1, 700));
      chunks.emplace_back(at, n);
      at += n;
    }
    if (chunks.size() > 60) std::sort(chunks.begin(), chunks.end());  // keep the pending table in reach
    else std::shuffle(chunks.begin(), chunks.end(), rng);
    const size_t resend = chunks.empty() ? 0 : uniform(0, 3);
    for (size_t i = 0; i < resend; ++i) chunks.push_back(chunks[uniform(0, static_cast<uint32_t>(chunks.size() - 1))]);
    for (auto [at, n] : chunks) CHECK(w.write(kBase + off + at, data.data() + at, n), "trial %d write", trial);
    CHECK(w.flush(), "trial %d flush", trial);
    CHECK(w.pending() == 0, "trial %d pending %d", trial, w.pending());
    CHECK(std::memcmp(flash + off, data.data(), len) == 0, "trial %d data", trial);
    for (uint32_t i = 0; i < kBytes; ++i) {
      if (i < off || i >= off + len) CHECK(flash[i] == 0xFF, "trial %d byte %u changed", trial, i);
    }
    for (uint32_t d = 0; d < kBytes / 8; ++d) CHECK(programs[d] <= 1, "trial %d dword %u twice", trial, d);
    CHECK(progerr == 0, "trial %d progerr", trial);
  }

  // 2. The core's transfer layout: manifest + signature at align16(model size) first, then the
  //    model from 0, in frames of 1024 bytes; readable after flush.
  for (int trial = 0; trial < 200; ++trial) {
    erase_all(w);
    const uint32_t model = uniform(1, 40000), head = uniform(1, 900) + 64, total = head + model;
    std::vector<uint8_t> bytes(total);
    for (auto& b : bytes) b = static_cast<uint8_t>(uniform(0, 255));
    const uint32_t extras = (model + 15) & ~15u;
    for (uint32_t at = 0; at < total; at += 1024) {
      uint32_t n = std::min(1024u, total - at), o = at;
      while (n > 0) {
        uint32_t dst, take;
        if (o < head) {
          dst = extras + o;
          take = std::min(n, head - o);
        } else {
          dst = o - head;
          take = n;
        }
        CHECK(w.write(kBase + dst, bytes.data() + o, take), "layout %d", trial);
        o += take;
        n -= take;
      }
    }
    CHECK(w.flush(), "layout %d flush", trial);
    CHECK(std::memcmp(flash, bytes.data() + head, model) == 0, "layout %d model", trial);
    CHECK(std::memcmp(flash + extras, bytes.data(), head) == 0, "layout %d manifest", trial);
    CHECK(progerr == 0, "layout %d progerr", trial);
  }

  // 3. Same bytes again after a flush: nothing to do; other bytes onto programmed ones: refused.
  erase_all(w);
  const uint8_t abc[5] = {1, 2, 3, 4, 5}, xyz[5] = {9, 9, 9, 9, 9};
  CHECK(w.write(kBase + 13, abc, 5) && w.flush(), "first write");
  CHECK(w.write(kBase + 13, abc, 5) && w.flush(), "same bytes again");
  CHECK(!(w.write(kBase + 13, xyz, 5) && w.flush()), "other bytes over programmed ones");
  progerr = 0;

  // 4. An erase drops what was pending in its range.
  erase_all(w);
  CHECK(w.write(kBase + kPage + 3, abc, 2), "pending write");
  w.drop(kBase + kPage, kBase + 2 * kPage);
  std::memset(flash + kPage, 0xFF, kPage);
  CHECK(w.flush() && w.pending() == 0, "flush after drop");
  for (uint32_t i = kPage; i < 2 * kPage; ++i) CHECK(flash[i] == 0xFF, "erased page changed at %u", i);

  // 5. More partial double words than the table holds: the oldest are programmed as they are.
  erase_all(w);
  for (uint32_t i = 0; i < 100; ++i) CHECK(w.write(kBase + 16 * i + 1, abc, 3), "partial %u", i);
  CHECK(w.flush(), "flush partials");
  for (uint32_t i = 0; i < 100; ++i) CHECK(std::memcmp(flash + 16 * i + 1, abc, 3) == 0, "partial %u", i);

  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
