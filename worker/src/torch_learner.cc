// The LibTorch learner: tensorises a site's data once per split, trains the
// multimodal attention model locally and evaluates it into sums.
#include <torch/torch.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "attune/common/metrics.h"
#include "attune/parallel/trainer.h"
#include "attune/worker/learner.h"
#include "attune/worker/audit_features.h"
#include "attune/worker/model.h"
#include "attune/worker/model_state.h"
#include "attune/worker/site_data.h"
#include "torch_guard.h"

namespace attune::worker {
namespace {

struct SplitTensors {
  Batch all;
  std::vector<const Patient*> patients;
};

SplitTensors Tensorise(const SiteData& data, const std::string& split, const ModelConfig& m) {
  SplitTensors s;
  for (const Patient& p : data.patients) {
    if (p.split == split) s.patients.push_back(&p);
  }
  s.all = ToBatch(s.patients, m);
  return s;
}

class TorchLearner final : public Learner {
 public:
  TorchLearner(ModelConfig config, SiteData data, parallel::Communicator* ranks)
      : config_(std::move(config)), data_(std::move(data)), ranks_(ranks) {
    if (ranks_ == nullptr) {
      local_ = parallel::MakeLocalCommunicator();
      ranks_ = local_.get();
    }
    for (const char* split : {"train", "val", "test"}) {
      splits_.emplace(split, Tensorise(data_, split, config_));
    }
  }

  StatusOr<FlatModel> InitialModel(uint64_t seed) override {
    return TorchGuard("initial model", [&]() -> StatusOr<FlatModel> {
      torch::manual_seed(seed);
      MultimodalAttentionNet net(config_);
      return ToFlatModel(*net);
    });
  }

  StatusOr<TrainResult> Train(const FlatModel& global, const TrainConfig& hyper,
                              const TrainOptions& options) override {
    return TorchGuard("training", [&]() -> StatusOr<TrainResult> {
      MultimodalAttentionNet net(config_);
      ATTUNE_RETURN_IF_ERROR(LoadFlatModel(global, *net));
      net->train();
      std::vector<torch::Tensor> anchor;  // w_global, for the proximal term
      if (options.proximal_mu > 0) {
        for (const auto& p : net->parameters()) anchor.push_back(p.detach().clone());
      }
      torch::optim::Adam opt(net->parameters(), torch::optim::AdamOptions(hyper.learning_rate));
      parallel::DataParallelOptions o;
      o.batch_size = hyper.batch_size;
      o.epochs = hyper.local_epochs;
      o.seed = hyper.seed;
      o.clip_grad_norm = 5.0;
      o.checkpoint_path = options.checkpoint_path;
      o.checkpoint_every = options.checkpoint_every;
      parallel::DataParallelTrainer trainer(*net, opt, *ranks_, o);
      trainer.BroadcastState();
      const SplitTensors& train = splits_.at("train");
      const int64_t n = train.patients.size();
      auto step_loss = [&](const torch::Tensor& idx) {
        Batch b = SelectRows(train.all, idx);
        ModelOutput out = net->forward(b);
        torch::Tensor loss = torch::binary_cross_entropy_with_logits(out.logits, b.label);
        torch::Tensor objective = out.aux_loss.defined() ? loss + out.aux_loss : loss;
        if (!anchor.empty()) {
          objective = objective + ProximalTerm(net->parameters(), anchor, options.proximal_mu);
        }
        return parallel::StepLoss{objective, loss.item<double>()};
      };
      parallel::StepFn on_step;
      if (options.progress) {
        on_step = [&](const parallel::StepInfo& s) {
          options.progress({s.epoch, s.epochs, s.step, s.steps, s.loss});
        };
      }
      const parallel::TrainSummary summary = trainer.Train(n, step_loss, on_step);
      const double epoch_loss = summary.loss;
      TrainResult r;
      r.delta = ToFlatModel(*net);
      for (size_t i = 0; i < r.delta.values.size(); ++i) r.delta.values[i] -= global.values[i];
      r.num_examples = n;
      r.train_loss = epoch_loss;
      return r;
    });
  }

  StatusOr<EvalSums> Evaluate(const FlatModel& model, const std::string& split,
                              const EvalOptions& o) override {
    auto it = splits_.find(split);
    if (it == splits_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("unknown split '", split, "'"));
    }
    std::vector<int> columns;  // indexes into the site's subgroup columns
    for (const auto& c : o.audit_columns) {
      auto pos = std::find(data_.subgroup_columns.begin(), data_.subgroup_columns.end(), c);
      if (pos != data_.subgroup_columns.end()) columns.push_back(pos - data_.subgroup_columns.begin());
    }
    std::vector<std::string> column_names;
    for (int c : columns) column_names.push_back(data_.subgroup_columns[c]);
    // Without audit columns no subgroup is counted, so no feature sums.
    const bool audit = !o.audit_columns.empty();
    return TorchGuard("evaluation", [&]() -> StatusOr<EvalSums> {
      // full_attention: linear attention's weights too, for the audit's
      // attention sums (the same parameters and outputs).
      MultimodalAttentionNet net(config_, /*full_attention=*/audit);
      ATTUNE_RETURN_IF_ERROR(LoadFlatModel(model, *net));
      net->eval();
      torch::NoGradGuard no_grad;
      const SplitTensors& s = it->second;
      EvalSums sums = EvalSums::Make(split, o.histogram_bins, ModalityNames(),
                                     audit ? AuditFeatures() : std::vector<std::string>{});
      const int64_t n = s.patients.size();
      std::vector<std::string> values(columns.size());
      for (int64_t off = 0; off < n; off += 256) {
        torch::Tensor idx = torch::arange(off, std::min(n, off + 256), torch::kInt64);
        Batch b = SelectRows(s.all, idx);
        ModelOutput out = net->forward(b);
        torch::Tensor prob = torch::sigmoid(out.logits).to(torch::kFloat64);
        torch::Tensor loss = torch::binary_cross_entropy_with_logits(
            out.logits, b.label, {}, {}, torch::Reduction::None).to(torch::kFloat64);
        torch::Tensor beta = out.beta.to(torch::kFloat64).contiguous();
        FeatureTensors f;
        if (audit) f = AuditFeatureValues(config_, b, out);
        torch::Tensor attention = f.attention.defined() ? f.attention.contiguous() : f.attention;
        torch::Tensor value = f.values.defined() ? f.values.contiguous() : f.values;
        const int64_t nf = audit ? attention.size(1) : 0;
        auto pa = prob.accessor<double, 1>();
        auto la = loss.accessor<double, 1>();
        for (int64_t i = 0; i < idx.size(0); ++i) {
          const Patient& p = *s.patients[off + i];
          for (size_t c = 0; c < columns.size(); ++c) values[c] = p.groups[columns[c]];
          PatientEval e;
          e.label = p.label;
          e.probability = pa[i];
          e.loss = la[i];
          e.beta = {beta[i].data_ptr<double>(), static_cast<size_t>(kNumModalities)};
          if (audit) {
            e.attention = {attention[i].data_ptr<double>(), static_cast<size_t>(nf)};
            e.values = {value[i].data_ptr<double>(), static_cast<size_t>(nf)};
          }
          sums.AddPatient(e, SubgroupCells(column_names, values), o.value_clip);
        }
      }
      return sums;
    });
  }

  std::vector<std::string> AuditFeatures() const override {
    return AuditFeatureNames(config_, data_);
  }

  int64_t NumExamples(const std::string& split) const override { return data_.Count(split); }

 private:
  ModelConfig config_;
  SiteData data_;
  std::unique_ptr<parallel::Communicator> local_;  // when no ranks were given
  parallel::Communicator* ranks_;
  std::map<std::string, SplitTensors> splits_;
};

}  // namespace

StatusOr<std::unique_ptr<Learner>> MakeTorchLearner(const ModelConfig& model,
                                                    const LearnerOptions& options) {
  ATTUNE_RETURN_IF_ERROR(model.Validate());
  if (options.threads < 1) return absl::InvalidArgumentError("--threads: must be >= 1");
  torch::set_num_threads(options.threads);
  ATTUNE_ASSIGN_OR_RETURN(SiteData data, LoadSiteData(options.site_dir, model));
  return std::unique_ptr<Learner>(new TorchLearner(model, std::move(data), options.ranks));
}

}  // namespace attune::worker
