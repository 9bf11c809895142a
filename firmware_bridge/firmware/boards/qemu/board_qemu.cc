// The MPS2 boards under QEMU (mps2-an386: Cortex-M4F, mps2-an500: Cortex-M7).
//   qemu-system-arm -M mps2-an386 -display none -monitor none -serial pty
//     -semihosting-config enable=on,target=native,arg=firmware,arg=STATEFILE[,arg=--trusted-key,arg=HEX64]
//     -kernel firmware.elf
//   ... arg=firmware,arg=--probe,arg=MODEL.tflite[,arg=--arena-capacity,arg=N]: one JSON line, exit.
// UART: CMSDK APB UART0 (polled; QEMU holds input back until the guest reads, nothing is lost).
// Clock: micros() reads the host's monotonic clock through semihosting (SYS_ELAPSED, nanoseconds).
// SysTick's counter is no good for it under TCG: QEMU updates the emulated timer from its main loop,
// so a busy host can leave the counter and the millisecond interrupt unchanged across a whole short
// invoke, which then measured 0 us. SysTick still ticks every millisecond to bound idle()'s WFI, and
// is micros()' fallback when the host has no SYS_ELAPSED.
// Storage: STATEFILE on the host through semihosting, mirrored in PSRAM (the read view), written
// through on every write and erase, so a reset (SYSRESETREQ: QEMU reloads the ELF) or a new QEMU
// keeps the slots.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "board.h"
#include "lepton.h"
#include "semihost.h"

#ifndef LEPTON_SLOT_BYTES
#error LEPTON_SLOT_BYTES must be defined (board.mk SLOT_BYTES)
#endif

// PSRAM (mps2-sections.ld): the storage mirror, and the probe's model buffer.
extern "C" uint8_t lepton_storage[], lepton_probe_model[];

namespace {

namespace sh = lepton::semihost;

constexpr uint32_t kSysClockHz = 25000000;  // MPS2 FPGA images: SYSCLK 25 MHz (QEMU mps2.c)

// CMSDK APB UART0.
struct CmsdkUart {
  volatile uint32_t data;
  volatile uint32_t state;  // bit 0 TX full, bit 1 RX full
  volatile uint32_t ctrl;   // bit 0 TX enable, bit 1 RX enable, bit 3 RX interrupt enable
  volatile uint32_t intstatus;  // write 1 to clear; bit 1 RX
  volatile uint32_t bauddiv;
};
CmsdkUart& uart0 = *reinterpret_cast<CmsdkUart*>(0x40004000);
constexpr uint32_t kTxFull = 1u << 0, kRxFull = 1u << 1;
constexpr uint32_t kTxEn = 1u << 0, kRxEn = 1u << 1, kRxIntEn = 1u << 3;
constexpr uint32_t kIntRx = 1u << 1;

volatile uint32_t& syst_csr = *reinterpret_cast<volatile uint32_t*>(0xE000E010);
volatile uint32_t& syst_rvr = *reinterpret_cast<volatile uint32_t*>(0xE000E014);
volatile uint32_t& syst_cvr = *reinterpret_cast<volatile uint32_t*>(0xE000E018);
volatile uint32_t& nvic_iser0 = *reinterpret_cast<volatile uint32_t*>(0xE000E100);
volatile uint32_t& scb_aircr = *reinterpret_cast<volatile uint32_t*>(0xE000ED0C);
constexpr uint32_t kTicksPerMs = kSysClockHz / 1000;

volatile uint32_t g_ms = 0;
uint32_t g_ticks_per_us = 0;  // of SYS_ELAPSED; 0: not available, use SysTick

// Storage: [meta A | meta B | slot 0 | slot 1], pages of 4 KiB.
constexpr uint32_t kPageBytes = 4096;
constexpr uint32_t kStorageBytes = 2 * kPageBytes + 2 * LEPTON_SLOT_BYTES;
static_assert(LEPTON_SLOT_BYTES % kPageBytes == 0, "slots must be page aligned");
static_assert(kStorageBytes <= 4u << 20, "the storage mirror has 4 MB of PSRAM (mps2-sections.ld)");
// The probe's copy of the model (the largest model a slot holds, and more).
constexpr uint32_t kProbeBytes = 8u << 20;

int32_t g_state = -1;  // semihosting handle of STATEFILE

constexpr size_t kMaxKeys = 8;
uint8_t g_keys[kMaxKeys][32];
size_t g_key_count = 0;

[[noreturn]] void die(const char* a, const char* b = "") {
  sh::write0("lepton-fw: ");
  sh::write0(a);
  sh::write0(b);
  sh::write0("\n");
  sh::exit(2);
}

bool write_through(uint32_t offset, uint32_t len) {
  return sh::seek(g_state, offset) && sh::write(g_state, lepton_storage + offset, len);
}

void open_storage(const char* path) {
  g_state = sh::open(path, sh::kModeRPlusB);
  if (g_state < 0) g_state = sh::open(path, sh::kModeWPlusB);
  if (g_state < 0) die("cannot open the state file ", path);
  int32_t have = sh::length(g_state);
  if (have < 0) die("cannot size the state file ", path);
  uint32_t n = static_cast<uint32_t>(have) < kStorageBytes ? static_cast<uint32_t>(have) : kStorageBytes;
  if (n > 0 && !(sh::seek(g_state, 0) && sh::read(g_state, lepton_storage, n))) {
    die("cannot read the state file ", path);
  }
  if (n < kStorageBytes) {  // new (or short) file: the rest is erased storage
    std::memset(lepton_storage + n, 0xFF, kStorageBytes - n);
    if (!write_through(n, kStorageBytes - n)) die("cannot write the state file ", path);
  }
}

int hex_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool parse_key(const char* hex, uint8_t out[32]) {
  if (std::strlen(hex) != 64) return false;
  for (int i = 0; i < 32; ++i) {
    int hi = hex_nibble(hex[2 * i]), lo = hex_nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

[[noreturn]] void run_probe(const char* path, size_t capacity) {
  int32_t h = sh::open(path, sh::kModeRB);
  if (h < 0) die("cannot open ", path);
  int32_t len = sh::length(h);
  if (len <= 0 || static_cast<uint32_t>(len) > kProbeBytes) die("model too large or empty: ", path);
  if (!sh::read(h, lepton_probe_model, static_cast<uint32_t>(len))) die("cannot read ", path);
  sh::close(h);
  lepton::ProbeResult result = lepton::probe(lepton_probe_model, static_cast<size_t>(len), capacity);
  static char json[512];
  size_t n = lepton::probe_json(result, json, sizeof(json) - 2);
  json[n] = '\n';
  json[n + 1] = '\0';
  sh::write0(json);
  sh::exit(result.ok ? 0 : 1);
}

}  // namespace

extern "C" void SysTick_Handler() { g_ms = g_ms + 1; }

// Wakes idle(); the loop reads the byte (polled), so this only masks the interrupt again.
extern "C" void UART0_RX_Handler() {
  uart0.ctrl = uart0.ctrl & ~kRxIntEn;
  uart0.intstatus = kIntRx;
}

namespace lepton::board {

void init() {
  uart0.ctrl = 0;
  uart0.bauddiv = kSysClockHz / 115200;
  uart0.ctrl = kTxEn | kRxEn;
  syst_rvr = kTicksPerMs - 1;
  syst_cvr = 0;
  syst_csr = 0x7;      // processor clock, interrupt, enable
  const int32_t freq = sh::tick_freq();
  uint64_t probe = 0;
  if (freq >= 1000000 && freq % 1000000 == 0 && sh::elapsed(&probe)) {
    g_ticks_per_us = static_cast<uint32_t>(freq) / 1000000u;
  }
  nvic_iser0 = 1u << 0;  // UART0 RX (IRQ 0)
  asm volatile("cpsie i" ::: "memory");
  // Storage was opened by main (it knows the path); nothing more here.
}

size_t uart_read(uint8_t* out, size_t cap) {
  size_t n = 0;
  while (n < cap && (uart0.state & kRxFull)) out[n++] = static_cast<uint8_t>(uart0.data);
  return n;
}

void uart_write(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    while (uart0.state & kTxFull) {
    }
    uart0.data = data[i];
  }
}

uint32_t micros() {
  uint64_t host_ticks = 0;
  if (g_ticks_per_us != 0 && sh::elapsed(&host_ticks)) {
    return static_cast<uint32_t>(host_ticks / g_ticks_per_us);  // wraps every 71 minutes, like SysTick's
  }
  uint32_t ms, ticks;
  do {
    ms = g_ms;
    ticks = syst_cvr;
  } while (ms != g_ms);
  return ms * 1000u + (kTicksPerMs - 1 - ticks) / (kTicksPerMs / 1000);
}

void idle() {
  // With PRIMASK set, a pending interrupt still ends WFI; it is taken after cpsie.
  asm volatile("cpsid i" ::: "memory");
  uart0.ctrl = uart0.ctrl | kRxIntEn;
  if (!(uart0.state & kRxFull)) asm volatile("wfi" ::: "memory");
  asm volatile("cpsie i" ::: "memory");
}

void reset() {
  asm volatile("dsb" ::: "memory");
  scb_aircr = (0x05FAu << 16) | (1u << 2);  // VECTKEY | SYSRESETREQ
  asm volatile("dsb" ::: "memory");
  for (;;) {
  }
}

const uint8_t* storage_map() { return lepton_storage; }

uint32_t storage_page_bytes() { return kPageBytes; }

bool storage_erase(uint32_t offset, uint32_t len) {
  if (offset % kPageBytes || len % kPageBytes || offset > kStorageBytes || len > kStorageBytes - offset) {
    return false;
  }
  std::memset(lepton_storage + offset, 0xFF, len);
  return write_through(offset, len);
}

bool storage_write(uint32_t offset, const uint8_t* data, uint32_t len) {
  if (offset > kStorageBytes || len > kStorageBytes - offset) return false;
  std::memmove(lepton_storage + offset, data, len);
  return write_through(offset, len);
}

// Every write already reached the host file (QEMU calls write(2) for SYS_WRITE).
bool storage_flush() { return true; }

}  // namespace lepton::board

int main() {
  static char cmdline[1024];
  if (!sh::cmdline(cmdline, sizeof(cmdline))) die("no semihosting command line (-semihosting-config ...,arg=firmware,arg=STATEFILE)");
  const char* argv[24];
  int argc = 0;
  for (char* p = cmdline; *p && argc < 24;) {
    while (*p == ' ') *p++ = '\0';
    if (!*p) break;
    argv[argc++] = p;
    while (*p && *p != ' ') ++p;
  }
  const char* state = nullptr;
  const char* probe = nullptr;
  size_t capacity = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--probe") == 0 && i + 1 < argc) {
      probe = argv[++i];
    } else if (std::strcmp(argv[i], "--arena-capacity") == 0 && i + 1 < argc) {
      capacity = static_cast<size_t>(std::strtoul(argv[++i], nullptr, 10));
    } else if (std::strcmp(argv[i], "--trusted-key") == 0 && i + 1 < argc) {
      if (g_key_count == kMaxKeys || !parse_key(argv[++i], g_keys[g_key_count])) {
        die("bad --trusted-key (64 hex digits, at most 8 keys): ", argv[i]);
      }
      ++g_key_count;
    } else if (argv[i][0] != '-' && state == nullptr) {
      state = argv[i];
    } else {
      die("unknown argument: ", argv[i]);
    }
  }
  if (probe != nullptr) run_probe(probe, capacity);
  if (state == nullptr) die("usage: firmware STATEFILE [--trusted-key HEX64]... | firmware --probe MODEL [--arena-capacity N]");
  open_storage(state);
  lepton::run(g_keys, g_key_count);
}
