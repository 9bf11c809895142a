// Driver for core/manifest.cc: reads records (u32 little-endian length, then the bytes) on stdin and
// prints one line per record: "ok\tNAME_HEX\tVERSION\tSIZE\tARENA\tSHA_OK" or "err\tMESSAGE".
// Built and run by tests/test_firmware_core.py; not part of the firmware.
#include <cstdio>

#include "core/manifest.h"

int main() {
  static unsigned char buf[1 << 20];
  unsigned char len_bytes[4];
  while (fread(len_bytes, 1, 4, stdin) == 4) {
    const size_t len = len_bytes[0] | (len_bytes[1] << 8) | (len_bytes[2] << 16) | (static_cast<size_t>(len_bytes[3]) << 24);
    if (len > sizeof buf || fread(buf, 1, len, stdin) != len) return 2;
    lepton::Manifest m;
    char why[128];
    if (lepton::parse_manifest(buf, len, &m, why, sizeof why)) {
      printf("ok\t");
      for (const char* c = m.name; *c != '\0'; ++c) printf("%02x", static_cast<unsigned char>(*c));
      printf("\t%u\t%u\t%u\t%d\n", m.version, m.model_size, m.recommended_arena, m.sha256_ok ? 1 : 0);
    } else {
      printf("err\t%s\n", why);
    }
  }
  return 0;
}
