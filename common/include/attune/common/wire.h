// Translation between domain types and protocol messages, in one place.
#pragma once

#include "attune/common/eval_stats.h"
#include "attune/common/status.h"
#include "attune/v1/federation.pb.h"

namespace attune {

void ToProto(const EvalSums& s, v1::AuditReport* out);
// Validates as it converts; InvalidArgument for inconsistent reports.
StatusOr<EvalSums> FromProto(const v1::AuditReport& r);

}  // namespace attune
