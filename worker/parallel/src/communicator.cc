#include "attune/parallel/communicator.h"

#include <cstdio>

namespace attune::parallel {
namespace {

class DoneWork final : public Work {
 public:
  bool IsCompleted() override { return true; }
  void Wait(std::chrono::milliseconds) override {}
};

class LocalCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view backend() const override { return "local"; }
  std::unique_ptr<Work> AllReduce(torch::Tensor&, ReduceOp, std::string_view) override {
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> Broadcast(torch::Tensor&, int root, std::string_view what) override {
    if (root != 0) {
      throw CollectiveError(CollectiveError::Kind::kInvalid,
                            "local broadcast '" + std::string(what) + "': root " +
                                std::to_string(root) + " of a single rank");
    }
    return std::make_unique<DoneWork>();
  }
  std::unique_ptr<Work> Barrier(std::string_view) override { return std::make_unique<DoneWork>(); }
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator() {
  return std::make_unique<LocalCommunicator>();
}

std::string DescribeTensor(const torch::Tensor& t) {
  const double bytes = static_cast<double>(t.numel()) * t.element_size();
  char size[32];
  if (bytes >= 1 << 20) {
    std::snprintf(size, sizeof size, "%.1f MiB", bytes / (1 << 20));
  } else if (bytes >= 1 << 10) {
    std::snprintf(size, sizeof size, "%.1f KiB", bytes / (1 << 10));
  } else {
    std::snprintf(size, sizeof size, "%.0f B", bytes);
  }
  return std::string(size) + " " + std::string(c10::toString(t.scalar_type())) +
         (t.is_cuda() ? " (cuda)" : "");
}

}  // namespace attune::parallel
