// A round's secure aggregation on the wire: the federation messages of
// common/secagg.h's four steps (protocols/attune/v1/federation.proto), and
// the site's side of one secure TRAIN task, shared by attune-worker and the
// fake sites of experiments/fedsim.
//
// What a site contributes is x = weight · update (weight: its share of the
// round's training examples, so the sum is FedAvg's weighted mean), then
// one word for weight · train_loss / kLossScale, each value clipped to the
// study's secagg.value_clip and quantised to Z_2^32 (secagg::Quantizer).
// The site checks every relayed advertisement's certificate against the
// study CA and the name the setup gives that index, before it trusts the
// signature: a coordinator cannot swap keys, nor certificates.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attune/common/secagg.h"
#include "attune/common/status.h"
#include "attune/v1/federation.pb.h"

namespace attune::secagg {

// The loss word is weight · loss / kLossScale, so a loss up to
// kLossScale · value_clip fits the quantiser's range.
inline constexpr double kLossScale = 64;

// The words of a round's input for a model of `params` values.
inline int64_t InputLength(int64_t params) { return params + 1; }

Options OptionsFromSetup(const v1::SecAggSetup& setup);

v1::SecAggAdvertisement ToProto(const Advertisement& a, const std::string& certificate_pem);
Advertisement FromProto(const v1::SecAggAdvertisement& a);
v1::SecAggSealedShares ToProto(const SealedShares& s);
SealedShares FromProto(const v1::SecAggSealedShares& s);
v1::SecAggUnmask ToProto(const UnmaskResponse& r);
UnmaskResponse FromProto(int site, const v1::SecAggUnmask& r);

// A masked input's payload: little-endian 32-bit words.
std::string EncodeWords(std::span<const uint32_t> words);

// The site's side of one secure TRAIN task (or EVALUATE: its input is the
// words of eval_stats.h's layout, summed as they are).
class SecureSite {
 public:
  // From the TRAIN task's setup; signs with `key_pem` (this site's mTLS
  // key) and checks peers' certificates against `ca_pem`.
  static StatusOr<std::unique_ptr<SecureSite>> Start(const v1::RoundTask& train,
                                                     std::string key_pem, std::string ca_pem);

  const std::string& task_id() const { return task_id_; }
  // What is summed: "update" (TRAIN) or "evaluation" (EVALUATE).
  const std::string& purpose() const { return purpose_; }
  // Step 1: what to send.
  v1::SecAggAdvertisement Advertisement() const;
  // Our input: weight · update and the loss word, quantised. Returns how
  // many values were clipped to the quantiser's range.
  StatusOr<int64_t> SetInput(std::span<const float> update, double train_loss);
  // Our input as words already (EncodeEvalWords): no weight, no quantiser.
  Status SetWords(std::vector<uint32_t> words);
  // Step 2, from a SECAGG_SHARE task.
  StatusOr<v1::SecAggShares> ShareKeys(const v1::RoundTask& task);
  // Step 3, from a SECAGG_MASK task: the masked input's payload.
  StatusOr<std::string> MaskedPayload(const v1::RoundTask& task);
  // The consistency step, from a SECAGG_CONFIRM task: our signature of the
  // survivor set. Once per aggregation: a second, other set is refused.
  // PermissionDenied for a set without us, with fewer than t sites, or
  // naming a site that did not share keys with us.
  StatusOr<v1::SecAggConfirm> Confirm(const v1::RoundTask& task);
  // Step 4, from a SECAGG_UNMASK task: only for the set we confirmed, and
  // only when at least t of its sites signed it (their certificates from
  // the share step); PermissionDenied otherwise, before anything is opened.
  StatusOr<v1::SecAggUnmask> Unmask(const v1::RoundTask& task);
  const std::vector<std::string>& sites() const { return sites_; }

 private:
  SecureSite() = default;
  Status CheckTask(const v1::RoundTask& task) const;

  std::string task_id_;
  std::string purpose_;
  std::string ca_pem_;
  std::vector<std::string> sites_;
  double weight_ = 0;
  int64_t length_ = 0;
  std::optional<Quantizer> quantizer_;
  std::optional<Client> client_;
  std::string certificate_pem_;
  std::string context_;
  int threshold_ = 0;
  int index_ = -1;
  Signer sign_;
  std::map<int, std::string> peer_certificates_;  // verified at the share step
  std::optional<std::vector<int>> confirmed_;     // the survivor set we signed
  std::vector<uint32_t> input_;
  bool have_input_ = false;
};

}  // namespace attune::secagg
