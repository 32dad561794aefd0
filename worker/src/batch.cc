#include "attune/worker/model.h"

namespace attune::worker {

Batch ToBatch(const std::vector<const Patient*>& patients, const ModelConfig& m) {
  const int64_t n = patients.size();
  const int64_t l = m.max_events;
  Batch b;
  b.static_x = torch::zeros({n, m.static_features});
  b.event_bucket = torch::zeros({n, l}, torch::kInt64);
  b.event_value = torch::zeros({n, l});
  b.event_time = torch::zeros({n, l});
  b.event_pad = torch::ones({n, l}, torch::kBool);
  std::vector<int64_t> imaging_shape = {n};
  for (int64_t d : m.imaging_shape()) imaging_shape.push_back(d);
  b.imaging = torch::zeros(imaging_shape);
  const int64_t imaging_numel = b.imaging.numel() / std::max<int64_t>(n, 1);
  b.genomics = torch::zeros({n, m.genes});
  b.present = torch::zeros({n, kNumModalities}, torch::kBool);
  b.label = torch::zeros({n});
  auto sx = b.static_x.accessor<float, 2>();
  auto eb = b.event_bucket.accessor<int64_t, 2>();
  auto ev = b.event_value.accessor<float, 2>();
  auto et = b.event_time.accessor<float, 2>();
  auto ep = b.event_pad.accessor<bool, 2>();
  auto ge = b.genomics.accessor<float, 2>();
  auto pr = b.present.accessor<bool, 2>();
  auto lb = b.label.accessor<float, 1>();
  for (int64_t i = 0; i < n; ++i) {
    const Patient& p = *patients[i];
    lb[i] = static_cast<float>(p.label);
    if (p.has_static) {
      pr[i][0] = true;
      for (int j = 0; j < m.static_features; ++j) sx[i][j] = p.static_features[j];
    }
    if (!p.events.empty()) {
      pr[i][1] = true;
      for (size_t k = 0; k < p.events.size(); ++k) {
        eb[i][k] = p.events[k].bucket;
        ev[i][k] = p.events[k].value;
        et[i][k] = p.events[k].time;
        ep[i][k] = false;
      }
    }
    if (p.has_imaging) {
      pr[i][2] = true;
      std::copy(p.imaging.begin(), p.imaging.end(),
                b.imaging.data_ptr<float>() + i * imaging_numel);
    }
    if (p.has_genomics) {
      pr[i][3] = true;
      for (int j = 0; j < m.genes; ++j) ge[i][j] = p.genomics[j];
    }
  }
  return b;
}

}  // namespace attune::worker
