// The model encoding (tensor_codec.h): the streaming parser a site and the
// coordinator feed chunk by chunk, cut at points the input chooses, and
// DecodeModel on the whole; both must agree, and never crash.
#include <cstdlib>

#include "attune/common/tensor_codec.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const size_t piece = 1 + in.Byte() % 64;
  const std::string_view bytes = in.rest();
  ModelStreamParser parser(/*max_schema_bytes=*/1 << 16);
  uint64_t values = 0;
  Status s;
  for (size_t at = 0; s.ok() && at < bytes.size(); at += piece) {
    s = parser.Feed(bytes.substr(at, piece), [&](uint64_t first, std::span<const float> v) {
      if (first != values) std::abort();  // in order, none skipped
      values += v.size();
      return absl::OkStatus();
    });
  }
  if (s.ok()) s = parser.Finish();
  StatusOr<FlatModel> whole = DecodeModel(bytes);
  // The whole-buffer decoder allows what the stream parser allows.
  if (s.ok() && whole.ok() && whole->values.size() != values) std::abort();
  if (whole.ok()) {
    // What decodes re-encodes to a model that decodes to the same values.
    StatusOr<FlatModel> again = DecodeModel(EncodeModel(*whole));
    if (!again.ok() || again->values.size() != whole->values.size()) std::abort();
  }
  return 0;
}
