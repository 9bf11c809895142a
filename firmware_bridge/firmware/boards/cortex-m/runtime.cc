// The C and C++ run-time hooks a bare-metal newlib-nano program needs, shared by the Cortex-M ports.
// No heap: _sbrk fails, so any malloc shows at once (the firmware allocates nothing after start-up,
// and TFLite Micro with TF_LITE_STATIC_MEMORY none). Static destructors never run on a board.
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <sys/stat.h>

#include "runtime.h"

extern "C" {
void* __dso_handle = nullptr;
int __cxa_atexit(void (*)(void*), void*, void*) { return 0; }
int atexit(void (*)()) { return 0; }
void __cxa_pure_virtual() { __builtin_trap(); }  // a fault: the port reports it its own way

void* _sbrk(ptrdiff_t) {
  errno = ENOMEM;
  return reinterpret_cast<void*>(-1);
}
void _exit(int code) { lepton_board_exit(code); }
int _kill(int, int) {
  errno = EINVAL;
  return -1;
}
int _getpid() { return 1; }
int _write(int, const char*, int len) { return len; }
int _read(int, char*, int) { return 0; }
int _close(int) { return -1; }
int _lseek(int, int, int) { return 0; }
int _isatty(int) { return 1; }
int _fstat(int, struct stat* st) {
  std::memset(st, 0, sizeof(*st));
  st->st_mode = S_IFCHR;
  return 0;
}
}
