// ARM semihosting (the calls QEMU implements with -semihosting-config enable=on,target=native).
// The operation numbers and argument blocks are those of Arm's "Semihosting for AArch32 and
// AArch64" specification; on M-profile the trap is BKPT 0xAB.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton::semihost {

enum Op : uint32_t {
  kOpen = 0x01,
  kClose = 0x02,
  kWrite0 = 0x04,
  kWrite = 0x05,
  kRead = 0x06,
  kSeek = 0x0A,
  kFlen = 0x0C,
  kGetCmdline = 0x15,
  kExit = 0x18,
  kExitExtended = 0x20,
  kElapsed = 0x30,
  kTickFreq = 0x31,
};

// SYS_OPEN modes (ISO C fopen modes by index).
enum Mode : uint32_t { kModeRB = 1, kModeRPlusB = 3, kModeWPlusB = 7 };

inline int32_t call(uint32_t op, const void* arg) {
  register uint32_t r0 asm("r0") = op;
  register const void* r1 asm("r1") = arg;
  asm volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return static_cast<int32_t>(r0);
}

// Returns a handle (>= 0) or -1.
int32_t open(const char* path, uint32_t mode);
void close(int32_t handle);
// Each returns true when every byte moved.
bool write(int32_t handle, const void* data, uint32_t len);
bool read(int32_t handle, void* out, uint32_t len);
bool seek(int32_t handle, uint32_t pos);
int32_t length(int32_t handle);  // -1 on error
void write0(const char* text);   // to QEMU's semihosting console (its stderr / stdout)
// The command line QEMU was given with -semihosting-config ...,arg=a,arg=b: "a b".
bool cmdline(char* out, uint32_t cap);
// The host's clock since QEMU started, in ticks of tick_freq() per second (QEMU: nanoseconds of
// its monotonic clock). False when the host does not implement SYS_ELAPSED.
bool elapsed(uint64_t* ticks);
int32_t tick_freq();  // -1 when unknown
[[noreturn]] void exit(int code);

}  // namespace lepton::semihost
