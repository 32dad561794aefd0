#include "attune/common/wire.h"

#include <gtest/gtest.h>

#include "attune/common/tensor_codec.h"

namespace attune {
namespace {

TEST(WriteChunks, MetadataFirstAndReassembles) {
  std::string payload(kMaxChunkBytes * 2 + 12345, '\0');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i % 251);
  v1::UpdateMeta meta;
  meta.set_task_id("t");
  std::vector<v1::Chunk> chunks;
  ASSERT_TRUE(WriteChunks(payload, meta, [&](const v1::Chunk& c) {
    chunks.push_back(c);
    return true;
  }));
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_TRUE(chunks[0].has_meta());
  EXPECT_FALSE(chunks[1].has_meta());
  EXPECT_TRUE(chunks[2].last());
  EXPECT_EQ(chunks[0].meta().task_id(), "t");
  ChunkAssembler a(chunks[0].meta().total_bytes(), chunks[0].meta().total_sha256(), 1ull << 30);
  for (const auto& c : chunks) ASSERT_TRUE(a.Add(c.seq(), c.data(), c.sha256()).ok());
  auto back = a.Finish();
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, payload);
  // The whole digest is the payload's; the chunks carry none of their own.
  EXPECT_EQ(chunks[0].meta().total_sha256(), Sha256(payload));
  for (const auto& c : chunks) EXPECT_TRUE(c.sha256().empty()) << c.seq();
  // A digest the caller knows is announced as given, not computed again.
  std::vector<v1::Chunk> again;
  const std::string known(32, 'k');
  ASSERT_TRUE(WriteChunks(
      payload, meta,
      [&](const v1::Chunk& c) {
        again.push_back(c);
        return true;
      },
      known));
  EXPECT_EQ(again[0].meta().total_sha256(), known);
  // A writer that fails stops the stream.
  int calls = 0;
  EXPECT_FALSE(WriteChunks(payload, meta, [&](const v1::Chunk&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);
}

TEST(WriteChunks, AModelStreamsAsItsEncodingWould) {
  FlatModel m{TensorSchema{{{"w", {int64_t{kMaxChunkBytes / 2}}, "f32"}}}, {}};
  for (size_t i = 0; i < kMaxChunkBytes / 2; ++i) m.values.push_back(static_cast<float>(i % 977));
  v1::UpdateMeta meta;
  meta.set_task_id("t");
  std::vector<v1::Chunk> streamed, encoded;
  auto into = [](std::vector<v1::Chunk>* out) {
    return [out](const v1::Chunk& c) {
      out->push_back(c);
      return true;
    };
  };
  ASSERT_TRUE(WriteModelChunks(m, meta, into(&streamed)));
  ASSERT_TRUE(WriteChunks(EncodeModel(m), meta, into(&encoded)));
  ASSERT_EQ(streamed.size(), 3u);
  ASSERT_EQ(streamed.size(), encoded.size());
  for (size_t i = 0; i < streamed.size(); ++i) {
    EXPECT_EQ(streamed[i].SerializeAsString(), encoded[i].SerializeAsString()) << "chunk " << i;
  }
  int calls = 0;
  EXPECT_FALSE(WriteModelChunks(m, meta, [&](const v1::Chunk&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);
}

TEST(AuditReport, RoundTripsThroughProto) {
  EvalSums s = EvalSums::Make("val", 2, {"a", "b"}, {"f1", "f2"});
  const std::vector<CellKey> cells = {{"sex", "F"}};
  const double beta[] = {0.25, 0.75}, attention[] = {0.5, 0.5}, values[] = {-1.5, 2};
  s.AddPatient({true, 0.9, 0.1, beta, attention, values}, cells);
  s.AddPatient({false, 0.2, 0.2, beta, attention, values}, cells);
  s.AddPatient({false, 0.3, 0.3, beta, attention, values}, cells);
  v1::AuditReport r;
  ToProto(s, &r);
  auto back = FromProto(r);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n, 3);
  EXPECT_EQ(back->features, s.features);
  EXPECT_EQ(back->calibration_bins, 2);
  const GroupSums& g = back->groups.at({"sex", "F"});
  EXPECT_EQ(g.beta_sum, (std::vector<double>{0.75, 2.25}));
  EXPECT_EQ(g.pos_hist, (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(g.neg_hist, (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(g.calib_sum, (std::vector<double>{0.5, 0.9}));
  EXPECT_EQ(g.value_neg_sum, (std::vector<double>{4.5, 0}));
  EXPECT_EQ(g.value_pos_sum, (std::vector<double>{0, 6}));
  EXPECT_EQ(g.value_sq_sum, (std::vector<double>{6.75, 12}));
  EXPECT_DOUBLE_EQ(g.entropy_sum, 3.0);  // 1 bit each
  // The same group twice is refused.
  *r.add_groups() = r.groups(0);
  EXPECT_EQ(FromProto(r).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune
