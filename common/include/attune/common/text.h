// Text that came from the network (a heartbeat's stage, a caller's name, a
// message that quotes a request) on its way into logs, the audit log, JSON
// and `attune status`: bounded in bytes and always valid UTF-8, so that no
// caller can make an entry large, or make a JSON writer throw.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace attune {

// `in` as printable UTF-8 of at most `max_bytes` bytes (max_bytes >= 3):
// each byte that does not begin a well-formed UTF-8 character (RFC 3629: no
// overlong forms, surrogates or code points past U+10FFFF) and each ASCII
// control character but tab becomes '?'; a text cut short is cut at a
// character boundary and ends with "…" (within the bound).
std::string SafeText(std::string_view in, size_t max_bytes);

// Whether `in` is well-formed UTF-8 (RFC 3629, as SafeText reads it; control
// characters allowed).
bool IsUtf8(std::string_view in);

}  // namespace attune
