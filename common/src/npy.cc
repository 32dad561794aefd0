// .npy reader/writer for little-endian float32 C-order arrays. See npy.h.
//
// Format reference: numpy/lib/format.py. A file is the magic "\x93NUMPY",
// a major and minor version byte, a little-endian header length (uint16 in
// 1.0, uint32 in 2.0), an ASCII Python dict literal padded with spaces and
// terminated by '\n', then the raw array bytes.

#include "attune/common/npy.h"

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace attune {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlignment = 64;

uint32_t FloatToLittleEndianBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

void AppendLittleEndian32(uint32_t v, std::string* out) {
  for (int i = 0; i < 4; ++i)
    out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t ReadLittleEndian32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

// Product of `shape`, or nullopt when a dimension is negative or the byte
// count (product * 4) would overflow.
std::optional<uint64_t> ElementCount(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max() / 4;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    uint64_t ud = static_cast<uint64_t>(d);
    if (ud != 0 && n > kMax / ud) return std::nullopt;
    n *= ud;
  }
  return n;
}

// Python tuple literal for `shape`, as numpy writes it: "()", "(3,)",
// "(2, 3)".
std::string ShapeLiteral(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  s += ")";
  return s;
}

// ---------------------------------------------------------------------------
// Header dict parser. Accepts the subset of Python literal syntax numpy
// writes (and older numpy / other writers produce): a dict with string keys
// whose values are strings, True/False, integers (optionally with a Python 2
// 'L' suffix) or tuples/lists of those; arbitrary whitespace and trailing
// commas.

struct HeaderValue {
  enum class Kind { kString, kBool, kInt, kTuple, kOther } kind = Kind::kOther;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<HeaderValue> items;
};

class HeaderParser {
 public:
  explicit HeaderParser(std::string_view text) : text_(text) {}

  // Parses the whole header into (key, value) pairs; returns false and sets
  // error() on malformed input.
  bool ParseDict(std::vector<std::pair<std::string, HeaderValue>>* entries) {
    SkipSpace();
    if (!Consume('{')) return Fail("expected '{'");
    while (true) {
      SkipSpace();
      if (Consume('}')) break;
      HeaderValue key;
      if (!ParseValue(&key, 0)) return false;
      if (key.kind != HeaderValue::Kind::kString) return Fail("non-string key");
      SkipSpace();
      if (!Consume(':')) return Fail("expected ':'");
      HeaderValue value;
      if (!ParseValue(&value, 0)) return false;
      entries->emplace_back(key.str, std::move(value));
      SkipSpace();
      if (Consume(',')) continue;
      SkipSpace();
      if (Consume('}')) break;
      return Fail("expected ',' or '}'");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Fail("trailing characters after dict");
    return true;
  }

  const std::string& error() const { return error_; }

 private:
  static constexpr int kMaxDepth = 8;

  bool ParseValue(HeaderValue* out, int depth) {
    if (depth > kMaxDepth) return Fail("nesting too deep");
    SkipSpace();
    if (pos_ >= text_.size()) return Fail("unexpected end of header");
    char c = text_[pos_];
    if (c == '\'' || c == '"') return ParseString(out);
    if (c == '(' || c == '[') return ParseTuple(out, depth);
    if (c == '-' || c == '+' || std::isdigit(static_cast<unsigned char>(c))) {
      return ParseInt(out);
    }
    if (std::isalpha(static_cast<unsigned char>(c))) {
      size_t start = pos_;
      while (pos_ < text_.size() &&
             (std::isalnum(static_cast<unsigned char>(text_[pos_])) ||
              text_[pos_] == '_')) {
        ++pos_;
      }
      std::string_view word = text_.substr(start, pos_ - start);
      if (word == "True" || word == "False") {
        out->kind = HeaderValue::Kind::kBool;
        out->boolean = word == "True";
        return true;
      }
      return Fail(
          absl::StrCat("unexpected identifier '", std::string(word), "'"));
    }
    return Fail(absl::StrCat("unexpected character '", std::string(1, c), "'"));
  }

  bool ParseString(HeaderValue* out) {
    char quote = text_[pos_++];
    std::string s;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      char c = text_[pos_++];
      if (c == '\\') {
        if (pos_ >= text_.size()) break;
        c = text_[pos_++];
      }
      s.push_back(c);
    }
    if (pos_ >= text_.size()) return Fail("unterminated string");
    ++pos_;  // closing quote
    out->kind = HeaderValue::Kind::kString;
    out->str = std::move(s);
    return true;
  }

  bool ParseInt(HeaderValue* out) {
    bool negative = false;
    if (text_[pos_] == '-' || text_[pos_] == '+') {
      negative = text_[pos_] == '-';
      ++pos_;
    }
    if (pos_ >= text_.size() ||
        !std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      return Fail("malformed integer");
    }
    uint64_t v = 0;
    constexpr uint64_t kLimit =
        static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    while (pos_ < text_.size() &&
           std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      v = v * 10 + static_cast<uint64_t>(text_[pos_] - '0');
      if (v > kLimit) return Fail("integer out of range");
      ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'L' || text_[pos_] == 'l')) {
      ++pos_;  // Python 2 long suffix.
    }
    out->kind = HeaderValue::Kind::kInt;
    out->integer =
        negative ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
    return true;
  }

  bool ParseTuple(HeaderValue* out, int depth) {
    char close = text_[pos_] == '(' ? ')' : ']';
    ++pos_;
    out->kind = HeaderValue::Kind::kTuple;
    while (true) {
      SkipSpace();
      if (Consume(close)) return true;
      HeaderValue item;
      if (!ParseValue(&item, depth + 1)) return false;
      out->items.push_back(std::move(item));
      SkipSpace();
      if (Consume(',')) continue;
      if (Consume(close)) return true;
      return Fail("expected ',' or end of tuple");
    }
  }

  void SkipSpace() {
    while (pos_ < text_.size() &&
           std::isspace(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
  }

  bool Consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  bool Fail(std::string message) {
    error_ = absl::StrCat(message, " at offset ", pos_);
    return false;
  }

  std::string_view text_;
  size_t pos_ = 0;
  std::string error_;
};

Status DataLoss(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat("npy file ", path, ": ", what));
}

}  // namespace

Status WriteNpy(const std::string& path, const NpyArray& array) {
  std::optional<uint64_t> count = ElementCount(array.shape);
  if (!count.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteNpy ", path, ": invalid shape ", ShapeLiteral(array.shape)));
  }
  if (*count != array.data.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "WriteNpy ", path, ": shape ", ShapeLiteral(array.shape), " needs ",
        *count, " values but data has ", array.data.size()));
  }

  std::string dict =
      absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': ",
                   ShapeLiteral(array.shape), ", }");
  // magic(6) + version(2) + header_len(2) + dict + padding + '\n'.
  size_t unpadded = kMagicLen + 2 + 2 + dict.size() + 1;
  size_t padded = (unpadded + kAlignment - 1) / kAlignment * kAlignment;
  size_t header_len = padded - (kMagicLen + 2 + 2);
  if (header_len > std::numeric_limits<uint16_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteNpy ", path, ": header too long for format 1.0"));
  }
  dict.append(padded - unpadded, ' ');
  dict.push_back('\n');

  std::string bytes;
  bytes.reserve(padded + array.data.size() * 4);
  bytes.append(kMagic, kMagicLen);
  bytes.push_back('\x01');
  bytes.push_back('\x00');
  bytes.push_back(static_cast<char>(header_len & 0xff));
  bytes.push_back(static_cast<char>((header_len >> 8) & 0xff));
  bytes += dict;
  for (float f : array.data)
    AppendLittleEndian32(FloatToLittleEndianBits(f), &bytes);

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    return absl::InternalError(
        absl::StrCat("WriteNpy: cannot open ", path,
                     " for writing: ", std::strerror(errno)));
  }
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    return absl::InternalError(
        absl::StrCat("WriteNpy: write to ", path, " failed"));
  }
  return absl::OkStatus();
}

StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::error_code ec;
  std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) {
    return absl::NotFoundError(absl::StrCat("npy file ", path, " not found"));
  }
  if (std::filesystem::is_directory(st)) {
    return absl::InvalidArgumentError(
        absl::StrCat("npy file ", path, " is a directory"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InternalError(absl::StrCat(
        "npy file ", path, ": cannot open: ", std::strerror(errno)));
  }
  std::string bytes((std::istreambuf_iterator<char>(in)),
                    std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::InternalError(
        absl::StrCat("npy file ", path, ": read failed"));
  }
  return ParseNpy(bytes, path);
}

StatusOr<NpyArray> ParseNpy(std::string_view bytes, const std::string& path,
                             bool convert_numeric) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());

  if (bytes.size() < kMagicLen + 2 ||
      std::memcmp(bytes.data(), kMagic, kMagicLen) != 0) {
    return DataLoss(path, "bad magic (not a .npy file)");
  }
  int major = p[kMagicLen];
  int minor = p[kMagicLen + 1];
  size_t len_bytes;
  if (major == 1) {
    len_bytes = 2;
  } else if (major == 2) {
    len_bytes = 4;
  } else {
    return DataLoss(
        path, absl::StrCat("unsupported format version ", major, ".", minor));
  }
  size_t len_pos = kMagicLen + 2;
  if (bytes.size() < len_pos + len_bytes) {
    return DataLoss(path, "truncated header");
  }
  uint64_t header_len = len_bytes == 2
                            ? (static_cast<uint64_t>(p[len_pos]) |
                               (static_cast<uint64_t>(p[len_pos + 1]) << 8))
                            : ReadLittleEndian32(p + len_pos);
  size_t header_start = len_pos + len_bytes;
  if (bytes.size() - header_start < header_len) {
    return DataLoss(path, "truncated header");
  }
  std::string_view header(bytes.data() + header_start, header_len);
  for (char c : header) {
    if (static_cast<unsigned char>(c) >= 0x80 || c == '\0') {
      return DataLoss(path, "malformed header: non-ASCII byte");
    }
  }

  std::vector<std::pair<std::string, HeaderValue>> entries;
  HeaderParser parser(header);
  if (!parser.ParseDict(&entries)) {
    return DataLoss(path, absl::StrCat("malformed header: ", parser.error()));
  }
  const HeaderValue* descr = nullptr;
  const HeaderValue* fortran = nullptr;
  const HeaderValue* shape = nullptr;
  for (const auto& [key, value] : entries) {
    const HeaderValue** slot = nullptr;
    if (key == "descr") {
      slot = &descr;
    } else if (key == "fortran_order") {
      slot = &fortran;
    } else if (key == "shape") {
      slot = &shape;
    } else {
      return DataLoss(
          path, absl::StrCat("malformed header: unexpected key '", key, "'"));
    }
    if (*slot != nullptr) {
      return DataLoss(
          path, absl::StrCat("malformed header: duplicate key '", key, "'"));
    }
    *slot = &value;
  }
  if (descr == nullptr || fortran == nullptr || shape == nullptr) {
    return DataLoss(path,
                    "malformed header: needs 'descr', 'fortran_order' and "
                    "'shape'");
  }
  if (descr->kind != HeaderValue::Kind::kString) {
    return DataLoss(path, "unsupported dtype (structured); expected '<f4'");
  }
  // Element size and converter of the accepted dtypes.
  size_t width = 0;
  float (*convert)(const unsigned char*) = nullptr;
  if (descr->str == "<f4") {
    width = 4;
    convert = [](const unsigned char* b) {
      uint32_t bits = ReadLittleEndian32(b);
      float f;
      std::memcpy(&f, &bits, sizeof(f));
      return f;
    };
  } else if (convert_numeric && (descr->str == "|u1" || descr->str == "|b1")) {
    width = 1;
    convert = [](const unsigned char* b) { return static_cast<float>(b[0]); };
  } else if (convert_numeric && descr->str == "<f8") {
    width = 8;
    convert = [](const unsigned char* b) {
      uint64_t bits = ReadLittleEndian32(b) | (uint64_t{ReadLittleEndian32(b + 4)} << 32);
      double d;
      std::memcpy(&d, &bits, sizeof(d));
      return static_cast<float>(d);
    };
  } else if (convert_numeric && descr->str == "<i8") {
    width = 8;
    convert = [](const unsigned char* b) {
      uint64_t bits = ReadLittleEndian32(b) | (uint64_t{ReadLittleEndian32(b + 4)} << 32);
      return static_cast<float>(static_cast<int64_t>(bits));
    };
  } else {
    return DataLoss(path, absl::StrCat("unsupported dtype '", descr->str, "'; expected ",
                                       convert_numeric ? "'<f4', '<f8', '<i8', '|u1' or '|b1'"
                                                       : "'<f4'"));
  }
  if (fortran->kind != HeaderValue::Kind::kBool) {
    return DataLoss(path, "malformed header: 'fortran_order' is not a bool");
  }
  if (fortran->boolean) {
    return DataLoss(path, "fortran_order arrays are not supported");
  }
  if (shape->kind != HeaderValue::Kind::kTuple) {
    return DataLoss(path, "malformed header: 'shape' is not a tuple");
  }
  NpyArray array;
  for (const HeaderValue& d : shape->items) {
    if (d.kind != HeaderValue::Kind::kInt || d.integer < 0) {
      return DataLoss(path, "malformed header: bad dimension in 'shape'");
    }
    array.shape.push_back(d.integer);
  }
  std::optional<uint64_t> count = ElementCount(array.shape);
  if (!count.has_value()) {
    return DataLoss(path, "malformed header: shape too large");
  }

  size_t data_start = header_start + header_len;
  uint64_t available = bytes.size() - data_start;
  if (*count > available / width) {
    return DataLoss(path,
                    absl::StrCat("truncated data: header says ", *count * width,
                                 " bytes, file has ", available));
  }
  array.data.resize(*count);
  const unsigned char* d = p + data_start;
  for (uint64_t i = 0; i < *count; ++i) array.data[i] = convert(d + width * i);
  return array;
}

}  // namespace attune
