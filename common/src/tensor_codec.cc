#include "attune/common/tensor_codec.h"

#include <openssl/evp.h>

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace attune {
namespace {

constexpr char kMagic[4] = {'A', 'T', 'N', 'M'};
constexpr uint32_t kVersion = 1;

static_assert(sizeof(float) == 4, "f32 payloads");

template <typename T>
void PutLe(std::string* out, T v) {
  static_assert(std::is_trivially_copyable_v<T>);
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));  // x86-64 and aarch64 are little-endian
  out->append(buf, sizeof(T));
}

template <typename T>
bool GetLe(std::string_view* in, T* v) {
  if (in->size() < sizeof(T)) return false;
  std::memcpy(v, in->data(), sizeof(T));
  in->remove_prefix(sizeof(T));
  return true;
}

Status Corrupt(const std::string& why) {
  return absl::DataLossError(absl::StrCat("model payload: ", why));
}

}  // namespace

int64_t TensorSpec::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t TensorSchema::numel() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

std::string EncodeModel(const FlatModel& model) {
  nlohmann::json schema = nlohmann::json::array();
  for (const auto& t : model.schema.tensors) {
    schema.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", t.dtype}});
  }
  const std::string schema_text = schema.dump();
  std::string out;
  out.reserve(24 + schema_text.size() + model.values.size() * sizeof(float));
  out.append(kMagic, 4);
  PutLe<uint32_t>(&out, kVersion);
  PutLe<uint32_t>(&out, static_cast<uint32_t>(schema_text.size()));
  out.append(schema_text);
  PutLe<uint64_t>(&out, model.values.size());
  out.append(reinterpret_cast<const char*>(model.values.data()),
             model.values.size() * sizeof(float));
  return out;
}

StatusOr<FlatModel> DecodeModel(std::string_view in) {
  if (in.size() < 4 || std::memcmp(in.data(), kMagic, 4) != 0) {
    return Corrupt("bad magic (not an Attune model)");
  }
  in.remove_prefix(4);
  uint32_t version = 0, schema_len = 0;
  if (!GetLe(&in, &version)) return Corrupt("truncated header");
  if (version != kVersion) return Corrupt(absl::StrCat("unknown version ", version));
  if (!GetLe(&in, &schema_len) || in.size() < schema_len) {
    return Corrupt("truncated schema");
  }
  nlohmann::json schema = nlohmann::json::parse(in.substr(0, schema_len), nullptr,
                                                /*allow_exceptions=*/false);
  in.remove_prefix(schema_len);
  if (schema.is_discarded() || !schema.is_array()) return Corrupt("schema is not a JSON array");
  FlatModel model;
  for (const auto& e : schema) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() ||
        !e.contains("shape") || !e["shape"].is_array() || !e.contains("dtype") ||
        !e["dtype"].is_string()) {
      return Corrupt("schema entry needs name, shape and dtype");
    }
    TensorSpec spec;
    spec.name = e["name"].get<std::string>();
    spec.dtype = e["dtype"].get<std::string>();
    if (spec.dtype != "f32") return Corrupt(absl::StrCat("unsupported dtype ", spec.dtype));
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0 ||
          d.get<int64_t>() > (int64_t{1} << 40)) {
        return Corrupt(absl::StrCat("bad shape for ", spec.name));
      }
      spec.shape.push_back(d.get<int64_t>());
    }
    model.schema.tensors.push_back(std::move(spec));
  }
  uint64_t count = 0;
  if (!GetLe(&in, &count)) return Corrupt("truncated value count");
  if (static_cast<int64_t>(count) != model.schema.numel()) {
    return Corrupt(absl::StrCat("schema describes ", model.schema.numel(),
                                " values but payload has ", count));
  }
  if (in.size() != count * sizeof(float)) {
    return Corrupt(absl::StrCat("expected ", count * sizeof(float),
                                " bytes of values, got ", in.size()));
  }
  model.values.resize(count);
  if (count) std::memcpy(model.values.data(), in.data(), in.size());
  return model;
}

std::string Sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ATTUNE_CHECK(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::vector<std::string_view> SplitChunks(std::string_view payload, size_t max_bytes) {
  ATTUNE_CHECK(max_bytes > 0);
  std::vector<std::string_view> out;
  if (payload.empty()) {
    out.push_back(payload);
    return out;
  }
  for (size_t off = 0; off < payload.size(); off += max_bytes) {
    out.push_back(payload.substr(off, max_bytes));
  }
  return out;
}

ChunkAssembler::ChunkAssembler(uint64_t total_bytes, std::string total_sha256,
                               uint64_t max_total_bytes)
    : total_bytes_(total_bytes), total_sha256_(std::move(total_sha256)) {
  if (total_bytes > max_total_bytes) {
    init_ = absl::InvalidArgumentError(absl::StrCat(
        "payload of ", total_bytes, " bytes exceeds the limit of ", max_total_bytes));
  } else if (total_sha256_.size() != 32) {
    init_ = absl::InvalidArgumentError("payload digest must be 32 bytes of SHA-256");
  } else {
    buffer_.reserve(total_bytes);
  }
}

Status ChunkAssembler::Add(uint64_t seq, std::string_view data,
                           std::string_view sha256) {
  ATTUNE_RETURN_IF_ERROR(init_);
  if (seq != next_seq_) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk out of order: got ", seq, ", expected ", next_seq_));
  }
  if (data.size() > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", data.size(),
                                                   " bytes exceeds ", kMaxChunkBytes));
  }
  if (buffer_.size() + data.size() > total_bytes_) {
    return absl::InvalidArgumentError("more bytes than the payload announced");
  }
  if (Sha256(data) != sha256) {
    return absl::DataLossError(absl::StrCat("chunk ", seq, " checksum mismatch"));
  }
  buffer_.append(data);
  ++next_seq_;
  return absl::OkStatus();
}

StatusOr<std::string> ChunkAssembler::Finish() {
  ATTUNE_RETURN_IF_ERROR(init_);
  if (buffer_.size() != total_bytes_) {
    return absl::DataLossError(absl::StrCat("payload short: got ", buffer_.size(),
                                            " of ", total_bytes_, " bytes"));
  }
  if (Sha256(buffer_) != total_sha256_) {
    return absl::DataLossError("payload checksum mismatch");
  }
  return std::move(buffer_);
}

}  // namespace attune
