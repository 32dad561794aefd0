// Helpers of the fuzz targets: the input as a file (for readers that take
// a path), and a byte cursor that splits one input into several choices.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

#include <google/protobuf/stubs/logging.h>

namespace attune::fuzz {

// protobuf logs every refused string field: quiet, so that the fuzzer runs fast.
inline const bool kQuietProtobuf = (google::protobuf::SetLogHandler(nullptr), true);

// A file of this process, rewritten with each input.
inline const std::string& WriteInput(const uint8_t* data, size_t size,
                                     const std::string& suffix = "") {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/attune-fuzz-XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  static std::string path;
  path = dir + "/input" + suffix;
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    if (size > 0) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  return path;
}

// Takes leading bytes of an input as choices; the rest is the payload.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size)
      : bytes_(reinterpret_cast<const char*>(data), size) {}
  uint8_t Byte() {
    if (bytes_.empty()) return 0;
    const uint8_t b = static_cast<uint8_t>(bytes_[0]);
    bytes_.remove_prefix(1);
    return b;
  }
  std::string_view Take(size_t n) {
    n = std::min(n, bytes_.size());
    std::string_view out = bytes_.substr(0, n);
    bytes_.remove_prefix(n);
    return out;
  }
  std::string_view rest() const { return bytes_; }

 private:
  std::string_view bytes_;
};

}  // namespace attune::fuzz
