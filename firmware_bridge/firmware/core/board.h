// The board interface: the only thing a port implements (see boards/*/).
#pragma once
#include <cstddef>
#include <cstdint>
namespace lepton::board {
void init();                                      // clocks, UART, timer, storage
size_t uart_read(uint8_t* out, size_t cap);       // bytes received so far, non-blocking; 0 if none
void uart_write(const uint8_t* data, size_t len); // returns when the bytes are queued or sent
uint32_t micros();                                // free-running microsecond clock (wraps)
void idle();                                      // nothing to do: sleep until input or ~1 ms
[[noreturn]] void reset();                        // restart the board (ANNOUNCE follows at boot)
// Storage: one region of storage_bytes() = kMetaBytes + 2 * SLOT_BYTES, byte addressed.
const uint8_t* storage_map();                     // memory-mapped read view of the whole region
uint32_t storage_page_bytes();                    // erase granularity (power of two)
bool storage_erase(uint32_t offset, uint32_t len);          // page aligned
bool storage_write(uint32_t offset, const uint8_t* data, uint32_t len); // any offset/len
bool storage_flush();                             // make every write so far durable
}  // namespace lepton::board
