// Start-up for the MPS2 boards under QEMU (AN386 Cortex-M4F, AN500 Cortex-M7): vector table,
// .data/.bss set-up, FPU on, C++ constructors, and the few C library hooks a bare-metal
// newlib-nano program needs (boards/cortex-m/runtime.cc).
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sys/stat.h>

#include "boards/cortex-m/runtime.h"
#include "semihost.h"

extern "C" {
// From the linker script.
extern uint32_t _sidata[], _sdata[], _edata[], _sbss[], _ebss[], _estack[];
extern void (*__preinit_array_start[])();
extern void (*__preinit_array_end[])();
extern void (*__init_array_start[])();
extern void (*__init_array_end[])();

int main();
void Reset_Handler();
void Default_Handler();
void HardFault_Handler();
void SysTick_Handler();
void UART0_RX_Handler();
}

namespace {
volatile uint32_t* const kCpacr = reinterpret_cast<volatile uint32_t*>(0xE000ED88);
volatile uint32_t* const kCfsr = reinterpret_cast<volatile uint32_t*>(0xE000ED28);
volatile uint32_t* const kHfsr = reinterpret_cast<volatile uint32_t*>(0xE000ED2C);
volatile uint32_t* const kBfar = reinterpret_cast<volatile uint32_t*>(0xE000ED38);

void hex(char* out, uint32_t v) {
  for (int i = 7; i >= 0; --i, v >>= 4) out[i] = "0123456789abcdef"[v & 0xF];
}
}  // namespace

extern "C" void Reset_Handler() {
  *kCpacr |= 0xFu << 20;  // CP10, CP11 full access: the FPU, before any floating point code
  asm volatile("dsb\n isb" ::: "memory");
  for (uint32_t *src = _sidata, *dst = _sdata; dst < _edata;) *dst++ = *src++;
  for (uint32_t* dst = _sbss; dst < _ebss;) *dst++ = 0;
  for (auto f = __preinit_array_start; f < __preinit_array_end; ++f) (*f)();
  for (auto f = __init_array_start; f < __init_array_end; ++f) (*f)();
  main();
  lepton::semihost::exit(0);
}

// A fault is a firmware bug: say where on QEMU's console and stop the emulator (exit status 3),
// so a test sees it at once instead of a board that no longer answers.
extern "C" void fault_report(const uint32_t* frame, uint32_t exc) {
  char msg[] = "lepton-fw: fault exc=xxxxxxxx pc=xxxxxxxx lr=xxxxxxxx cfsr=xxxxxxxx hfsr=xxxxxxxx bfar=xxxxxxxx\n";
  hex(msg + 21, exc);
  hex(msg + 33, frame[6]);
  hex(msg + 45, frame[5]);
  hex(msg + 59, *kCfsr);
  hex(msg + 73, *kHfsr);
  hex(msg + 87, *kBfar);
  lepton::semihost::write0(msg);
  lepton::semihost::exit(3);
}

extern "C" __attribute__((naked)) void HardFault_Handler() {
  asm volatile(
      "tst lr, #4\n"
      "ite eq\n"
      "mrseq r0, msp\n"
      "mrsne r0, psp\n"
      "mrs r1, ipsr\n"
      "b fault_report\n");
}

extern "C" void Default_Handler() { HardFault_Handler(); }

#define WEAK_ALIAS __attribute__((weak, alias("Default_Handler")))
extern "C" {
void NMI_Handler() WEAK_ALIAS;
void MemManage_Handler() WEAK_ALIAS;
void BusFault_Handler() WEAK_ALIAS;
void UsageFault_Handler() WEAK_ALIAS;
void SVC_Handler() WEAK_ALIAS;
void DebugMon_Handler() WEAK_ALIAS;
void PendSV_Handler() WEAK_ALIAS;
void SysTick_Handler() WEAK_ALIAS;
void UART0_RX_Handler() WEAK_ALIAS;
}

using Handler = void (*)();
// 16 system exceptions + 32 external interrupts (the MPS2 images' NVIC; UART0 RX is IRQ 0).
extern "C" __attribute__((section(".isr_vector"), used)) const Handler g_vectors[16 + 32] = {
    reinterpret_cast<Handler>(_estack),
    Reset_Handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
    SVC_Handler,
    DebugMon_Handler,
    nullptr,
    PendSV_Handler,
    SysTick_Handler,
    UART0_RX_Handler,  // IRQ 0: UART0 RX
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, Default_Handler, Default_Handler,
    Default_Handler,
};

// The program ended (boards/cortex-m/runtime.cc's _exit): stop the emulator with its status.
extern "C" void lepton_board_exit(int code) { lepton::semihost::exit(code); }
