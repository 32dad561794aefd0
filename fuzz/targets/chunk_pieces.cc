// ReadChunkPieces (wire.h) against protobuf: an update or model chunk read
// where its bytes lie, cut into pieces as gRPC's slices cut it, must be
// accepted exactly when CheckWireBounds and Chunk::ParseFromString accept
// the joined bytes, and then give protobuf's fields, its data included.
#include <cstdlib>
#include <string>
#include <vector>

#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include "attune/common/wire.h"
#include "attune/v1/federation.pb.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const size_t cut = 1 + in.Byte() % 64;  // the pieces' size
  WireBounds b;
  b.default_repeated = 1 + in.Byte() % 8;
  b.max_depth = 1 + in.Byte() % 4;
  const std::string_view bytes = in.rest();
  std::vector<std::string_view> pieces;
  for (size_t at = 0; at < bytes.size(); at += cut) pieces.push_back(bytes.substr(at, cut));
  if (!pieces.empty() && cut % 3 == 0) pieces.insert(pieces.begin() + 1, std::string_view());

  ChunkPieces got;
  const bool ours = ReadChunkPieces(pieces, b, &got).ok();
  v1::Chunk want;
  const bool theirs = CheckWireBounds(bytes, *v1::Chunk::descriptor(), b).ok() &&
                      want.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
  if (ours != theirs) std::abort();
  if (!ours) return 0;
  std::string joined;
  for (std::string_view p : got.data) joined.append(p);
  if (joined != want.data() || got.data_size() != want.data().size()) std::abort();
  if (!got.rest.data().empty()) std::abort();
  want.clear_data();
  // Compared as messages (maps serialise in no fixed order), a NaN metric
  // equal to itself.
  google::protobuf::util::DefaultFieldComparator same;
  same.set_treat_nan_as_equal(true);
  google::protobuf::util::MessageDifferencer diff;
  diff.set_field_comparator(&same);
  if (!diff.Compare(got.rest, want)) std::abort();
  return 0;
}
