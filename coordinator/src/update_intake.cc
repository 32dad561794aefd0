#include "attune/coordinator/update_intake.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace attune::coordinator {
namespace {

std::string Describe(const TensorSchema& s) {
  std::string out;
  for (const auto& t : s.tensors) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", t.name, "[");
    for (size_t i = 0; i < t.shape.size(); ++i) absl::StrAppend(&out, i ? "x" : "", t.shape[i]);
    absl::StrAppend(&out, "] ", t.dtype);
  }
  return out;
}

// The first difference between two schemas, for a message a person can act on.
std::string SchemaMismatch(const TensorSchema& got, const TensorSchema& want) {
  const size_t n = std::min(got.tensors.size(), want.tensors.size());
  for (size_t i = 0; i < n; ++i) {
    if (!(got.tensors[i] == want.tensors[i])) {
      TensorSchema g{{got.tensors[i]}}, w{{want.tensors[i]}};
      return absl::StrCat("tensor ", i, " is ", Describe(g), " but the global model has ",
                          Describe(w));
    }
  }
  return absl::StrCat("the update has ", got.tensors.size(), " tensors, the global model ",
                      want.tensors.size());
}

}  // namespace

UpdateIntake::UpdateIntake(UpdateHeader header, uint64_t max_bytes)
    : header_(std::move(header)),
      verifier_(header_.total_bytes, header_.total_sha256, max_bytes) {}

StatusOr<std::unique_ptr<UpdateIntake>> UpdateIntake::ForDelta(UpdateHeader header,
                                                               const TensorSchema& expected,
                                                               double max_norm,
                                                               std::string spool_path,
                                                               uint64_t max_bytes) {
  if (header.full_weights) {
    return absl::InvalidArgumentError("a TRAIN task expects a delta, not full weights");
  }
  if (header.num_examples < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_examples must be >= 1 (got ", header.num_examples, ")"));
  }
  std::unique_ptr<UpdateIntake> in(new UpdateIntake(std::move(header), max_bytes));
  in->expected_ = expected;
  in->max_norm_ = max_norm;
  in->spool_path_ = std::move(spool_path);
  ATTUNE_ASSIGN_OR_RETURN(SpoolWriter w,
                          SpoolWriter::Create(in->spool_path_, expected.numel()));
  in->spool_.emplace(std::move(w));
  return in;
}

StatusOr<std::unique_ptr<UpdateIntake>> UpdateIntake::ForInitialModel(UpdateHeader header,
                                                                      uint64_t max_bytes) {
  if (!header.full_weights) {
    return absl::InvalidArgumentError("an INIT task expects full weights, not a delta");
  }
  std::unique_ptr<UpdateIntake> in(new UpdateIntake(std::move(header), max_bytes));
  in->init_ = true;
  return in;
}

StatusOr<std::unique_ptr<UpdateIntake>> UpdateIntake::ForMasked(UpdateHeader header,
                                                                int64_t words) {
  if (!header.masked || header.full_weights) {
    return absl::InvalidArgumentError(
        "this round uses secure aggregation: the update must be a masked input");
  }
  const uint64_t bytes = static_cast<uint64_t>(words) * 4;
  if (header.total_bytes != bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a masked input is ", bytes, " bytes (", words, " words), not ", header.total_bytes));
  }
  std::unique_ptr<UpdateIntake> in(new UpdateIntake(std::move(header), bytes));
  in->masked_ = true;
  in->words_.resize(static_cast<size_t>(words));
  return in;
}

Status UpdateIntake::OnValues(uint64_t first, std::span<const float> values) {
  if (init_) {
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("initial weight ", first + i, " is ",
                         std::isnan(values[i]) ? "NaN" : "Inf"));
      }
    }
    return absl::OkStatus();
  }
  ATTUNE_RETURN_IF_ERROR(spool_->Append(first, values));
  if (spool_->norm() > max_norm_) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "update L2 norm exceeds the study's bound max_update_norm = %g (already %.6g)",
        max_norm_, spool_->norm()));
  }
  return absl::OkStatus();
}

Status UpdateIntake::AddChunk(uint64_t seq, std::string_view data, std::string_view sha256) {
  return AddChunk(seq, std::span<const std::string_view>(&data, 1), sha256);
}

Status UpdateIntake::AddChunk(uint64_t seq, std::span<const std::string_view> data,
                              std::string_view sha256) {
  ATTUNE_RETURN_IF_ERROR(dead_);
  Status s = [&]() -> Status {
    ATTUNE_RETURN_IF_ERROR(verifier_.Add(seq, data, sha256));
    // The schema is checked once, as soon as the header is parsed and
    // before any value is kept.
    auto check_schema = [&]() -> Status {
      if (schema_checked_ || parser_.schema() == nullptr || !expected_) {
        return absl::OkStatus();
      }
      schema_checked_ = true;
      if (*parser_.schema() == *expected_) return absl::OkStatus();
      return absl::InvalidArgumentError(absl::StrCat(
          "wrong shape or dtype: ", SchemaMismatch(*parser_.schema(), *expected_)));
    };
    for (std::string_view piece : data) {
      if (masked_) {
        // Little-endian words straight into place: no second copy of the input.
        static_assert(std::endian::native == std::endian::little);
        if (masked_bytes_ + piece.size() > words_.size() * 4) {
          return absl::InvalidArgumentError("a masked input longer than announced");
        }
        std::memcpy(reinterpret_cast<char*>(words_.data()) + masked_bytes_, piece.data(),
                    piece.size());
        masked_bytes_ += piece.size();
        continue;
      }
      if (init_) payload_.append(piece);
      ATTUNE_RETURN_IF_ERROR(parser_.Feed(piece, [&](uint64_t first, std::span<const float> v) {
        ATTUNE_RETURN_IF_ERROR(check_schema());
        return OnValues(first, v);
      }));
      ATTUNE_RETURN_IF_ERROR(check_schema());
    }
    return absl::OkStatus();
  }();
  if (!s.ok()) dead_ = s;
  return s;
}

Status UpdateIntake::Finish() {
  ATTUNE_RETURN_IF_ERROR(dead_);
  ATTUNE_RETURN_IF_ERROR(verifier_.Finish());
  if (masked_) {
    if (masked_bytes_ != words_.size() * 4) {
      return absl::InvalidArgumentError("a masked input shorter than announced");
    }
    return absl::OkStatus();
  }
  ATTUNE_RETURN_IF_ERROR(parser_.Finish());
  if (init_) {
    // Re-encode: the stored blob is canonical and aligned whatever the sender did.
    ATTUNE_ASSIGN_OR_RETURN(FlatModel m, DecodeModel(payload_));
    payload_.clear();
    payload_.shrink_to_fit();
    initial_ = std::make_shared<const std::string>(EncodeModel(m));
    return absl::OkStatus();
  }
  return spool_->Commit();
}

}  // namespace attune::coordinator
