// One site update on its way in: everything from the network is untrusted,
// so each chunk is checked as it arrives (order, size, digest), the payload
// is parsed as a stream (schema first, then values), values are checked
// (NaN/Inf, the running L2 norm against the study's bound) and spooled to
// disk. Nothing reaches the round until Finish() has verified the whole
// payload's digest and size; a refused intake leaves nothing behind.
//
//   auto intake = UpdateIntake::ForDelta(header, global_schema, bound, path, max);
//   for each chunk: ATTUNE_RETURN_IF_ERROR(intake->AddChunk(seq, data, sha256));
//   ATTUNE_RETURN_IF_ERROR(intake->Finish());
//
// Thread-compatible: one intake per incoming stream.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "attune/common/status.h"
#include "attune/common/task.h"
#include "attune/common/tensor_codec.h"
#include "attune/coordinator/update_spool.h"

namespace attune::coordinator {


class UpdateIntake {
 public:
  // A TRAIN delta: must match `expected` exactly (names, shapes, dtypes),
  // be finite, and have an L2 norm <= `max_norm`.
  static StatusOr<std::unique_ptr<UpdateIntake>> ForDelta(UpdateHeader header,
                                                          const TensorSchema& expected,
                                                          double max_norm,
                                                          std::string spool_path,
                                                          uint64_t max_bytes);
  // An INIT model: finite full weights, kept in memory.
  static StatusOr<std::unique_ptr<UpdateIntake>> ForInitialModel(UpdateHeader header,
                                                                 uint64_t max_bytes);

  // A secure aggregation's masked input: exactly `words` little-endian
  // 32-bit words, kept in memory (uniformly random to us: nothing to check
  // but size and digests).
  static StatusOr<std::unique_ptr<UpdateIntake>> ForMasked(UpdateHeader header, int64_t words);

  // InvalidArgument (order, size, shape/dtype, NaN/Inf, norm) or DataLoss
  // (digest); the intake is dead after an error.
  Status AddChunk(uint64_t seq, std::string_view data, std::string_view sha256);
  // The same for a chunk whose data lies in pieces (ReadChunkPieces).
  Status AddChunk(uint64_t seq, std::span<const std::string_view> data, std::string_view sha256);
  // Whole-payload digest and size; commits the spool file.
  Status Finish();

  const UpdateHeader& header() const { return header_; }
  const std::string& spool_path() const { return spool_path_; }
  double norm() const { return spool_ ? spool_->norm() : 0; }
  // INIT only, after Finish(): the canonical encoding of the initial model.
  std::shared_ptr<const std::string> initial_model() const { return initial_; }
  // Masked only, after Finish(): the words.
  const std::vector<uint32_t>& masked_words() const { return words_; }

 private:
  UpdateIntake(UpdateHeader header, uint64_t max_bytes);
  Status OnValues(uint64_t first, std::span<const float> values);

  UpdateHeader header_;
  ChunkVerifier verifier_;
  ModelStreamParser parser_;
  std::optional<TensorSchema> expected_;    // TRAIN: the global model's
  bool schema_checked_ = false;
  double max_norm_ = 0;
  std::string spool_path_;
  std::optional<SpoolWriter> spool_;        // TRAIN
  std::string payload_;                     // INIT
  bool init_ = false;
  bool masked_ = false;
  std::vector<uint32_t> words_;
  uint64_t masked_bytes_ = 0;
  std::shared_ptr<const std::string> initial_;
  Status dead_;
};

}  // namespace attune::coordinator
