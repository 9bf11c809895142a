// NUCLEO-L4R5ZI (STM32L4R5ZI, Cortex-M4F, 2 MB flash, 640 KB SRAM), register level with ST's
// CMSIS device header (stm32l4r5xx.h).
//   Clock: HSI16 -> PLL -> 120 MHz SYSCLK (Range 1 boost mode, 5 flash wait states).
//   UART: LPUART1 on PG7 (TX) / PG8 (RX), AF8: the ST-LINK virtual COM port, 115200 8N1.
//         Received bytes go to a ring buffer from an interrupt that runs from SRAM.
//   Clock: SysTick, 1 ms interrupt counter + the counter's current value.
//   Storage: the top of the flash: [meta A | meta B | slot 0 | slot 1] (linker script symbols
//         lepton_meta, lepton_slot0, lepton_slot1). The flash controller programs double words
//         (64 bits, each once after an erase) and erases 4 KiB pages (dual-bank mode, DBANK = 1,
//         the factory setting). Writes of any offset and length are kept in RAM by double word
//         until all 8 bytes are known (or storage_flush), so no double word is programmed twice.
//         The erase/program wait loops, the SysTick and LPUART1 handlers and the vector table
//         live in SRAM, so the UART keeps being served while the flash is busy.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "board.h"
#include "dword_writer.h"
#include "lepton.h"
#include "stm32l4xx.h"

#ifndef LEPTON_SLOT_BYTES
#error LEPTON_SLOT_BYTES must be defined (board.mk SLOT_BYTES)
#endif

#define RAMFUNC __attribute__((section(".ramfunc"), noinline))


extern "C" {
// From the linker script (stm32l4r5zi.ld).
extern uint8_t lepton_meta[], lepton_storage_end[];
}

namespace {

constexpr uint32_t kSysClockHz = 120000000;
constexpr uint32_t kBaud = 115200;
constexpr uint32_t kTicksPerMs = kSysClockHz / 1000;

constexpr uint32_t kPageBytes = 4096;  // dual-bank mode
constexpr uint32_t kBankBytes = 1u << 20;
constexpr uint32_t kStorageBytes = 2 * kPageBytes + 2 * LEPTON_SLOT_BYTES;
static_assert(LEPTON_SLOT_BYTES % kPageBytes == 0, "slots must be page aligned");

// Trusted keys: raw 32-byte Ed25519 public keys compiled in, e.g. BOARD_DEFINES +=
// -DLEPTON_TRUSTED_KEYS='{0x12,0x34,...},{...}'. None by default: the device takes unsigned manifests.
#ifdef LEPTON_TRUSTED_KEYS
const uint8_t kTrustedKeys[][32] = {LEPTON_TRUSTED_KEYS};
constexpr size_t kTrustedKeyCount = sizeof(kTrustedKeys) / sizeof(kTrustedKeys[0]);
#else
const uint8_t (*const kTrustedKeys)[32] = nullptr;
constexpr size_t kTrustedKeyCount = 0;
#endif

// --- time -----------------------------------------------------------------------------------
volatile uint32_t g_ms = 0;

// --- UART receive ring (filled by the LPUART1 interrupt) ------------------------------------
constexpr uint32_t kRingBytes = 8192;  // >= WINDOW * (MAX_PAYLOAD + 10): a whole window in flight
uint8_t g_ring[kRingBytes];
volatile uint32_t g_ring_head = 0;  // written by the interrupt
volatile uint32_t g_ring_tail = 0;  // written by uart_read
volatile uint32_t g_overruns = 0;   // bytes lost (ring full or UART overrun); the frame CRC tells the core

// --- storage ----------------------------------------------------------------------------------
bool g_storage_ok = false;
uint32_t g_flash_base = 0;  // address of lepton_meta
bool g_banks_swapped = false;

constexpr uint32_t kFlashErrors = FLASH_SR_OPERR | FLASH_SR_PROGERR | FLASH_SR_WRPERR | FLASH_SR_PGAERR |
                                  FLASH_SR_SIZERR | FLASH_SR_PGSERR | FLASH_SR_MISERR | FLASH_SR_FASTERR |
                                  FLASH_SR_RDERR | FLASH_SR_OPTVERR;

// Runs from SRAM: the flash is busy, the core must not fetch from it (interrupts stay enabled; their
// handlers and the vector table are in SRAM too).
RAMFUNC bool flash_wait() {
  while (FLASH->SR & FLASH_SR_BSY) {
  }
  const uint32_t sr = FLASH->SR;
  FLASH->SR = sr & (kFlashErrors | FLASH_SR_EOP);  // write 1 to clear
  return (sr & kFlashErrors) == 0;
}

RAMFUNC bool flash_program_dword(uint32_t addr, uint32_t lo, uint32_t hi) {
  FLASH->CR = FLASH->CR | FLASH_CR_PG;
  *reinterpret_cast<volatile uint32_t*>(addr) = lo;
  *reinterpret_cast<volatile uint32_t*>(addr + 4) = hi;
  const bool ok = flash_wait();
  FLASH->CR = FLASH->CR & ~FLASH_CR_PG;
  return ok;
}

RAMFUNC bool flash_erase_page(uint32_t bank2, uint32_t page) {
  FLASH->CR = (FLASH->CR & ~(FLASH_CR_PNB | FLASH_CR_BKER)) | FLASH_CR_PER | (page << FLASH_CR_PNB_Pos) |
              (bank2 ? FLASH_CR_BKER : 0);
  FLASH->CR = FLASH->CR | FLASH_CR_STRT;
  const bool ok = flash_wait();
  FLASH->CR = FLASH->CR & ~(FLASH_CR_PER | FLASH_CR_PNB | FLASH_CR_BKER);
  return ok;
}

void flash_unlock() {
  if (FLASH->CR & FLASH_CR_LOCK) {
    FLASH->KEYR = 0x45670123u;
    FLASH->KEYR = 0xCDEF89ABu;
  }
  while (FLASH->SR & FLASH_SR_BSY) {
  }
  FLASH->SR = kFlashErrors | FLASH_SR_EOP;
}

void flash_lock() {
  FLASH->CR = FLASH->CR | FLASH_CR_LOCK;
  // The data cache may hold what the flash held before: reset it (only while disabled).
  const uint32_t acr = FLASH->ACR;
  FLASH->ACR = acr & ~FLASH_ACR_DCEN;
  FLASH->ACR = (acr & ~FLASH_ACR_DCEN) | FLASH_ACR_DCRST;
  FLASH->ACR = acr & ~FLASH_ACR_DCRST;
}

// The board's flash operations for DwordWriter: program one double word (unlocked only for
// that; the data cache reset after it), and the flash's read view.
bool program_dword(uint32_t addr, uint32_t lo, uint32_t hi) {
  flash_unlock();
  const bool ok = flash_program_dword(addr, lo, hi);
  flash_lock();
  return ok;
}
const uint8_t* flash_view(uint32_t addr) { return reinterpret_cast<const uint8_t*>(addr); }
const lepton::nucleo::FlashOps kFlashOps = {program_dword, flash_view};
lepton::nucleo::DwordWriter<64> g_writer(kFlashOps);

// --- clock ------------------------------------------------------------------------------------
void clock_init() {
  RCC->APB1ENR1 = RCC->APB1ENR1 | RCC_APB1ENR1_PWREN;
  (void)RCC->APB1ENR1;
  // Range 1 (the reset value), boost mode (R1MODE = 0) for more than 80 MHz.
  PWR->CR1 = (PWR->CR1 & ~PWR_CR1_VOS) | PWR_CR1_VOS_0;
  while (PWR->SR2 & PWR_SR2_VOSF) {
  }
  PWR->CR5 = PWR->CR5 & ~PWR_CR5_R1MODE;
  // 5 wait states at 120 MHz, prefetch, instruction and data caches.
  FLASH->ACR = (FLASH->ACR & ~FLASH_ACR_LATENCY) | FLASH_ACR_LATENCY_5WS | FLASH_ACR_PRFTEN |
               FLASH_ACR_ICEN | FLASH_ACR_DCEN;
  while ((FLASH->ACR & FLASH_ACR_LATENCY) != FLASH_ACR_LATENCY_5WS) {
  }
  RCC->CR = RCC->CR | RCC_CR_HSION;
  while (!(RCC->CR & RCC_CR_HSIRDY)) {
  }
  // Run from HSI16 while the PLL is set up (a debugger may have left the PLL as SYSCLK, and the
  // PLL cannot be stopped while it is).
  RCC->CFGR = (RCC->CFGR & ~RCC_CFGR_SW) | RCC_CFGR_SW_HSI;
  while ((RCC->CFGR & RCC_CFGR_SWS) != RCC_CFGR_SWS_HSI) {
  }
  // PLL: HSI16 / M(1) * N(15) = 240 MHz VCO, / R(2) = 120 MHz.
  RCC->CR = RCC->CR & ~RCC_CR_PLLON;
  while (RCC->CR & RCC_CR_PLLRDY) {
  }
  RCC->PLLCFGR = RCC_PLLCFGR_PLLSRC_HSI | (0u << RCC_PLLCFGR_PLLM_Pos) | (15u << RCC_PLLCFGR_PLLN_Pos) |
                 (0u << RCC_PLLCFGR_PLLR_Pos) | RCC_PLLCFGR_PLLREN;
  RCC->CR = RCC->CR | RCC_CR_PLLON;
  while (!(RCC->CR & RCC_CR_PLLRDY)) {
  }
  // Above 80 MHz: go through AHB / 2 for at least 1 us (RM0432, "Clock switching").
  RCC->CFGR = (RCC->CFGR & ~RCC_CFGR_HPRE) | RCC_CFGR_HPRE_DIV2;
  RCC->CFGR = (RCC->CFGR & ~RCC_CFGR_SW) | RCC_CFGR_SW_PLL;
  while ((RCC->CFGR & RCC_CFGR_SWS) != RCC_CFGR_SWS_PLL) {
  }
  for (volatile int i = 0; i < 200; ++i) {
  }
  RCC->CFGR = RCC->CFGR & ~(RCC_CFGR_HPRE | RCC_CFGR_PPRE1 | RCC_CFGR_PPRE2);  // AHB, APB1, APB2 / 1
}

void uart_init() {
  PWR->CR2 = PWR->CR2 | PWR_CR2_IOSV;  // PG2..PG15 are on VDDIO2: declare it valid
  RCC->AHB2ENR = RCC->AHB2ENR | RCC_AHB2ENR_GPIOGEN;
  RCC->APB1ENR2 = RCC->APB1ENR2 | RCC_APB1ENR2_LPUART1EN;
  (void)RCC->APB1ENR2;
  RCC->CCIPR = RCC->CCIPR & ~RCC_CCIPR_LPUART1SEL;  // kernel clock: PCLK1 (120 MHz)
  // PG7 = LPUART1_TX, PG8 = LPUART1_RX: alternate function 8, RX pulled up.
  GPIOG->MODER = (GPIOG->MODER & ~(3u << 14 | 3u << 16)) | (2u << 14 | 2u << 16);
  GPIOG->OSPEEDR = GPIOG->OSPEEDR | (2u << 14 | 2u << 16);
  GPIOG->PUPDR = (GPIOG->PUPDR & ~(3u << 16)) | (1u << 16);
  GPIOG->AFR[0] = (GPIOG->AFR[0] & ~(0xFu << 28)) | (8u << 28);
  GPIOG->AFR[1] = (GPIOG->AFR[1] & ~0xFu) | 8u;
  LPUART1->CR1 = 0;
  // LPUART: BRR = 256 * f_ck / baud (0x300 .. 0xFFFFF).
  LPUART1->BRR = static_cast<uint32_t>((256ull * kSysClockHz + kBaud / 2) / kBaud);
  LPUART1->CR1 = USART_CR1_RXNEIE_RXFNEIE | USART_CR1_TE | USART_CR1_RE | USART_CR1_UE;
  NVIC_SetPriority(LPUART1_IRQn, 0);
  NVIC_EnableIRQ(LPUART1_IRQn);
}

void storage_init() {
  g_flash_base = reinterpret_cast<uint32_t>(lepton_meta);
  // This layout needs dual-bank mode (4 KiB pages); with the banks swapped (BFB2 boot from
  // bank 2), bank numbers are swapped too.
  g_banks_swapped = (SYSCFG->MEMRMP & SYSCFG_MEMRMP_FB_MODE) != 0;
  g_storage_ok = (FLASH->OPTR & FLASH_OPTR_DBANK) != 0 &&
                 reinterpret_cast<uint32_t>(lepton_storage_end) - g_flash_base == kStorageBytes;
}

}  // namespace

extern "C" RAMFUNC void SysTick_Handler() { g_ms = g_ms + 1; }

extern "C" RAMFUNC void LPUART1_IRQHandler() {
  uint32_t isr = LPUART1->ISR;
  if (isr & (USART_ISR_ORE | USART_ISR_FE | USART_ISR_NE | USART_ISR_PE)) {
    LPUART1->ICR = USART_ICR_ORECF | USART_ICR_FECF | USART_ICR_NECF | USART_ICR_PECF;
    if (isr & USART_ISR_ORE) g_overruns = g_overruns + 1;
  }
  while (isr & USART_ISR_RXNE_RXFNE) {
    const uint8_t byte = static_cast<uint8_t>(LPUART1->RDR);
    const uint32_t head = g_ring_head;
    if (head - g_ring_tail < kRingBytes) {
      g_ring[head % kRingBytes] = byte;
      g_ring_head = head + 1;
    } else {
      g_overruns = g_overruns + 1;
    }
    isr = LPUART1->ISR;
  }
}

namespace lepton::board {

bool storage_flush();

void init() {
  clock_init();
  RCC->APB2ENR = RCC->APB2ENR | RCC_APB2ENR_SYSCFGEN;
  (void)RCC->APB2ENR;
  SysTick->LOAD = kTicksPerMs - 1;
  SysTick->VAL = 0;
  SysTick->CTRL = SysTick_CTRL_CLKSOURCE_Msk | SysTick_CTRL_TICKINT_Msk | SysTick_CTRL_ENABLE_Msk;
  uart_init();
  storage_init();
  __enable_irq();
}

size_t uart_read(uint8_t* out, size_t cap) {
  size_t n = 0;
  uint32_t tail = g_ring_tail;
  const uint32_t head = g_ring_head;
  while (n < cap && tail != head) out[n++] = g_ring[tail++ % kRingBytes];
  g_ring_tail = tail;
  return n;
}

void uart_write(const uint8_t* data, size_t len) {
  for (size_t i = 0; i < len; ++i) {
    while (!(LPUART1->ISR & USART_ISR_TXE_TXFNF)) {
    }
    LPUART1->TDR = data[i];
  }
}

uint32_t micros() {
  uint32_t ms, ticks;
  do {
    ms = g_ms;
    ticks = SysTick->VAL;
  } while (ms != g_ms);
  return ms * 1000u + (kTicksPerMs - 1 - ticks) / (kTicksPerMs / 1000);
}

void idle() {
  // Sleep until an interrupt (a received byte, or the 1 ms tick). With PRIMASK set, a pending
  // interrupt still ends WFI and is taken at cpsie, so a byte that came just before is not missed.
  __disable_irq();
  if (g_ring_head == g_ring_tail) __WFI();
  __enable_irq();
}

void reset() {
  while (!(LPUART1->ISR & USART_ISR_TC)) {  // let the last bytes leave
  }
  NVIC_SystemReset();
}

// The flash itself. Double words still written in part are programmed first (as storage_flush),
// so what the caller reads through this pointer is everything written so far (the core takes the
// pointer after a transfer, to verify and load, never in the middle of one).
const uint8_t* storage_map() {
  storage_flush();
  return reinterpret_cast<const uint8_t*>(g_flash_base);
}

uint32_t storage_page_bytes() { return kPageBytes; }

bool storage_erase(uint32_t offset, uint32_t len) {
  if (!g_storage_ok || offset % kPageBytes || len % kPageBytes || offset > kStorageBytes ||
      len > kStorageBytes - offset) {
    return false;
  }
  const uint32_t begin = g_flash_base + offset, end = begin + len;
  g_writer.drop(begin, end);  // the erase wins over what was not yet written
  bool ok = true;
  for (uint32_t addr = begin; ok && addr < end; addr += kPageBytes) {
    const uint32_t rel = addr - FLASH_BASE;
    const uint32_t bank2 = (rel >= kBankBytes) != g_banks_swapped;
    flash_unlock();
    ok = flash_erase_page(bank2, (rel % kBankBytes) / kPageBytes);
    flash_lock();
  }
  return ok;
}

bool storage_write(uint32_t offset, const uint8_t* data, uint32_t len) {
  if (!g_storage_ok || offset > kStorageBytes || len > kStorageBytes - offset) return false;
  return g_writer.write(g_flash_base + offset, data, len);
}

// Programs the double words still written in part (their other bytes stay erased).
bool storage_flush() { return g_storage_ok && g_writer.flush(); }

}  // namespace lepton::board

int main() { lepton::run(kTrustedKeys, kTrustedKeyCount); }
