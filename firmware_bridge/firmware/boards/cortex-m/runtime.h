// What boards/cortex-m/runtime.cc asks of a Cortex-M port.
#pragma once

extern "C" {
// The program ended (exit() or a return from main): each port stops or restarts in its own way.
[[noreturn]] void lepton_board_exit(int code);
}
