// .npy files (npy.h ParseNpy): imaging arrays and .npz members. Any bytes
// parse to an array whose data matches its shape, or are refused.
#include <cstdlib>

#include "attune/common/npy.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const bool convert = in.Byte() % 2 == 1;
  StatusOr<NpyArray> a = ParseNpy(in.rest(), "fuzz.npy", convert);
  if (a.ok()) {
    uint64_t n = 1;
    for (int64_t d : a->shape) n *= static_cast<uint64_t>(d);
    if (n != a->data.size()) std::abort();
  }
  return 0;
}
