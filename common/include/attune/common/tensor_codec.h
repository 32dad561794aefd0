// The tensor codec: a model's state (or an update) as one flat float buffer
// described by a schema of names, shapes and dtypes, plus the chunking that
// carries it over the wire.
//
// Encoded layout (little-endian), version 1:
//   "ATNM" | u32 version | u32 schema_len | schema JSON | u64 count | count x f32
// The schema is JSON: [{"name": "...", "shape": [..], "dtype": "f32"}, ...].
// Its element counts must add up to `count`. Nothing else is accepted.
// EncodeModel pads the schema text with spaces so that the values start at
// an offset that is a multiple of 8: an encoded blob can be read in place
// (ViewModel) without copying its values.
//
// Chunks: an encoded payload is cut into pieces of at most kMaxChunkBytes;
// each piece carries its SHA-256 and the whole payload's SHA-256 travels in
// the first chunk's metadata. ChunkAssembler checks order, sizes and both
// digests as the pieces arrive.
//
// Thread-compatible; no globals.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/status.h"

namespace attune {

inline constexpr size_t kMaxChunkBytes = 1 << 20;  // 1 MiB of payload per message

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype = "f32";
  int64_t numel() const;
  bool operator==(const TensorSpec&) const = default;
};

struct TensorSchema {
  std::vector<TensorSpec> tensors;
  int64_t numel() const;
  bool operator==(const TensorSchema&) const = default;
};

// A model or update: values laid out tensor after tensor in schema order.
struct FlatModel {
  TensorSchema schema;
  std::vector<float> values;
};

std::string EncodeModel(const FlatModel& model);
// DataLoss for anything malformed (bad magic, version, schema, sizes).
StatusOr<FlatModel> DecodeModel(std::string_view bytes);

// The bytes of an encoding that come before the values (for writers that
// produce the values as a stream).
std::string EncodeModelHeader(const TensorSchema& schema);

// EncodeModel(model) without building it: its size, its SHA-256 (raw) and
// its consecutive pieces of at most `max_bytes` (SplitChunks' cut), all but
// the first a view into model.values. For models too large to copy.
uint64_t EncodedModelSize(const FlatModel& model);
std::string EncodedModelSha256(const FlatModel& model);
Status ForEachEncodedPiece(const FlatModel& model, size_t max_bytes,
                           const std::function<Status(std::string_view piece)>& piece);

// An encoded model of `schema` with every value 0, to be filled in place
// through MutableValues (the coordinator builds candidate models this way,
// without a second copy).
std::string EncodeZeroModel(const TensorSchema& schema);

// The schema and values of an encoded blob, without copying the values.
// DataLoss as DecodeModel; also when the values are not 4-byte aligned in
// memory (blobs from EncodeModel always are).
struct ModelView {
  TensorSchema schema;
  std::span<const float> values;
};
StatusOr<ModelView> ViewModel(std::string_view bytes);
// The values of a blob made by EncodeModel/EncodeZeroModel (checked).
std::span<float> MutableValues(std::string& blob);

// Parses an encoded model as its bytes arrive, never holding more than the
// header and one partial value: the schema first, then the values in order,
// handed to `sink` with the index of the first one.
//   ModelStreamParser p;
//   for each piece: ATTUNE_RETURN_IF_ERROR(p.Feed(piece, sink));
//   ATTUNE_RETURN_IF_ERROR(p.Finish());
class ModelStreamParser {
 public:
  using Sink = std::function<Status(uint64_t first, std::span<const float> values)>;
  explicit ModelStreamParser(uint64_t max_schema_bytes = uint64_t{64} << 20);
  // DataLoss for a malformed header or more values than announced.
  Status Feed(std::string_view bytes, const Sink& sink);
  // DataLoss unless the header and exactly `count` values arrived.
  Status Finish() const;
  // After the header: the schema (nullptr before).
  const TensorSchema* schema() const { return header_done_ ? &schema_ : nullptr; }

 private:
  Status ParseHeader();
  Status EmitValues(std::string_view bytes, const Sink& sink);
  uint64_t max_schema_bytes_;
  std::string head_;          // header bytes until complete, then a partial value
  bool header_done_ = false;
  TensorSchema schema_;
  uint64_t count_ = 0;        // values announced
  uint64_t seen_ = 0;         // values handed to the sink
  std::vector<float> scratch_;
};

// Incremental SHA-256 (OpenSSL EVP).
class Sha256Stream {
 public:
  Sha256Stream();
  ~Sha256Stream();
  Sha256Stream(const Sha256Stream&) = delete;
  Sha256Stream& operator=(const Sha256Stream&) = delete;
  void Update(std::string_view data);
  std::string Final();  // 32 raw bytes; the stream is spent afterwards

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// SHA-256 of `data` (32 raw bytes).
std::string Sha256(std::string_view data);
// Lower-case hex of raw bytes (digests in logs and records).
std::string ToHex(std::string_view raw);

// Views of at most `max_bytes` each; an empty payload gives one empty chunk.
std::vector<std::string_view> SplitChunks(std::string_view payload,
                                          size_t max_bytes = kMaxChunkBytes);

// The most chunks a payload of `total_bytes` may come in: one per
// kMinChunkBytes, plus kChunkSlack (so that a sender cannot make the
// receiver verify a flood of tiny chunks).
inline constexpr uint64_t kMinChunkBytes = 4096;
inline constexpr uint64_t kChunkSlack = 64;
inline constexpr uint64_t MaxChunks(uint64_t total_bytes) {
  return total_bytes / kMinChunkBytes + kChunkSlack;
}

// Verifies a chunked payload as the pieces arrive, keeping none of them:
// order, sizes, each chunk's digest when it carries one, and at the end the
// whole digest; no chunk is empty (but the one of an empty payload), and
// there are at most MaxChunks of them. A chunk's own digest is optional (an
// empty `sha256`): TLS already protects every record on the way, and the
// whole digest, announced before the first byte, decides; Attune's senders
// leave it out, so that each byte is hashed once on each side.
//   ChunkVerifier v(total_bytes, total_sha256, limit);
//   for each chunk: ATTUNE_RETURN_IF_ERROR(v.Add(seq, data, sha256)); use data
//   ATTUNE_RETURN_IF_ERROR(v.Finish());
class ChunkVerifier {
 public:
  ChunkVerifier(uint64_t total_bytes, std::string total_sha256, uint64_t max_total_bytes);
  // InvalidArgument: announced size over the limit, out of order, oversize
  // chunk, or more bytes than announced. DataLoss: the chunk's digest (when
  // given; empty: not checked), or one that is not 32 bytes.
  Status Add(uint64_t seq, std::string_view data, std::string_view sha256);
  // The same for a chunk whose data lies in pieces (ReadChunkPieces).
  Status Add(uint64_t seq, std::span<const std::string_view> data, std::string_view sha256);
  // DataLoss: short, or the whole payload's digest does not match.
  Status Finish();
  uint64_t received() const { return received_; }

 private:
  uint64_t total_bytes_;
  std::string total_sha256_;
  uint64_t next_seq_ = 0;
  uint64_t received_ = 0;
  Sha256Stream whole_;
  Status init_;
};

// A ChunkVerifier that also keeps the payload (for models a site needs whole).
class ChunkAssembler {
 public:
  ChunkAssembler(uint64_t total_bytes, std::string total_sha256,
                 uint64_t max_total_bytes);
  Status Add(uint64_t seq, std::string_view data, std::string_view sha256);
  StatusOr<std::string> Finish();

 private:
  ChunkVerifier verifier_;
  std::string buffer_;
};

}  // namespace attune
