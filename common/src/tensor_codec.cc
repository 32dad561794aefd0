#include "attune/common/tensor_codec.h"

#include <openssl/evp.h>

#include <algorithm>
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

namespace {

constexpr size_t kFixedHeader = 4 + 4 + 4;  // magic, version, schema_len

std::string SchemaText(const TensorSchema& schema) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& t : schema.tensors) {
    j.push_back({{"name", t.name}, {"shape", t.shape}, {"dtype", t.dtype}});
  }
  std::string text = j.dump();
  // Pad with JSON whitespace so the values start 8-byte aligned.
  while ((kFixedHeader + text.size() + 8) % 8 != 0) text.push_back(' ');
  return text;
}

std::string EncodeHeader(const TensorSchema& schema, uint64_t count) {
  const std::string text = SchemaText(schema);
  std::string out;
  out.reserve(kFixedHeader + text.size() + 8 + count * sizeof(float));
  out.append(kMagic, 4);
  PutLe<uint32_t>(&out, kVersion);
  PutLe<uint32_t>(&out, static_cast<uint32_t>(text.size()));
  out.append(text);
  PutLe<uint64_t>(&out, count);
  return out;
}

StatusOr<TensorSchema> ParseSchema(std::string_view text) {
  nlohmann::json schema = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded() || !schema.is_array()) return Corrupt("schema is not a JSON array");
  // Every product and sum is checked before it is formed: a shape whose
  // product would wrap (to 0, say) is refused, not taken for an empty model.
  constexpr int64_t kMaxValues = int64_t{1} << 40;
  TensorSchema out;
  int64_t total = 0;
  for (const auto& e : schema) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() ||
        !e.contains("shape") || !e["shape"].is_array() || !e.contains("dtype") ||
        !e["dtype"].is_string()) {
      return Corrupt("schema entry needs name, shape and dtype");
    }
    TensorSpec spec;
    spec.name = e["name"].get<std::string>();
    spec.dtype = e["dtype"].get<std::string>();
    if (spec.dtype != "f32") {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", spec.name, ": unsupported dtype '", spec.dtype, "' (Attune models are f32)"));
    }
    int64_t n = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0 || d.get<int64_t>() > kMaxValues) {
        return Corrupt(absl::StrCat("bad shape for ", spec.name));
      }
      const int64_t dim = d.get<int64_t>();
      if (dim != 0 && n > kMaxValues / dim) {
        return Corrupt(absl::StrCat("tensor ", spec.name, ": its shape describes more than ",
                                    kMaxValues, " values"));
      }
      n *= dim;
      spec.shape.push_back(dim);
    }
    if (total > kMaxValues - n) return Corrupt("schema describes too many values");
    total += n;
    out.tensors.push_back(std::move(spec));
  }
  return out;
}

// Parses magic, version, schema and count; leaves `in` at the values.
StatusOr<TensorSchema> ParseHeader(std::string_view* in, uint64_t* count) {
  if (in->size() < 4 || std::memcmp(in->data(), kMagic, 4) != 0) {
    return Corrupt("bad magic (not an Attune model)");
  }
  in->remove_prefix(4);
  uint32_t version = 0, schema_len = 0;
  if (!GetLe(in, &version)) return Corrupt("truncated header");
  if (version != kVersion) return Corrupt(absl::StrCat("unknown version ", version));
  if (!GetLe(in, &schema_len) || in->size() < schema_len) return Corrupt("truncated schema");
  ATTUNE_ASSIGN_OR_RETURN(TensorSchema schema, ParseSchema(in->substr(0, schema_len)));
  in->remove_prefix(schema_len);
  if (!GetLe(in, count)) return Corrupt("truncated value count");
  if (static_cast<int64_t>(*count) != schema.numel()) {
    return Corrupt(absl::StrCat("schema describes ", schema.numel(), " values but payload has ",
                                *count));
  }
  return schema;
}

}  // namespace

std::string EncodeModel(const FlatModel& model) {
  std::string out = EncodeHeader(model.schema, model.values.size());
  out.append(reinterpret_cast<const char*>(model.values.data()),
             model.values.size() * sizeof(float));
  return out;
}

std::string EncodeModelHeader(const TensorSchema& schema) {
  return EncodeHeader(schema, static_cast<uint64_t>(schema.numel()));
}

uint64_t EncodedModelSize(const FlatModel& model) {
  return EncodeHeader(model.schema, model.values.size()).size() +
         model.values.size() * sizeof(float);
}

Status ForEachEncodedPiece(const FlatModel& model, size_t max_bytes,
                           const std::function<Status(std::string_view piece)>& piece) {
  ATTUNE_CHECK(max_bytes > 0);
  // The encoding is the header then the values' bytes: a piece within one
  // is a view of it, the one piece across both a copy.
  const std::string head = EncodeHeader(model.schema, model.values.size());
  const std::string_view values(reinterpret_cast<const char*>(model.values.data()),
                                model.values.size() * sizeof(float));
  const uint64_t total = head.size() + values.size();
  std::string across;
  for (uint64_t at = 0; at < total; at += max_bytes) {
    const uint64_t end = std::min<uint64_t>(total, at + max_bytes);
    if (end <= head.size()) {
      ATTUNE_RETURN_IF_ERROR(piece(std::string_view(head).substr(at, end - at)));
    } else if (at >= head.size()) {
      ATTUNE_RETURN_IF_ERROR(piece(values.substr(at - head.size(), end - at)));
    } else {
      across.assign(head, at);
      across.append(values.substr(0, end - head.size()));
      ATTUNE_RETURN_IF_ERROR(piece(across));
    }
  }
  return absl::OkStatus();
}

std::string EncodedModelSha256(const FlatModel& model) {
  Sha256Stream sha;
  Status s = ForEachEncodedPiece(model, kMaxChunkBytes, [&](std::string_view p) {
    sha.Update(p);
    return absl::OkStatus();
  });
  ATTUNE_CHECK(s.ok());
  return sha.Final();
}

std::string EncodeZeroModel(const TensorSchema& schema) {
  const uint64_t count = static_cast<uint64_t>(schema.numel());
  std::string out = EncodeHeader(schema, count);
  out.resize(out.size() + count * sizeof(float), '\0');
  return out;
}

StatusOr<ModelView> ViewModel(std::string_view in) {
  uint64_t count = 0;
  ModelView view;
  ATTUNE_ASSIGN_OR_RETURN(view.schema, ParseHeader(&in, &count));
  if (in.size() != count * sizeof(float)) {
    return Corrupt(absl::StrCat("expected ", count * sizeof(float), " bytes of values, got ",
                                in.size()));
  }
  if (reinterpret_cast<uintptr_t>(in.data()) % alignof(float) != 0) {
    return Corrupt("values are not aligned (not made by EncodeModel)");
  }
  view.values = std::span<const float>(reinterpret_cast<const float*>(in.data()), count);
  return view;
}

std::span<float> MutableValues(std::string& blob) {
  std::string_view in(blob);
  uint64_t count = 0;
  auto schema = ParseHeader(&in, &count);
  ATTUNE_CHECK(schema.ok() && in.size() == count * sizeof(float));
  const size_t offset = blob.size() - in.size();
  ATTUNE_CHECK(reinterpret_cast<uintptr_t>(blob.data() + offset) % alignof(float) == 0);
  return std::span<float>(reinterpret_cast<float*>(blob.data() + offset), count);
}

StatusOr<FlatModel> DecodeModel(std::string_view in) {
  uint64_t count = 0;
  FlatModel model;
  ATTUNE_ASSIGN_OR_RETURN(model.schema, ParseHeader(&in, &count));
  if (in.size() != count * sizeof(float)) {
    return Corrupt(absl::StrCat("expected ", count * sizeof(float),
                                " bytes of values, got ", in.size()));
  }
  model.values.resize(count);
  if (count) std::memcpy(model.values.data(), in.data(), in.size());
  return model;
}

// ------------------------------------------------------------ streaming parse

ModelStreamParser::ModelStreamParser(uint64_t max_schema_bytes)
    : max_schema_bytes_(max_schema_bytes) {}

Status ModelStreamParser::ParseHeader() {
  // Waits for the fixed part, then for schema_len + 8 more bytes.
  if (head_.size() < kFixedHeader) return absl::OkStatus();
  if (std::memcmp(head_.data(), kMagic, 4) != 0) return Corrupt("bad magic (not an Attune model)");
  uint32_t schema_len = 0;
  std::memcpy(&schema_len, head_.data() + 8, sizeof(schema_len));
  if (schema_len > max_schema_bytes_) {
    return Corrupt(absl::StrCat("schema of ", schema_len, " bytes exceeds the limit of ",
                                max_schema_bytes_));
  }
  if (head_.size() < kFixedHeader + schema_len + 8) return absl::OkStatus();
  std::string_view in(head_);
  ATTUNE_ASSIGN_OR_RETURN(schema_, attune::ParseHeader(&in, &count_));
  header_done_ = true;
  head_ = std::string(in);  // bytes after the header: the start of the values
  return absl::OkStatus();
}

Status ModelStreamParser::Feed(std::string_view bytes, const Sink& sink) {
  if (!header_done_) {
    // Take only what the header can still need; the rest are values.
    const size_t want = head_.size() < kFixedHeader
                            ? kFixedHeader - head_.size()
                            : bytes.size();
    const size_t take = std::min(want, bytes.size());
    head_.append(bytes.substr(0, take));
    bytes.remove_prefix(take);
    ATTUNE_RETURN_IF_ERROR(ParseHeader());
    if (!header_done_) {
      if (!bytes.empty()) return Feed(bytes, sink);
      return absl::OkStatus();
    }
  }
  // head_ holds the start of a value that straddles pieces (or, right after
  // the header, the first value bytes): complete it first.
  if (!head_.empty()) {
    const size_t need = std::min(bytes.size(), (sizeof(float) - head_.size() % sizeof(float)) %
                                                   sizeof(float));
    head_.append(bytes.substr(0, need));
    bytes.remove_prefix(need);
    std::string pending = std::move(head_);
    head_.clear();
    if (pending.size() % sizeof(float) != 0) {  // still partial: wait for more
      head_ = std::move(pending);
      return absl::OkStatus();
    }
    ATTUNE_RETURN_IF_ERROR(EmitValues(pending, sink));
  }
  const size_t whole = bytes.size() / sizeof(float) * sizeof(float);
  ATTUNE_RETURN_IF_ERROR(EmitValues(bytes.substr(0, whole), sink));
  head_.assign(bytes.substr(whole));
  if (seen_ == count_ && !head_.empty()) return Corrupt("bytes after the last value");
  return absl::OkStatus();
}

// Hands whole values to the sink in pieces of at most kScratchValues, so a
// parser holds little memory whatever the size of what it is fed.
Status ModelStreamParser::EmitValues(std::string_view bytes, const Sink& sink) {
  constexpr size_t kScratchValues = 16384;
  const uint64_t n = bytes.size() / sizeof(float);
  if (seen_ + n > count_) {
    return Corrupt(absl::StrCat("more values than the ", count_, " announced"));
  }
  for (uint64_t done = 0; done < n;) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(kScratchValues, n - done));
    scratch_.resize(k);
    std::memcpy(scratch_.data(), bytes.data() + done * sizeof(float), k * sizeof(float));
    ATTUNE_RETURN_IF_ERROR(sink(seen_, std::span<const float>(scratch_.data(), k)));
    seen_ += k;
    done += k;
  }
  return absl::OkStatus();
}

Status ModelStreamParser::Finish() const {
  if (!header_done_) return Corrupt("truncated header");
  if (seen_ != count_ || !head_.empty()) {
    return Corrupt(absl::StrCat("got ", seen_, " of ", count_, " values"));
  }
  return absl::OkStatus();
}

std::string Sha256(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ATTUNE_CHECK(EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) == 1);
  return std::string(reinterpret_cast<char*>(md), len);
}

std::string ToHex(std::string_view raw) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
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

struct Sha256Stream::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256Stream::Sha256Stream() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  ATTUNE_CHECK(ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1);
}

Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(ctx_->md); }

void Sha256Stream::Update(std::string_view data) {
  ATTUNE_CHECK(EVP_DigestUpdate(ctx_->md, data.data(), data.size()) == 1);
}

std::string Sha256Stream::Final() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  ATTUNE_CHECK(EVP_DigestFinal_ex(ctx_->md, md, &len) == 1);
  return std::string(reinterpret_cast<char*>(md), len);
}

ChunkVerifier::ChunkVerifier(uint64_t total_bytes, std::string total_sha256,
                             uint64_t max_total_bytes)
    : total_bytes_(total_bytes), total_sha256_(std::move(total_sha256)) {
  if (total_bytes > max_total_bytes) {
    init_ = absl::InvalidArgumentError(absl::StrCat(
        "payload of ", total_bytes, " bytes exceeds the limit of ", max_total_bytes));
  } else if (total_sha256_.size() != 32) {
    init_ = absl::InvalidArgumentError("payload digest must be 32 bytes of SHA-256");
  }
}

Status ChunkVerifier::Add(uint64_t seq, std::string_view data, std::string_view sha256) {
  return Add(seq, std::span<const std::string_view>(&data, 1), sha256);
}

Status ChunkVerifier::Add(uint64_t seq, std::span<const std::string_view> data,
                          std::string_view sha256) {
  ATTUNE_RETURN_IF_ERROR(init_);
  uint64_t size = 0;
  for (std::string_view piece : data) size += piece.size();
  if (seq != next_seq_) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk out of order: got ", seq, ", expected ", next_seq_));
  }
  if (size > kMaxChunkBytes) {
    return absl::InvalidArgumentError(absl::StrCat("chunk of ", size,
                                                   " bytes exceeds ", kMaxChunkBytes));
  }
  if (received_ + size > total_bytes_) {
    return absl::InvalidArgumentError("more bytes than the payload announced");
  }
  if (size == 0 && !(total_bytes_ == 0 && seq == 0)) {
    return absl::InvalidArgumentError(absl::StrCat("chunk ", seq, " is empty"));
  }
  if (seq >= MaxChunks(total_bytes_)) {
    return absl::InvalidArgumentError(
        absl::StrCat("a payload of ", total_bytes_, " bytes comes in at most ",
                     MaxChunks(total_bytes_), " chunks (one per ", kMinChunkBytes,
                     " bytes, plus ", kChunkSlack, ")"));
  }
  if (!sha256.empty()) {
    Sha256Stream chunk;
    for (std::string_view piece : data) chunk.Update(piece);
    if (chunk.Final() != sha256) {
      return absl::DataLossError(absl::StrCat("chunk ", seq, " checksum mismatch"));
    }
  }
  for (std::string_view piece : data) whole_.Update(piece);
  received_ += size;
  ++next_seq_;
  return absl::OkStatus();
}

Status ChunkVerifier::Finish() {
  ATTUNE_RETURN_IF_ERROR(init_);
  if (received_ != total_bytes_) {
    return absl::DataLossError(absl::StrCat("payload short: got ", received_,
                                            " of ", total_bytes_, " bytes"));
  }
  if (whole_.Final() != total_sha256_) {
    return absl::DataLossError("payload checksum mismatch");
  }
  return absl::OkStatus();
}

ChunkAssembler::ChunkAssembler(uint64_t total_bytes, std::string total_sha256,
                               uint64_t max_total_bytes)
    : verifier_(total_bytes, std::move(total_sha256), max_total_bytes) {
  if (total_bytes <= max_total_bytes) buffer_.reserve(total_bytes);
}

Status ChunkAssembler::Add(uint64_t seq, std::string_view data, std::string_view sha256) {
  ATTUNE_RETURN_IF_ERROR(verifier_.Add(seq, data, sha256));
  buffer_.append(data);
  return absl::OkStatus();
}

StatusOr<std::string> ChunkAssembler::Finish() {
  ATTUNE_RETURN_IF_ERROR(verifier_.Finish());
  return std::move(buffer_);
}

}  // namespace attune
