// Start-up for the STM32L4R5ZI (NUCLEO-L4R5ZI): vector table (copied to SRAM, so interrupts keep
// being served from SRAM while the flash is busy erasing or programming), .data (with the .ramfunc
// code) and .bss set-up, FPU on, C++ constructors, and the C library hooks of a bare-metal
// newlib-nano program. No heap: _sbrk fails, so any malloc shows at once.
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sys/stat.h>

#include "boards/cortex-m/runtime.h"

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
}

namespace {
constexpr int kIrqCount = 95;  // STM32L4R5: IRQ 0 (WWDG) .. 94 (DMAMUX1_OVR)
using Handler = void (*)();
}  // namespace

// A fault or an unexpected interrupt is a firmware bug: restart the board (ANNOUNCE follows; the
// meta records make the boot take the last committed model).
extern "C" void Default_Handler() {
  volatile uint32_t& aircr = *reinterpret_cast<volatile uint32_t*>(0xE000ED0C);
  asm volatile("dsb" ::: "memory");
  aircr = (0x05FAu << 16) | (1u << 2);  // VECTKEY | SYSRESETREQ
  asm volatile("dsb" ::: "memory");
  for (;;) {
  }
}

#define WEAK_ALIAS __attribute__((weak, alias("Default_Handler")))
extern "C" {
void NMI_Handler() WEAK_ALIAS;
void HardFault_Handler() WEAK_ALIAS;
void MemManage_Handler() WEAK_ALIAS;
void BusFault_Handler() WEAK_ALIAS;
void UsageFault_Handler() WEAK_ALIAS;
void SVC_Handler() WEAK_ALIAS;
void DebugMon_Handler() WEAK_ALIAS;
void PendSV_Handler() WEAK_ALIAS;
void SysTick_Handler() WEAK_ALIAS;
void LPUART1_IRQHandler() WEAK_ALIAS;
}

#define D Default_Handler
#define D10 D, D, D, D, D, D, D, D, D, D
// The flash copy the core boots from (SP, reset vector); Reset_Handler copies it to SRAM and
// points VTOR there.
extern "C" __attribute__((section(".isr_vector"), used)) const Handler g_vectors[16 + kIrqCount] = {
    reinterpret_cast<Handler>(_estack), Reset_Handler, NMI_Handler, HardFault_Handler,
    MemManage_Handler, BusFault_Handler, UsageFault_Handler, nullptr, nullptr, nullptr, nullptr,
    SVC_Handler, DebugMon_Handler, nullptr, PendSV_Handler, SysTick_Handler,
    D10, D10, D10, D10, D10, D10, D10,  // IRQ 0 .. 69
    LPUART1_IRQHandler,                 // IRQ 70: LPUART1
    D10, D10, D, D, D, D,               // IRQ 71 .. 94
};
#undef D10
#undef D
static_assert(sizeof(g_vectors) == (16 + kIrqCount) * sizeof(Handler), "vector table size");
__attribute__((section(".ram_vectors"), aligned(512))) Handler g_ram_vectors[16 + kIrqCount];

extern "C" void Reset_Handler() {
  volatile uint32_t& cpacr = *reinterpret_cast<volatile uint32_t*>(0xE000ED88);
  volatile uint32_t& vtor = *reinterpret_cast<volatile uint32_t*>(0xE000ED08);
  cpacr = cpacr | (0xFu << 20);  // CP10, CP11 full access: the FPU, before any floating point code
  asm volatile("dsb\n isb" ::: "memory");
  for (uint32_t *src = _sidata, *dst = _sdata; dst < _edata;) *dst++ = *src++;
  for (uint32_t* dst = _sbss; dst < _ebss;) *dst++ = 0;
  for (int i = 0; i < 16 + kIrqCount; ++i) g_ram_vectors[i] = g_vectors[i];
  vtor = reinterpret_cast<uint32_t>(&g_ram_vectors);
  asm volatile("dsb\n isb" ::: "memory");
  for (auto f = __preinit_array_start; f < __preinit_array_end; ++f) (*f)();
  for (auto f = __init_array_start; f < __init_array_end; ++f) (*f)();
  main();
  Default_Handler();
}

// The program ended (boards/cortex-m/runtime.cc's _exit): a board restarts.
extern "C" void lepton_board_exit(int) {
  Default_Handler();
  for (;;) {
  }
}
