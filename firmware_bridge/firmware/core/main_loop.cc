// lepton::run(): board::init, boot (load the active slot), ANNOUNCE, serve forever.
#include "core/board.h"
#include "core/device.h"
#include "core/lepton.h"

namespace lepton {

void run(const uint8_t (*trusted_keys)[32], size_t key_count) {
  board::init();
  device::boot(trusted_keys, key_count);
  device::announce();
  static uint8_t rx[512];
  for (;;) {
    device::tick();
    const size_t n = board::uart_read(rx, sizeof rx);
    if (n > 0) {
      device::feed(rx, n);
      if (device::reset_requested()) {
        board::reset();
      }
    } else {
      board::idle();
    }
  }
}

}  // namespace lepton
