// Federation without training: sites that follow the coordinator's tasks
// with synthetic models and updates, for tests of the engine (refusals, a
// 1 GiB round trip, faults) and for the coordinator benchmark. A fake site
// keeps at most one chunk of a model in memory: it verifies what it fetches
// as the chunks arrive and generates what it uploads on the fly (one pass to
// digest the payload, one to send it).
//
// Synthetic values are dyadic rationals (k / 1024 times a power of two), so
// sums of a few of them are exact in float and a test can predict the
// coordinator's result bit for bit.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "attune/common/secure_update.h"
#include "attune/common/status.h"
#include "attune/common/tensor_codec.h"
#include "attune/v1/federation.grpc.pb.h"

namespace attune::fedsim {

// Value `index` of synthetic stream `seed`: an integer in [-1000, 1000]
// divided by 1024.
float SyntheticValue(uint64_t seed, uint64_t index);

using ValueFn = std::function<float(uint64_t index)>;

// Calls `piece` with the consecutive pieces (each <= kMaxChunkBytes) of the
// encoding of a model of `schema` whose value i is value(i).
Status ForEachEncodedPiece(const TensorSchema& schema, const ValueFn& value,
                           const std::function<Status(std::string_view)>& piece);

// Streams a generated payload as a SubmitUpdate; `meta` is completed with
// the payload's size and digest. Returns the call's status.
grpc::Status Upload(v1::Federation::Stub* stub, v1::UpdateMeta meta, const TensorSchema& schema,
                    const ValueFn& value, v1::Receipt* receipt,
                    std::chrono::seconds timeout = std::chrono::seconds(600));

// Sends exactly `chunks` as one SubmitUpdate (for tests that craft bad streams).
grpc::Status SendChunks(v1::Federation::Stub* stub, const std::vector<v1::Chunk>& chunks,
                        v1::Receipt* receipt);

struct FetchedModel {
  TensorSchema schema;
  uint64_t bytes = 0;
  std::string sha256;         // of the whole payload
  std::vector<float> values;  // only when asked for
};
// Fetches model `version`, verifying every chunk and the whole payload.
StatusOr<FetchedModel> Fetch(v1::Federation::Stub* stub, const std::string& study_id,
                             int64_t version, bool keep_values = false,
                             std::chrono::seconds timeout = std::chrono::seconds(600));

// A valid evaluation report for `split` with one correctly scored positive.
v1::AuditReport TrivialAuditReport(const std::string& split, int histogram_bins);

struct FakeSiteOptions {
  std::string study_id;
  TensorSchema init_schema;  // what an INIT task uploads: SyntheticValue(init_seed, i)
  uint64_t init_seed = 1;
  uint64_t seed = 2;         // TRAIN deltas: SyntheticValue(seed * 1000003 + round, i) * delta_scale
  float delta_scale = 1.0f / 64;
  int64_t num_examples = 100;
  // Sessions to try: after the coordinator goes away (a restart), the site
  // joins again, waiting for it to be back (gRPC wait-for-ready) each time.
  int max_sessions = 1;
  // Secure aggregation (when the study has it on): this site's TLS key and
  // the study CA. The masked input is DeltaValues' update.
  std::string key_pem;
  std::string ca_pem;
};

// The delta a fake site with `options` sends in `round`.
ValueFn DeltaValues(const FakeSiteOptions& options, int64_t round);

// A site that trains nothing. Run() joins, subscribes and handles tasks
// until FINISH (OK), the stream ends (Unavailable) or Stop().
class FakeSite {
 public:
  FakeSite(std::shared_ptr<grpc::Channel> channel, FakeSiteOptions options);
  Status Run();
  void Stop();
  int64_t updates_sent() const { return updates_sent_.load(); }
  // Updates the coordinator refused as late (FAILED_PRECONDITION); the site
  // carries on with its next task, as attune-worker does.
  int64_t updates_late() const { return updates_late_.load(); }
  // Bytes this site sent in update payloads and secure aggregation messages.
  int64_t bytes_up() const { return bytes_up_.load(); }
  // Seconds spent on the update itself: encoding and digests for a plain
  // one; key agreement, sharing, quantising and masking for a secure one.
  double update_seconds() const { return update_us_.load() / 1e6; }

 private:
  Status Session();
  Status Handle(const v1::RoundTask& task, int histogram_bins);

  FakeSiteOptions options_;
  std::unique_ptr<v1::Federation::Stub> stub_;
  std::mutex mu_;
  grpc::ClientContext* stream_ctx_ = nullptr;  // guarded by mu_
  bool stopped_ = false;                       // guarded by mu_
  std::atomic<int64_t> updates_sent_{0};
  std::atomic<int64_t> updates_late_{0};
  std::atomic<int64_t> bytes_up_{0};
  std::atomic<int64_t> update_us_{0};
  std::unique_ptr<secagg::SecureSite> secure_;  // the open secure TRAIN task
  Status SendSecAgg(const v1::RoundTask& task, v1::SecAggMessage msg);
  // A TRAIN or EVALUATE task with a SecAggSetup: starts our part and
  // advertises our keys (otherwise: nothing).
  Status StartSecure(const v1::RoundTask& task);
};

}  // namespace attune::fedsim
