// The words of a secure evaluation, as the coordinator decodes their sum
// (eval_stats.h DecodeEvalWords): any words, of the right length or not,
// decode to consistent sums or to a refusal; and a site's own words
// (EncodeEvalWords of sums it could hold) decode back to them.
#include <cstdlib>
#include <cstring>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const int bins = 2 * (1 + in.Byte() % 4);
  const bool cells = in.Byte() % 2 == 1;
  const int64_t noised = in.Byte() % 3;
  const EvalLayout layout = EvalLayout::Make(
      {"val"}, bins, ModalityNames(), {"ehr_static/age"},
      cells ? std::map<std::string, std::vector<std::string>>{{"sex", {"F", "M"}}}
            : std::map<std::string, std::vector<std::string>>{});
  const std::string_view rest = in.rest();
  std::vector<uint32_t> words(rest.size() / 4);
  if (!words.empty()) std::memcpy(words.data(), rest.data(), words.size() * 4);
  // Often the right length, so that decoding goes past its first check.
  if (!words.empty() && words[0] % 2 == 0) words.resize(static_cast<size_t>(layout.Words()));
  StatusOr<std::vector<EvalSums>> splits = DecodeEvalWords(words, layout, noised);
  if (splits.ok()) {
    for (const auto& s : *splits) {
      if (!s.Validate().ok()) std::abort();
    }
  }
  return 0;
}
