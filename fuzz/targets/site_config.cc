// A site's own configuration file (site_config.h LoadSiteConfig): any
// bytes are read, validated or refused with a status naming the file.
#include "attune/common/site_config.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)attune::LoadSiteConfig(attune::fuzz::WriteInput(data, size, ".json"));
  return 0;
}
