// The study file (config.h ParseStudyConfig, with ModelConfig::FromJson)
// and the signed terms' body (terms.h StudyTerms::FromJson): any text is
// parsed and validated or refused with a status, never a crash or throw;
// a study that parses re-serialises its model to JSON that parses again.
#include <cstdlib>

#include "attune/common/config.h"
#include "attune/common/terms.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const uint8_t which = in.Byte();
  const std::string text(in.rest());
  switch (which % 3) {
    case 0: {
      StatusOr<StudyConfig> study = ParseStudyConfig(text, "fuzz");
      if (study.ok()) {
        StatusOr<ModelConfig> again = ModelConfig::FromJson(study->model.ToJson());
        if (!again.ok()) std::abort();
      }
      break;
    }
    case 1: (void)ModelConfig::FromJson(text); break;
    default: (void)StudyTerms::FromJson(text); break;
  }
  return 0;
}
