// What the coordinator does with a request's bytes before anything else
// (wire.h CheckWireBounds, then protobuf): for each request type the
// service serves, with bounds like a study's; a message the walk accepts
// must parse, and the counts it checked must hold on the parsed message.
#include <cstdlib>

#include "attune/common/wire.h"
#include "attune/v1/federation.pb.h"
#include "fuzz_util.h"

namespace {

template <typename Message>
void Check(std::string_view bytes, const attune::WireBounds& bounds) {
  if (!attune::CheckWireBounds(bytes, *Message::descriptor(), bounds).ok()) return;
  Message m;
  if (!m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) std::abort();
  // Nothing unknown survives the walk.
  if (m.GetReflection()->GetUnknownFields(m).field_count() != 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const uint8_t which = in.Byte();
  WireBounds b;
  b.default_repeated = 8;
  b.max_depth = 1 + in.Byte() % 8;
  b.repeated = {{"attune.v1.AuditReport.groups", 4}, {"attune.v1.GroupStats.pos_hist", 16},
                {"attune.v1.JoinRequest.audit_features", 16}};
  const std::string_view bytes = in.rest();
  switch (which % 6) {
    case 0: {
      if (!CheckWireBounds(bytes, *v1::AuditReport::descriptor(), b).ok()) break;
      v1::AuditReport r;
      if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) std::abort();
      if (r.groups_size() > 4) std::abort();
      for (const auto& g : r.groups()) {
        if (g.pos_hist_size() > 16) std::abort();
      }
      break;
    }
    case 1: {
      if (!CheckWireBounds(bytes, *v1::JoinRequest::descriptor(), b).ok()) break;
      v1::JoinRequest r;
      if (!r.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) std::abort();
      if (r.audit_features_size() > 16) std::abort();
      break;
    }
    case 2: Check<v1::Chunk>(bytes, b); break;
    case 3: Check<v1::SecAggMessage>(bytes, b); break;
    case 4: Check<v1::HeartbeatRequest>(bytes, b); break;
    default: Check<v1::RoundTask>(bytes, b); break;
  }
  return 0;
}
