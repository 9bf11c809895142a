// The device side of firmware_bridge/PROTOCOL.md (mirrors firmware_bridge/device.py request by
// request, NAK by NAK): bytes from the line in, answers out through board::uart_write.
#pragma once
#include <cstddef>
#include <cstdint>

namespace lepton::device {

// Reads the slots, checks their SHA-256 and loads the active model. Call after board::init().
void boot(const uint8_t (*trusted_keys)[32], size_t key_count);
// The ANNOUNCE frame (sequence 0, the HELLO answer as payload).
void announce();
// Bytes from the line. Stops early after a RESET was answered (the rest is lost).
void feed(const uint8_t* data, size_t len);
// Advance the uptime clock (call often: micros() wraps every 71 minutes).
void tick();
bool reset_requested();

}  // namespace lepton::device
