// The tensor codec: a model's state (or an update) as one flat float buffer
// described by a schema of names, shapes and dtypes, plus the chunking that
// carries it over the wire.
//
// Encoded layout (little-endian), version 1:
//   "ATNM" | u32 version | u32 schema_len | schema JSON | u64 count | count x f32
// The schema is JSON: [{"name": "...", "shape": [..], "dtype": "f32"}, ...].
// Its element counts must add up to `count`. Nothing else is accepted.
//
// Chunks: an encoded payload is cut into pieces of at most kMaxChunkBytes;
// each piece carries its SHA-256 and the whole payload's SHA-256 travels in
// the first chunk's metadata. ChunkAssembler checks order, sizes and both
// digests as the pieces arrive.
//
// Thread-compatible; no globals.
#pragma once

#include <cstdint>
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

// SHA-256 of `data` (32 raw bytes).
std::string Sha256(std::string_view data);

// Views of at most `max_bytes` each; an empty payload gives one empty chunk.
std::vector<std::string_view> SplitChunks(std::string_view payload,
                                          size_t max_bytes = kMaxChunkBytes);

// Reassembles a chunked payload, verifying as it goes.
//   ChunkAssembler a(total_bytes, total_sha256);
//   for each chunk: ATTUNE_RETURN_IF_ERROR(a.Add(seq, data, sha256));
//   ATTUNE_ASSIGN_OR_RETURN(std::string payload, a.Finish());
class ChunkAssembler {
 public:
  ChunkAssembler(uint64_t total_bytes, std::string total_sha256,
                 uint64_t max_total_bytes);
  // InvalidArgument: out of order, oversize, or more bytes than announced.
  // DataLoss: the chunk's digest does not match.
  Status Add(uint64_t seq, std::string_view data, std::string_view sha256);
  // DataLoss: short, or the whole payload's digest does not match.
  StatusOr<std::string> Finish();

 private:
  uint64_t total_bytes_;
  std::string total_sha256_;
  uint64_t next_seq_ = 0;
  std::string buffer_;
  Status init_;
};

}  // namespace attune
