// A small validating JSON reader (RFC 8259, depth-limited, no allocation) for manifest.json.
#include "core/manifest.h"

#include <cstdio>
#include <cstring>

namespace lepton {
namespace {

constexpr int kMaxDepth = 16;  // manifests nest 4 deep; each level takes ~270 B of stack on Cortex-M

enum class Kind { kNone, kString, kInt, kNumber, kBool, kNull, kObject, kArray };

struct Scalar {
  Kind kind = Kind::kNone;
  const uint8_t* raw = nullptr;  // string: the bytes between the quotes (escaped)
  size_t raw_len = 0;
  int64_t integer = 0;
  bool int_overflow = false;
};

struct Found {
  Scalar schema, name, version, model, inputs, outputs, runtime, arena;
  Scalar sha256, size, recommended, host_recommended;
};

void unescape(const Scalar& s, char* out, size_t cap);

class Reader {
 public:
  Reader(const uint8_t* p, size_t n, Found* f) : p_(p), end_(p + n), f_(f) {}

  bool document() {
    ws();
    Scalar top;
    if (!value(0, nullptr, 0, &top)) return false;
    ws();
    if (p_ != end_) return false;
    if (top.kind != Kind::kObject) {
      not_object_ = true;
      return false;
    }
    return true;
  }
  bool not_object() const { return not_object_; }

 private:
  void ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  bool lit(const char* s) {
    size_t n = strlen(s);
    if (static_cast<size_t>(end_ - p_) < n || memcmp(p_, s, n) != 0) return false;
    p_ += n;
    return true;
  }
  static bool hex(uint8_t c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

  bool string(Scalar* s) {
    if (p_ >= end_ || *p_ != '"') return false;
    ++p_;
    s->kind = Kind::kString;
    s->raw = p_;
    while (p_ < end_) {
      uint8_t c = *p_;
      if (c == '"') {
        s->raw_len = static_cast<size_t>(p_ - s->raw);
        ++p_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        if (++p_ >= end_) return false;
        c = *p_;
        if (c == 'u') {
          if (end_ - p_ < 5 || !hex(p_[1]) || !hex(p_[2]) || !hex(p_[3]) || !hex(p_[4])) return false;
          p_ += 5;
          continue;
        }
        if (strchr("\"\\/bfnrt", c) == nullptr || c == 0) return false;
      }
      ++p_;
    }
    return false;
  }

  bool number(Scalar* s) {
    const uint8_t* start = p_;
    bool neg = false, integral = true;
    if (p_ < end_ && *p_ == '-') { neg = true; ++p_; }
    if (p_ >= end_) return false;
    if (*p_ == '0') {
      ++p_;
    } else if (*p_ >= '1' && *p_ <= '9') {
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    } else {
      return false;
    }
    const uint8_t* int_end = p_;
    if (p_ < end_ && *p_ == '.') {
      integral = false;
      ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      integral = false;
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (p_ >= end_ || *p_ < '0' || *p_ > '9') return false;
      while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    }
    s->kind = integral ? Kind::kInt : Kind::kNumber;
    if (integral) {
      int64_t v = 0;
      for (const uint8_t* d = start + (neg ? 1 : 0); d < int_end; ++d) {
        if (v > (INT64_MAX - 9) / 10) { s->int_overflow = true; break; }
        v = v * 10 + (*d - '0');
      }
      s->integer = neg ? -v : v;
    }
    return true;
  }

  // Reads one value at `depth` (0: the document) under keys[0..nkeys) and records the ones we want.
  bool value(int depth, const Scalar* keys, int nkeys, Scalar* out) {
    if (depth > kMaxDepth) return false;
    ws();
    if (p_ >= end_) return false;
    const uint8_t c = *p_;
    Scalar v;
    if (c == '{') {
      ++p_;
      v.kind = Kind::kObject;
      ws();
      if (p_ < end_ && *p_ == '}') {
        ++p_;
      } else {
        for (;;) {
          ws();
          Scalar key;
          if (!string(&key)) return false;
          ws();
          if (p_ >= end_ || *p_ != ':') return false;
          ++p_;
          Scalar path[2];
          int n = 0;
          if (nkeys < 2) {
            for (int i = 0; i < nkeys; ++i) path[i] = keys[i];
            path[nkeys] = key;
            n = nkeys + 1;
          }
          Scalar child;
          if (!value(depth + 1, path, n, &child)) return false;
          if (n > 0 && depth == n - 1) record(path, n, child);
          ws();
          if (p_ < end_ && *p_ == ',') { ++p_; continue; }
          if (p_ < end_ && *p_ == '}') { ++p_; break; }
          return false;
        }
      }
    } else if (c == '[') {
      ++p_;
      v.kind = Kind::kArray;
      ws();
      if (p_ < end_ && *p_ == ']') {
        ++p_;
      } else {
        for (;;) {
          Scalar child;
          if (!value(depth + 1, nullptr, 3, &child)) return false;  // 3: nothing recorded inside arrays
          ws();
          if (p_ < end_ && *p_ == ',') { ++p_; continue; }
          if (p_ < end_ && *p_ == ']') { ++p_; break; }
          return false;
        }
      }
    } else if (c == '"') {
      if (!string(&v)) return false;
    } else if (c == 't') {
      if (!lit("true")) return false;
      v.kind = Kind::kBool;
    } else if (c == 'f') {
      if (!lit("false")) return false;
      v.kind = Kind::kBool;
    } else if (c == 'n') {
      if (!lit("null")) return false;
      v.kind = Kind::kNull;
    } else {
      if (!number(&v)) return false;
    }
    *out = v;
    return true;
  }

  static bool is(const Scalar& key, const char* s) {
    if (memchr(key.raw, '\\', key.raw_len) == nullptr) {
      return key.raw_len == strlen(s) && memcmp(key.raw, s, key.raw_len) == 0;
    }
    char plain[40];  // an escaped key: compare what it means
    if (key.raw_len >= 6 * sizeof plain) return false;
    unescape(key, plain, sizeof plain);
    return strcmp(plain, s) == 0;
  }

  void record(const Scalar* path, int n, const Scalar& v) {
    if (n == 1) {
      const Scalar& k = path[0];
      if (is(k, "schema")) f_->schema = v;
      else if (is(k, "name")) f_->name = v;
      else if (is(k, "version")) f_->version = v;
      else if (is(k, "model")) f_->model = v;
      else if (is(k, "inputs")) f_->inputs = v;
      else if (is(k, "outputs")) f_->outputs = v;
      else if (is(k, "runtime")) f_->runtime = v;
      else if (is(k, "arena")) f_->arena = v;
    } else if (n == 2) {
      if (is(path[0], "model") && is(path[1], "sha256")) f_->sha256 = v;
      else if (is(path[0], "model") && is(path[1], "size")) f_->size = v;
      else if (is(path[0], "arena") && is(path[1], "recommended_bytes")) f_->recommended = v;
      else if (is(path[0], "arena") && is(path[1], "host_recommended_bytes")) f_->host_recommended = v;
    }
  }

  const uint8_t* p_;
  const uint8_t* end_;
  Found* f_;
  bool not_object_ = false;
};

bool valid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    size_t extra;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) { extra = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { extra = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { extra = 3; cp = c & 0x07; }
    else return false;
    if (i + extra >= n) return false;
    for (size_t k = 1; k <= extra; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((extra == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (extra == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += extra + 1;
  }
  return true;
}

int hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Unescapes a JSON string into out (UTF-8, cut at cap-1 bytes on a character boundary).
void unescape(const Scalar& s, char* out, size_t cap) {
  size_t j = 0;
  auto put = [&](uint32_t cp) {
    uint8_t buf[4];
    size_t n;
    if (cp < 0x80) { buf[0] = static_cast<uint8_t>(cp); n = 1; }
    else if (cp < 0x800) { buf[0] = static_cast<uint8_t>(0xC0 | (cp >> 6)); buf[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) { buf[0] = static_cast<uint8_t>(0xE0 | (cp >> 12)); buf[1] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F)); buf[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F)); n = 3; }
    else { buf[0] = static_cast<uint8_t>(0xF0 | (cp >> 18)); buf[1] = static_cast<uint8_t>(0x80 | ((cp >> 12) & 0x3F)); buf[2] = static_cast<uint8_t>(0x80 | ((cp >> 6) & 0x3F)); buf[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F)); n = 4; }
    if (j + n < cap) { memcpy(out + j, buf, n); j += n; }
    else j = cap;  // full: stop here
  };
  for (size_t i = 0; i < s.raw_len && j < cap;) {
    uint8_t c = s.raw[i];
    if (c != '\\') {
      // copy one UTF-8 character whole
      size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      if (i + n > s.raw_len || j + n >= cap) break;
      memcpy(out + j, s.raw + i, n);
      i += n;
      j += n;
      continue;
    }
    c = s.raw[i + 1];
    i += 2;
    switch (c) {
      case 'b': put('\b'); break;
      case 'f': put('\f'); break;
      case 'n': put('\n'); break;
      case 'r': put('\r'); break;
      case 't': put('\t'); break;
      case 'u': {
        uint32_t cp = 0;
        for (int k = 0; k < 4; ++k) cp = (cp << 4) | static_cast<uint32_t>(hexval(s.raw[i + k]));
        i += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= s.raw_len && s.raw[i] == '\\' && s.raw[i + 1] == 'u') {
          uint32_t lo = 0;
          for (int k = 0; k < 4; ++k) lo = (lo << 4) | static_cast<uint32_t>(hexval(s.raw[i + 2 + k]));
          if (lo >= 0xDC00 && lo <= 0xDFFF) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            i += 6;
          }
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        put(cp);
        break;
      }
      default: put(c); break;
    }
  }
  if (j >= cap) j = cap - 1;
  out[j] = '\0';
}

bool int_field(const Scalar& s) { return s.kind == Kind::kInt && !s.int_overflow; }

size_t code_points(const char* s) {
  size_t n = 0;
  for (; *s != '\0'; ++s) {
    if ((static_cast<uint8_t>(*s) & 0xC0) != 0x80) ++n;
  }
  return n;
}

}  // namespace

bool parse_manifest(const uint8_t* json, size_t len, Manifest* out, char* why, size_t cap) {
  memset(out, 0, sizeof *out);
  Found f;
  if (!valid_utf8(json, len)) {
    snprintf(why, cap, "not valid JSON (not UTF-8)");
    return false;
  }
  Reader reader(json, len, &f);
  if (!reader.document()) {
    snprintf(why, cap, reader.not_object() ? "must be a JSON object" : "not valid JSON");
    return false;
  }
  if (!int_field(f.schema) || f.schema.integer != 1) {
    snprintf(why, cap, "schema is not 1");
    return false;
  }
  struct { const char* key; const Scalar* v; Kind kind; const char* type; } fields[] = {
      {"name", &f.name, Kind::kString, "str"},     {"version", &f.version, Kind::kInt, "int"},
      {"model", &f.model, Kind::kObject, "dict"},  {"inputs", &f.inputs, Kind::kArray, "list"},
      {"outputs", &f.outputs, Kind::kArray, "list"}, {"runtime", &f.runtime, Kind::kString, "str"},
      {"arena", &f.arena, Kind::kObject, "dict"},
  };
  for (const auto& field : fields) {
    if (field.v->kind != field.kind) {
      snprintf(why, cap, "field '%s' missing or not %s", field.key, field.type);
      return false;
    }
  }
  // 64 characters once unescaped (Python counts code points); lowercase hex names a model.
  char sha_text[4 * 64 + 2];
  if (f.sha256.kind == Kind::kString && f.sha256.raw_len < 6 * 66) {
    unescape(f.sha256, sha_text, sizeof sha_text);
  } else {
    sha_text[0] = '\0';
  }
  if (f.sha256.kind != Kind::kString || code_points(sha_text) != 64) {
    snprintf(why, cap, "field 'model.sha256' missing or malformed");
    return false;
  }
  for (size_t i = 0; i < 32; ++i) {
    const uint8_t a = static_cast<uint8_t>(sha_text[2 * i]), b = static_cast<uint8_t>(sha_text[2 * i + 1]);
    const int hi = hexval(a), lo = hexval(b);
    if (hi < 0 || lo < 0 || (a >= 'A' && a <= 'F') || (b >= 'A' && b <= 'F')) {
      out->sha256_ok = false;  // kept as text by Python: it cannot match the announced hash
      break;
    }
    out->sha256_ok = true;
    out->sha256[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (!int_field(f.size) || f.size.integer < 0) {
    snprintf(why, cap, "field 'model.size' missing or malformed");
    return false;
  }
  if (f.version.int_overflow || f.version.integer < 0) {
    snprintf(why, cap, "field 'version' must be >= 0");
    return false;
  }
  if (f.version.integer >= 0xFFFFFFFFLL || f.size.integer > 0xFFFFFFFFLL) {
    snprintf(why, cap, "version or model size out of range for this device");
    return false;
  }
  out->version = static_cast<uint32_t>(f.version.integer);
  out->model_size = static_cast<uint32_t>(f.size.integer);
  if (int_field(f.recommended) && f.recommended.integer > 0) {
    out->recommended_arena = f.recommended.integer > 0xFFFFFFFFLL ? 0xFFFFFFFFu
                                                                 : static_cast<uint32_t>(f.recommended.integer);
  }
  if (int_field(f.host_recommended) && f.host_recommended.integer > 0) {
    out->host_recommended_arena = f.host_recommended.integer > 0xFFFFFFFFLL
                                      ? 0xFFFFFFFFu
                                      : static_cast<uint32_t>(f.host_recommended.integer);
  }
  unescape(f.name, out->name, sizeof out->name);
  return true;
}

}  // namespace lepton
