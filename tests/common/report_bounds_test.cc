// What the coordinator accepts from one site, checked before or as it is
// built: a message's counts on the wire (CheckWireBounds, from the bytes,
// with hand-made encodings), a Join's audit features (the model fixes them,
// the site names its columns), and an evaluation report's shape (the
// study's, never another site's).
#include <gtest/gtest.h>

#include "attune/common/audit_features.h"
#include "attune/common/eval_stats.h"
#include "attune/common/wire.h"
#include "attune/v1/federation.pb.h"

namespace attune {
namespace {

const google::protobuf::Descriptor& Report() { return *v1::AuditReport::descriptor(); }

TEST(CheckWireBounds, CountsRepeatedFieldsPerMessageFromTheBytes) {
  v1::AuditReport r;
  for (int i = 0; i < 5; ++i) r.add_groups()->set_column("sex");
  for (int i = 0; i < 7; ++i) r.mutable_groups(0)->add_pos_hist(i);  // packed varints
  const std::string bytes = r.SerializeAsString();
  WireBounds b;
  b.repeated = {{"attune.v1.AuditReport.groups", 5}, {"attune.v1.GroupStats.pos_hist", 7}};
  EXPECT_TRUE(CheckWireBounds(bytes, Report(), b).ok());
  b.repeated["attune.v1.AuditReport.groups"] = 4;
  Status s = CheckWireBounds(bytes, Report(), b);
  EXPECT_TRUE(absl::IsInvalidArgument(s));
  EXPECT_NE(s.message().find("AuditReport.groups: more than 4"), std::string::npos) << s;
  b.repeated["attune.v1.AuditReport.groups"] = 5;
  b.repeated["attune.v1.GroupStats.pos_hist"] = 6;
  EXPECT_FALSE(CheckWireBounds(bytes, Report(), b).ok());
}

TEST(CheckWireBounds, CountsPackedDoublesAndUnpackedElementsAlike) {
  // Field 12 (attention_sum, double) of a group: packed 3 doubles, then one
  // unpacked -- 4 in all.
  std::string group = "\x62\x18" + std::string(24, '\0') + "\x61" + std::string(8, '\0');
  const std::string bytes = "\x72" + std::string(1, static_cast<char>(group.size())) + group;
  v1::AuditReport parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.groups(0).attention_sum_size(), 4);
  WireBounds b;
  b.repeated = {{"attune.v1.GroupStats.attention_sum", 4}};
  EXPECT_TRUE(CheckWireBounds(bytes, Report(), b).ok());
  b.repeated["attune.v1.GroupStats.attention_sum"] = 3;
  EXPECT_FALSE(CheckWireBounds(bytes, Report(), b).ok());
}

TEST(CheckWireBounds, RefusesUnknownFieldsWrongWireTypesAndTruncation) {
  WireBounds b;
  // Field 99, varint: protobuf would keep it as an unknown field.
  EXPECT_NE(CheckWireBounds("\x98\x06\x01", Report(), b).message().find("field 99 is not"),
            std::string::npos);
  // study_id (1, a string) sent as a varint.
  EXPECT_NE(CheckWireBounds("\x08\x01", Report(), b).message().find("wrong wire type"),
            std::string::npos);
  // A group that claims 100 bytes of 2.
  EXPECT_FALSE(CheckWireBounds("\x72\x64\x0a\x00", Report(), b).ok());
  // A varint that never ends.
  EXPECT_FALSE(CheckWireBounds("\x28\xff\xff", Report(), b).ok());
  EXPECT_TRUE(CheckWireBounds("", Report(), b).ok());
}

// What fuzz/targets/wire_messages.cc found the walk accepting though
// protobuf refuses it: each a message the coordinator would then have
// parsed as malformed, but must not take for well-formed.
TEST(CheckWireBounds, RefusesWhatProtobufRefuses) {
  using namespace std::string_literals;
  WireBounds b;
  const auto& secagg = *v1::SecAggMessage::descriptor();
  EXPECT_FALSE(CheckWireBounds("\xff"s, secagg, b).ok());  // a tag varint that never ends
  // neg_hist packed, one byte: a varint cut short.
  EXPECT_FALSE(CheckWireBounds("\x42\x01\xfe"s, Report(), b).ok());
  // attention_sum (doubles) packed in 12 bytes: not whole doubles.
  EXPECT_FALSE(CheckWireBounds("\x72\x0e\x62\x0c"s + std::string(12, '\0'), Report(), b).ok());
  // study_id's length as a 9-byte varint of 0 (protobuf reads at most 5).
  EXPECT_FALSE(
      CheckWireBounds("\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x00"s, secagg, b).ok());
  // audit_features' length as a 5-byte varint past 32 bits (2^34: its low
  // 32 bits are 0).
  EXPECT_FALSE(
      CheckWireBounds("\x32\x80\x80\x80\x80\x40"s, *v1::JoinRequest::descriptor(), b).ok());
  // round's tag (field 2, varint) written in 6 bytes.
  EXPECT_FALSE(CheckWireBounds("\x90\x80\x80\x80\x80\x00\x00"s, secagg, b).ok());
  // A proto3 string that is not UTF-8.
  EXPECT_NE(CheckWireBounds("\x0a\x02\xc3\x28"s, secagg, b).message().find("not UTF-8"),
            std::string::npos);
  for (const std::string bytes : {"\xff"s, "\x0a\x02\xc3\x28"s, "\x32\x80\x80\x80\x80\x40"s,
                                   "\x90\x80\x80\x80\x80\x00\x00"s}) {
    v1::SecAggMessage m;
    EXPECT_FALSE(m.ParseFromString(bytes));
  }
}

TEST(CheckWireBounds, BoundsNesting) {
  // RoundTask -> EvalLayout -> cells: nesting within the bound.
  v1::RoundTask t;
  t.mutable_eval_layout()->add_cells()->set_column("sex");
  WireBounds b;
  EXPECT_TRUE(CheckWireBounds(t.SerializeAsString(), *v1::RoundTask::descriptor(), b).ok());
  b.max_depth = 1;
  EXPECT_FALSE(CheckWireBounds(t.SerializeAsString(), *v1::RoundTask::descriptor(), b).ok());
}

ModelConfig SmallModel() {
  ModelConfig m;
  m.static_features = 2;
  m.event_buckets = 3;
  m.imaging_encoder = "patch_features";
  m.imaging_patches = 4;
  m.genes = 2;
  return m;
}

TEST(AuditFeatures, TheModelFixesThemAndTheSiteNamesItsColumns) {
  const ModelConfig m = SmallModel();
  const std::vector<std::string> cols = {"age", "bmi"}, genes = {"IDH1", "TP53"};
  const auto names = AuditFeatureNames(m, cols, genes);
  ASSERT_EQ(names.size(), AuditFeatureCount(m));
  EXPECT_EQ(names, (std::vector<std::string>{
                       "ehr_static/age", "ehr_static/bmi", "ehr_events/bucket 0",
                       "ehr_events/bucket 1", "ehr_events/bucket 2", "imaging/patch 0",
                       "imaging/patch 1", "imaging/patch 2", "imaging/patch 3",
                       "genomics/IDH1", "genomics/TP53"}));
  EXPECT_TRUE(CheckAuditFeatureNames(m, names).ok());

  auto with = [&](size_t i, std::string name) {
    auto v = names;
    v[i] = std::move(name);
    return CheckAuditFeatureNames(m, v);
  };
  EXPECT_NE(with(2, "ehr_events/bucket 7").message().find("should be 'ehr_events/bucket 0'"),
            std::string::npos);
  EXPECT_NE(with(0, "genomics/age").message().find("should start with ehr_static/"),
            std::string::npos);
  EXPECT_FALSE(with(0, "ehr_static/").ok());
  EXPECT_FALSE(with(0, "ehr_static/" + std::string(kMaxFeatureNameBytes + 1, 'x')).ok());
  EXPECT_FALSE(with(0, "ehr_static/\xff\xfe").ok());
  EXPECT_FALSE(with(0, "ehr_static/a\nb").ok());
  EXPECT_NE(with(1, "ehr_static/age").message().find("declared twice"), std::string::npos);
  auto more = names;
  more.push_back("genomics/EGFR");
  EXPECT_NE(CheckAuditFeatureNames(m, more).message().find("12 audit features declared; the "
                                                           "study's model has 11"),
            std::string::npos);
}

TEST(AuditFeatures, SitesThatDisagreeOnAColumnsNameGetItsGenericName) {
  const ModelConfig m = SmallModel();
  const auto a = AuditFeatureNames(m, std::vector<std::string>{"age", "bmi"},
                                   std::vector<std::string>{"IDH1", "TP53"});
  const auto b = AuditFeatureNames(m, std::vector<std::string>{"age", "weight"},
                                   std::vector<std::string>{"IDH1", "TP53"});
  const std::vector<std::string> none;
  const std::vector<const std::vector<std::string>*> lists = {&none, &a, &b};
  const auto agreed = AgreedAuditFeatureNames(m, lists);
  ASSERT_EQ(agreed.size(), a.size());
  EXPECT_EQ(agreed[0], "ehr_static/age");
  EXPECT_EQ(agreed[1], "ehr_static/feature 1");
  EXPECT_EQ(agreed[9], "genomics/IDH1");
  const std::vector<const std::vector<std::string>*> empty = {&none};
  EXPECT_TRUE(AgreedAuditFeatureNames(m, empty).empty());
}

EvalSums Sums(int bins, std::vector<std::string> features) {
  EvalSums s = EvalSums::Make("val", bins, ModalityNames(), std::move(features));
  return s;
}

EvalReportSpec Spec(int bins, std::vector<std::string> features) {
  EvalReportSpec spec;
  spec.bins = bins;
  spec.modalities = ModalityNames();
  spec.features = std::move(features);
  spec.columns = {"sex", "age_band"};
  spec.values = {{"sex", {"F", "M"}}};
  return spec;
}

TEST(CheckEvalReport, HoldsAReportToTheStudysShape) {
  const std::vector<std::string> f = {"ehr_static/age", "ehr_static/bmi"};
  EvalSums ok = Sums(20, f);
  ok.groups[{"sex", "F"}] = ok.EmptyGroup();
  ok.groups[{"sex", "X"}] = ok.EmptyGroup();  // unlisted: allowed, counted
  ok.groups[{"age_band", "60-69"}] = ok.EmptyGroup();
  ok.groups[{std::string("age_band") + kCellJoin + "sex", std::string("60-69") + kCellJoin + "F"}] =
      ok.EmptyGroup();
  EXPECT_TRUE(CheckEvalReport(ok, Spec(20, f)).ok()) << CheckEvalReport(ok, Spec(20, f));

  EXPECT_NE(CheckEvalReport(Sums(10, f), Spec(20, f)).message().find("10 score bins; the study "
                                                                     "has 20"),
            std::string::npos);
  EXPECT_NE(CheckEvalReport(Sums(20, {}), Spec(20, f)).message().find("declared at Join"),
            std::string::npos);
  EvalSums wrong_modalities = Sums(20, f);
  wrong_modalities.modalities.pop_back();
  EXPECT_FALSE(CheckEvalReport(wrong_modalities, Spec(20, f)).ok());

  auto with_cell = [&](CellKey key) {
    EvalSums s = Sums(20, f);
    s.groups[key] = s.EmptyGroup();
    return CheckEvalReport(s, Spec(20, f));
  };
  EXPECT_NE(with_cell({"zip", "123"}).message().find("does not audit"), std::string::npos);
  // Pairs only of audited columns, in name order (SubgroupCells').
  EXPECT_FALSE(with_cell({std::string("sex") + kCellJoin + "age_band",
                          std::string("F") + kCellJoin + "60-69"})
                   .ok());
  EXPECT_FALSE(with_cell({std::string("age_band") + kCellJoin + "sex", "F"}).ok());
  EXPECT_FALSE(with_cell({"sex", std::string(kMaxValueBytes + 1, 'v')}).ok());
  EXPECT_FALSE(with_cell({"sex", "\xc3"}).ok());

  // At most kMaxUnlistedValues values a column does not list.
  EvalSums many = Sums(20, f);
  for (int i = 0; i <= kMaxUnlistedValues; ++i) {
    many.groups[{"age_band", "band " + std::to_string(i)}] = many.EmptyGroup();
  }
  EXPECT_NE(CheckEvalReport(many, Spec(20, f)).message().find("values the study does not list"),
            std::string::npos);

  // Without the audit (no columns), no cells at all.
  EvalReportSpec totals = Spec(20, {});
  totals.columns.clear();
  EvalSums cell = Sums(20, {});
  cell.groups[{"sex", "F"}] = cell.EmptyGroup();
  EXPECT_FALSE(CheckEvalReport(cell, totals).ok());
  EXPECT_TRUE(CheckEvalReport(Sums(20, {}), totals).ok());
}

TEST(CheckEvalReport, MaxReportCellsCountsEveryCellAReportMayHave) {
  // sex: F, M, (other) + 32 unlisted = 35; age_band: 32.
  EXPECT_EQ(MaxReportCells({"sex", "age_band"}, {{"sex", {"F", "M"}}}),
            35 + 32 + 35 * 32);
  EXPECT_EQ(MaxReportCells({}, {}), 0);
}

TEST(EvalSumsValidate, RefusesCountsThatCouldOverflowASum) {
  EvalSums s = Sums(2, {});
  s.pos_hist[0] = kMaxReportCount + 1;
  s.n = s.pos_hist[0];
  s.confusion.tp = s.n;
  EXPECT_FALSE(s.Validate().ok());
  EvalSums t = Sums(2, {});
  t.confusion.tp = std::numeric_limits<int64_t>::max();
  t.confusion.fn = 1;
  EXPECT_FALSE(t.Validate().ok());
}

}  // namespace
}  // namespace attune
