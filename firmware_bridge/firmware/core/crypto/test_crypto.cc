// Host-side test driver for core/crypto (not part of the firmware). Reads commands, one per line,
// from the file named by argv[1] or from stdin, and prints one result line per command; the Python
// test (tests/test_firmware_crypto.py) holds the expected values. HEX "-" is the empty string.
//
//   sha256 HEX [N,N,...]    digest of HEX, fed in chunks of the listed sizes, then the rest
//   sha256rep HEX COUNT     digest of HEX repeated COUNT times (one update per repetition)
//   sha512 ... / sha512rep ...  the same for SHA-512
//   ed25519 SIG PUB MSG     "1" if SIG verifies MSG under PUB, else "0"
//
// Each hash is computed twice with the same object, checking that finish() resets it.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "ed25519.h"
#include "sha256.h"
#include "sha512.h"

namespace {

[[noreturn]] void fail(const std::string& why) {
  std::printf("ERR %s\n", why.c_str());
  std::exit(2);
}

std::vector<uint8_t> from_hex(const std::string& hex) {
  if (hex == "-") return {};
  if (hex.size() % 2 != 0) fail("odd hex length");
  std::vector<uint8_t> out(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = uint8_t(std::strtoul(hex.substr(2 * i, 2).c_str(), nullptr, 16));
  }
  return out;
}

std::string to_hex(const uint8_t* data, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[data[i] >> 4];
    out += digits[data[i] & 15];
  }
  return out;
}

std::vector<size_t> parse_chunks(const std::string& list) {
  std::vector<size_t> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::strtoul(item.c_str(), nullptr, 10));
  return out;
}

template <class Hash>
std::string chunked(const std::vector<uint8_t>& msg, const std::vector<size_t>& chunks) {
  Hash h;
  uint8_t first[Hash::kDigestBytes], second[Hash::kDigestBytes];
  for (int round = 0; round < 2; ++round) {
    size_t at = 0;
    for (size_t n : chunks) {
      if (n > msg.size() - at) fail("chunks longer than the message");
      h.update(msg.data() + at, n);
      at += n;
    }
    h.update(msg.data() + at, msg.size() - at);
    h.finish(round == 0 ? first : second);
  }
  if (std::memcmp(first, second, sizeof first) != 0) fail("finish() did not reset the hash");
  return to_hex(first, sizeof first);
}

template <class Hash>
std::string repeated(const std::vector<uint8_t>& unit, unsigned long count) {
  Hash h;
  uint8_t first[Hash::kDigestBytes], second[Hash::kDigestBytes];
  for (int round = 0; round < 2; ++round) {
    for (unsigned long i = 0; i < count; ++i) h.update(unit.data(), unit.size());
    h.finish(round == 0 ? first : second);
  }
  if (std::memcmp(first, second, sizeof first) != 0) fail("finish() did not reset the hash");
  return to_hex(first, sizeof first);
}

std::string run(const std::string& line) {
  std::stringstream in(line);
  std::string cmd, a, b, c;
  in >> cmd >> a >> b >> c;
  if (cmd == "sha256") return chunked<lepton::Sha256>(from_hex(a), parse_chunks(b));
  if (cmd == "sha512") return chunked<lepton::Sha512>(from_hex(a), parse_chunks(b));
  if (cmd == "sha256rep") return repeated<lepton::Sha256>(from_hex(a), std::strtoul(b.c_str(), nullptr, 10));
  if (cmd == "sha512rep") return repeated<lepton::Sha512>(from_hex(a), std::strtoul(b.c_str(), nullptr, 10));
  if (cmd == "ed25519") {
    const std::vector<uint8_t> sig = from_hex(a), pub = from_hex(b), msg = from_hex(c);
    if (sig.size() != 64 || pub.size() != 32) fail("ed25519 needs a 64-byte signature and a 32-byte key");
    return lepton::ed25519_verify(sig.data(), msg.empty() ? nullptr : msg.data(), msg.size(), pub.data())
               ? "1" : "0";
  }
  fail("unknown command: " + cmd);
}

}  // namespace

int main(int argc, char** argv) {
  std::FILE* in = stdin;
  if (argc > 1 && !(in = std::fopen(argv[1], "r"))) fail(std::string("cannot open ") + argv[1]);
  std::string line;
  for (int ch; (ch = std::fgetc(in)) != EOF;) {
    if (ch != '\n') {
      line += char(ch);
      continue;
    }
    if (!line.empty()) std::printf("%s\n", run(line).c_str());
    line.clear();
  }
  if (!line.empty()) std::printf("%s\n", run(line).c_str());
  return 0;
}
