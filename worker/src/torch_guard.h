// Private to attune_worker: LibTorch's exceptions become a Status at the
// component's edge.
#pragma once

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "attune/common/status.h"
#include "attune/parallel/communicator.h"

namespace attune::worker {

// Runs f(); a c10::Error becomes Internal("<what>: <message>"), a failed
// collective DeadlineExceeded (timed out), Unavailable (transport error) or
// Internal (a bad call).
template <typename F>
auto TorchGuard(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  } catch (const parallel::CollectiveError& e) {
    const std::string message = absl::StrCat(what, ": ", e.what());
    switch (e.kind()) {
      case parallel::CollectiveError::Kind::kTimeout: return absl::DeadlineExceededError(message);
      case parallel::CollectiveError::Kind::kFailed: return absl::UnavailableError(message);
      case parallel::CollectiveError::Kind::kInvalid: break;
    }
    return absl::InternalError(message);
  }
}

}  // namespace attune::worker
