// A site's evaluation report on its way into the audit, as the coordinator
// takes it: the wire walk, protobuf, FromProto (validation), the study's
// shape (CheckEvalReport), Add into sums shaped by the study, and the
// audit document of the result. Nothing may crash, and what Add accepts
// must make a document (or a clear refusal).
#include <cstdlib>

#include "attune/common/audit.h"
#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/wire.h"
#include "attune/v1/federation.pb.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const int bins = 2 * (1 + in.Byte() % 5);
  const std::vector<std::string> features = {"ehr_static/age", "genomics/IDH1"};
  WireBounds b;
  b.default_repeated = 16;
  b.repeated = {{"attune.v1.AuditReport.groups", 8}};
  const std::string_view bytes = in.rest();
  if (!CheckWireBounds(bytes, *v1::AuditReport::descriptor(), b).ok()) return 0;
  v1::AuditReport report;
  if (!report.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return 0;
  StatusOr<EvalSums> sums = FromProto(report);
  if (!sums.ok()) return 0;
  EvalReportSpec spec;
  spec.bins = bins;
  spec.modalities = ModalityNames();
  spec.features = features;
  spec.columns = {"age_band", "sex"};
  spec.values = {{"sex", {"F", "M"}}};
  if (!CheckEvalReport(*sums, spec).ok()) return 0;
  EvalSums total = EvalSums::Make(sums->split, bins, ModalityNames(), features);
  if (!total.Add(*sums).ok()) return 0;
  if (!total.Add(*sums).ok()) std::abort();  // what was added once adds again
  AuditOptions options;
  options.min_cell = 1 + in.Byte() % 5;
  (void)AuditJson(total, options);
  (void)total.MetricsJson();
  return 0;
}
