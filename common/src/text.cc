#include "attune/common/text.h"

#include <algorithm>
#include <cstdint>

namespace attune {
namespace {

// The length of the well-formed UTF-8 character at the start of `s`, or 0.
size_t CharLength(std::string_view s) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint32_t cp = 0;
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;  // a continuation byte, 0xc0/0xc1 (overlong) or past U+10FFFF
  }
  if (s.size() < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((b(i) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i) & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff))) return 0;
  if (cp >= 0xd800 && cp <= 0xdfff) return 0;  // surrogates
  return n;
}

}  // namespace

bool IsUtf8(std::string_view in) {
  for (size_t at = 0; at < in.size();) {
    const size_t n = CharLength(in.substr(at));
    if (n == 0) return false;
    at += n;
  }
  return true;
}

std::string SafeText(std::string_view in, size_t max_bytes) {
  constexpr std::string_view kEllipsis = "\xe2\x80\xa6";  // …
  if (max_bytes < kEllipsis.size()) max_bytes = kEllipsis.size();
  // Cleaning never lengthens text ('?' stands for one byte at least), so
  // what fits as it is is never cut; otherwise room is kept for the ellipsis.
  const size_t room = in.size() <= max_bytes ? max_bytes : max_bytes - kEllipsis.size();
  std::string out;
  out.reserve(std::min(in.size(), max_bytes));
  for (size_t at = 0; at < in.size();) {
    const size_t n = CharLength(in.substr(at));
    const bool control =
        n == 1 && ((static_cast<uint8_t>(in[at]) < 0x20 && in[at] != '\t') || in[at] == 0x7f);
    const std::string_view piece = n == 0 || control ? std::string_view("?") : in.substr(at, n);
    if (out.size() + piece.size() > room) return out += kEllipsis;
    out += piece;
    at += n == 0 ? 1 : n;
  }
  return out;
}

}  // namespace attune
