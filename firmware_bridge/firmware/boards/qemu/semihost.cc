#include "semihost.h"

#include <cstring>

namespace lepton::semihost {

int32_t open(const char* path, uint32_t mode) {
  const uint32_t block[3] = {reinterpret_cast<uint32_t>(path), mode,
                             static_cast<uint32_t>(std::strlen(path))};
  return call(kOpen, block);
}

void close(int32_t handle) {
  const uint32_t block[1] = {static_cast<uint32_t>(handle)};
  call(kClose, block);
}

bool write(int32_t handle, const void* data, uint32_t len) {
  const uint32_t block[3] = {static_cast<uint32_t>(handle), reinterpret_cast<uint32_t>(data), len};
  return call(kWrite, block) == 0;  // returns the number of bytes NOT written
}

bool read(int32_t handle, void* out, uint32_t len) {
  const uint32_t block[3] = {static_cast<uint32_t>(handle), reinterpret_cast<uint32_t>(out), len};
  return call(kRead, block) == 0;  // returns the number of bytes NOT read
}

bool seek(int32_t handle, uint32_t pos) {
  const uint32_t block[2] = {static_cast<uint32_t>(handle), pos};
  return call(kSeek, block) == 0;
}

int32_t length(int32_t handle) {
  const uint32_t block[1] = {static_cast<uint32_t>(handle)};
  return call(kFlen, block);
}

void write0(const char* text) { call(kWrite0, text); }

bool cmdline(char* out, uint32_t cap) {
  uint32_t block[2] = {reinterpret_cast<uint32_t>(out), cap};
  if (call(kGetCmdline, block) != 0) return false;
  if (block[1] >= cap) return false;
  out[block[1]] = '\0';
  return true;
}

bool elapsed(uint64_t* ticks) {
  uint32_t block[2] = {0, 0};  // filled in: low word, high word
  if (call(kElapsed, block) != 0) return false;
  *ticks = (static_cast<uint64_t>(block[1]) << 32) | block[0];
  return true;
}

int32_t tick_freq() { return call(kTickFreq, nullptr); }

void exit(int code) {
  // SYS_EXIT_EXTENDED carries the exit status on AArch32 too (QEMU exits with it).
  constexpr uint32_t kApplicationExit = 0x20026;  // ADP_Stopped_ApplicationExit
  const uint32_t block[2] = {kApplicationExit, static_cast<uint32_t>(code)};
  call(kExitExtended, block);
  // Not reached under QEMU; fall back to the plain call (status 0 or 1).
  call(kExit, reinterpret_cast<const void*>(code == 0 ? kApplicationExit : 0x20023));
  for (;;) {
  }
}

}  // namespace lepton::semihost
