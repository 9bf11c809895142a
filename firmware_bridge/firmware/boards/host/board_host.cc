// host: the firmware core as a Linux program on a pseudo-terminal, storage in a file (mmap).
//   firmware --state FILE [--trusted-key HEX64]...   prints the pty's slave path, then serves
//   firmware --probe MODEL.tflite [--arena-capacity N]   prints one JSON line, exits 0 (1 if not ok)
// reset() re-executes the program with the same arguments; the pty survives (its descriptors are
// passed in LEPTON_PTY_FDS), so the port path stays the same. SIGTERM exits 0.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/board.h"
#include "core/lepton.h"
#include "core/slots.h"

namespace {

int pty_master = -1;
int pty_slave = -1;
const char* state_path = nullptr;
int state_fd = -1;
uint8_t* storage = nullptr;
uint32_t storage_len = 0;
char** saved_argv = nullptr;
constexpr uint32_t kPage = 4096;
constexpr size_t kMaxKeys = 8;
uint8_t trusted[kMaxKeys][32];
size_t trusted_count = 0;
alignas(16) uint8_t probe_model[LEPTON_SLOT_BYTES];

[[noreturn]] void die(const char* what) {
  fprintf(stderr, "firmware: %s: %s\n", what, strerror(errno));
  exit(1);
}

[[noreturn]] void usage(const char* why) {
  fprintf(stderr,
          "firmware: %s\nusage: firmware --state FILE [--trusted-key HEX64]...\n"
          "       firmware --probe MODEL.tflite [--arena-capacity N]\n",
          why);
  exit(2);
}

void on_sigterm(int) { _exit(0); }

bool parse_key(const char* hex, uint8_t out[32]) {
  if (strlen(hex) != 64) return false;
  for (int i = 0; i < 32; ++i) {
    unsigned v;
    char pair[3] = {hex[2 * i], hex[2 * i + 1], 0};
    char* end = nullptr;
    v = static_cast<unsigned>(strtoul(pair, &end, 16));
    if (end != pair + 2) return false;
    out[i] = static_cast<uint8_t>(v);
  }
  return true;
}

void open_pty() {
  const char* inherited = getenv("LEPTON_PTY_FDS");
  if (inherited != nullptr && sscanf(inherited, "%d,%d", &pty_master, &pty_slave) == 2 &&
      fcntl(pty_master, F_GETFD) != -1 && ptsname(pty_master) != nullptr) {
    return;  // a reset: the same pty (a master: ptsname knows it), already announced on stdout
  }
  pty_master = posix_openpt(O_RDWR | O_NOCTTY);
  if (pty_master < 0 || grantpt(pty_master) != 0 || unlockpt(pty_master) != 0) die("posix_openpt");
  const char* name = ptsname(pty_master);
  if (name == nullptr) die("ptsname");
  // Keep a slave descriptor open: the line stays up (no EIO) between host connections.
  pty_slave = open(name, O_RDWR | O_NOCTTY);
  if (pty_slave < 0) die(name);
  termios tio;
  if (tcgetattr(pty_slave, &tio) == 0) {
    cfmakeraw(&tio);
    tcsetattr(pty_slave, TCSANOW, &tio);
  }
  char env[32];
  snprintf(env, sizeof env, "%d,%d", pty_master, pty_slave);
  setenv("LEPTON_PTY_FDS", env, 1);
  printf("%s\n", name);
  fflush(stdout);
}

void open_storage() {
  storage_len = lepton::slots::storage_bytes(kPage);
  state_fd = open(state_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (state_fd < 0) die(state_path);
  struct stat st;
  if (fstat(state_fd, &st) != 0) die(state_path);
  if (static_cast<uint64_t>(st.st_size) < storage_len && ftruncate(state_fd, storage_len) != 0) die(state_path);
  void* map = mmap(nullptr, storage_len, PROT_READ | PROT_WRITE, MAP_SHARED, state_fd, 0);
  if (map == MAP_FAILED) die("mmap");
  storage = static_cast<uint8_t*>(map);
}

int probe_main(const char* path, size_t capacity) {
  FILE* f = fopen(path, "rb");
  if (f == nullptr) {
    fprintf(stderr, "firmware: %s: %s\n", path, strerror(errno));
    return 2;
  }
  const size_t n = fread(probe_model, 1, sizeof probe_model, f);
  const bool too_big = fgetc(f) != EOF;
  fclose(f);
  lepton::ProbeResult r{};
  if (too_big) {
    r.error = "model larger than this firmware's slot";
  } else {
    r = lepton::probe(probe_model, n, capacity);
  }
  char line[256];
  if (lepton::probe_json(r, line, sizeof line) == 0) return 1;
  printf("%s\n", line);
  fflush(stdout);
  return r.ok ? 0 : 1;
}

}  // namespace

namespace lepton::board {

void init() {
  signal(SIGTERM, on_sigterm);
  signal(SIGPIPE, SIG_IGN);
  open_pty();
  int flags = fcntl(pty_master, F_GETFL);
  fcntl(pty_master, F_SETFL, flags | O_NONBLOCK);
  open_storage();
}

size_t uart_read(uint8_t* out, size_t cap) {
  const ssize_t n = read(pty_master, out, cap);
  return n > 0 ? static_cast<size_t>(n) : 0;
}

void uart_write(const uint8_t* data, size_t len) {
  // A UART does not wait for a listener: give up on bytes nobody reads within a second.
  int waited_ms = 0;
  while (len > 0) {
    const ssize_t n = write(pty_master, data, len);
    if (n > 0) {
      data += n;
      len -= static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return;
    if (waited_ms >= 1000) return;
    pollfd p{pty_master, POLLOUT, 0};
    poll(&p, 1, 10);
    waited_ms += 10;
  }
}

uint32_t micros() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint32_t>(static_cast<uint64_t>(ts.tv_sec) * 1000000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u);
}

void idle() {
  pollfd p{pty_master, POLLIN, 0};
  poll(&p, 1, 1);
}

void reset() {
  storage_flush();
  // The answer to RESET is already in the pty, which outlives the exec.
  execv("/proc/self/exe", saved_argv);
  die("execv");
}

const uint8_t* storage_map() { return storage; }
uint32_t storage_page_bytes() { return kPage; }

bool storage_erase(uint32_t offset, uint32_t len) {
  if (offset % kPage != 0 || len % kPage != 0 || offset > storage_len || len > storage_len - offset) return false;
  memset(storage + offset, 0xFF, len);
  return true;
}

bool storage_write(uint32_t offset, const uint8_t* data, uint32_t len) {
  if (offset > storage_len || len > storage_len - offset) return false;
  memcpy(storage + offset, data, len);
  return true;
}

bool storage_flush() { return msync(storage, storage_len, MS_SYNC) == 0; }

}  // namespace lepton::board

int main(int argc, char** argv) {
  saved_argv = argv;
  const char* probe = nullptr;
  size_t capacity = 0;
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    const char* v = i + 1 < argc ? argv[i + 1] : nullptr;
    if (strcmp(a, "--state") == 0 && v != nullptr) {
      state_path = v;
      ++i;
    } else if (strcmp(a, "--trusted-key") == 0 && v != nullptr) {
      if (trusted_count == kMaxKeys) usage("at most 8 trusted keys");
      if (!parse_key(v, trusted[trusted_count])) usage("--trusted-key takes 64 hex digits (a raw Ed25519 public key)");
      ++trusted_count;
      ++i;
    } else if (strcmp(a, "--probe") == 0 && v != nullptr) {
      probe = v;
      ++i;
    } else if (strcmp(a, "--arena-capacity") == 0 && v != nullptr) {
      char* end = nullptr;
      capacity = strtoul(v, &end, 10);
      if (end == v || *end != '\0') usage("--arena-capacity takes a number of bytes");
      ++i;
    } else {
      usage("unknown or incomplete argument");
    }
  }
  if (probe != nullptr) return probe_main(probe, capacity);
  if (state_path == nullptr) usage("--state FILE or --probe MODEL is required");
  lepton::run(trusted_count > 0 ? trusted : nullptr, trusted_count);
}
