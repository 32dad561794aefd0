// .npz archives (importers/npz.h ReadNpz: PneumoniaMNIST): a zip of .npy
// members, stored or deflated; any bytes read to arrays or are refused.
#include "fuzz_util.h"
#include "importers/npz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)attune::importers::ReadNpz(attune::fuzz::WriteInput(data, size, ".npz"));
  return 0;
}
