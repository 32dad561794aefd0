// Translation between domain types and protocol messages, in one place.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/eval_stats.h"
#include "attune/common/status.h"
#include "attune/common/task.h"
#include "attune/common/tensor_codec.h"
#include "attune/v1/federation.pb.h"

namespace attune {

void ToProto(const EvalSums& s, v1::AuditReport* out);
// Validates as it converts; InvalidArgument for inconsistent reports.
StatusOr<EvalSums> FromProto(const v1::AuditReport& r);

// The layout of a secure EVALUATE task: its eval_layout (the splits travel
// as the task's own splits).
v1::EvalLayout ToProto(const EvalLayout& l);
EvalLayout LayoutFromProto(const v1::RoundTask& task);

// A task as it goes on the task stream. `train` is the local training the
// strategy asks of this site (every task carries it), `terms` the study's
// signed terms, forwarded as its owner signed them.
v1::RoundTask ToProto(const Task& task, std::string_view study_id, const TrainSettings& train,
                      const std::string& terms);

// The header of an update, as its first chunk's metadata says.
UpdateHeader HeaderFromProto(const v1::UpdateMeta& meta);

// Cuts `payload` into chunks of at most kMaxChunkBytes; the first carries
// `meta` completed with the payload's size and SHA-256 (`payload_sha256`,
// 32 raw bytes, when the caller knows it: a model served many times is
// hashed once; empty: computed here). The chunks carry no digests of their
// own (ChunkVerifier: TLS protects each, the whole digest decides). Calls
// `write` for each in order and stops when it returns false (the peer went
// away); returns whether every chunk was written.
bool WriteChunks(std::string_view payload, v1::UpdateMeta meta,
                 const std::function<bool(const v1::Chunk&)>& write,
                 std::string_view payload_sha256 = {});
// One chunk's encoding in parts, its data left where it lies: head + data
// + tail is byte for byte what Chunk::SerializeToString() gives for it.
struct ChunkFrame {
  std::string head;       // meta (first chunk), seq, and data's tag and length
  std::string_view data;  // a slice of the payload
  std::string_view tail;  // last = true, or nothing
  bool transient = false;  // `data` lives only during the call to write: copy it
};
// WriteChunks for a writer that sends the parts as they are: a server that
// streams one payload to many peers copies it into no message.
bool WriteChunkFrames(std::string_view payload, v1::UpdateMeta meta,
                      std::string_view payload_sha256,
                      const std::function<bool(const ChunkFrame&)>& write);
// WriteChunkFrames for EncodeModel(model), without building it: each
// frame's data is a view into model.values but the first's (transient: the
// header and the first values, ForEachEncodedPiece).
bool WriteModelFrames(const FlatModel& model, v1::UpdateMeta meta,
                      const std::function<bool(const ChunkFrame&)>& write);
// The same for EncodeModel(model), without building it (ForEachEncodedPiece).
bool WriteModelChunks(const FlatModel& model, v1::UpdateMeta meta,
                      const std::function<bool(const v1::Chunk&)>& write);

// ---- Bounds checked on a message's bytes, before it is parsed ----------
//
// Parsing builds an object per string, element and nested message, so a
// small message of many tiny items (or of unknown fields, which protobuf
// keeps) can take many times its size in memory. CheckWireBounds walks the
// bytes against the message's descriptor without building anything:
// every field must be one the message defines (none unknown), nesting at
// most `max_depth` deep, and each repeated field, counted per message it
// is in, at most its bound -- `repeated` by full field name (e.g.
// "attune.v1.GroupStats.pos_hist"), else `default_repeated`.
struct WireBounds {
  std::map<std::string, int64_t> repeated;
  int64_t default_repeated = 256;
  int max_depth = 8;
};
Status CheckWireBounds(std::string_view bytes, const google::protobuf::Descriptor& type,
                       const WireBounds& bounds);

// ---- A chunk read where its bytes lie ----------------------------------
//
// A Chunk as it arrived: a gRPC message is a list of slices, and joining
// them and parsing would copy a megabyte of data twice. `rest` is the
// message without its data field, parsed by protobuf (meta, seq, sha256,
// last); `data` that field's bytes (its last occurrence, as protobuf reads
// it), as views into `message`'s pieces. The same bounds and refusals as
// CheckWireBounds, then Chunk::ParseFromString, on the joined bytes
// (differential fuzz target: fuzz/targets/chunk_pieces.cc).
struct ChunkPieces {
  v1::Chunk rest;
  std::vector<std::string_view> data;
  uint64_t data_size() const;
};
Status ReadChunkPieces(std::span<const std::string_view> message, const WireBounds& bounds,
                       ChunkPieces* out);

}  // namespace attune
