// Private to attune_worker: LibTorch's exceptions become a Status at the
// component's edge.
#pragma once

#include <torch/torch.h>

#include "absl/strings/str_cat.h"
#include "attune/common/status.h"

namespace attune::worker {

// Runs f(); a c10::Error becomes Internal("<what>: <message>").
template <typename F>
auto TorchGuard(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(what, ": ", e.what_without_backtrace()));
  }
}

}  // namespace attune::worker
