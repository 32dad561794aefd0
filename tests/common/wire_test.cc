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
  // A writer that fails stops the stream.
  int calls = 0;
  EXPECT_FALSE(WriteChunks(payload, meta, [&](const v1::Chunk&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);
}

TEST(AuditReport, RoundTripsThroughProto) {
  EvalSums s;
  s.split = "val";
  s.n = 3;
  s.loss_sum = 1.5;
  s.pos_hist = {0, 1};
  s.neg_hist = {2, 0};
  s.confusion = {1, 0, 2, 0};
  s.modalities = {"a", "b"};
  s.groups[{"sex", "F"}] = GroupSums{3, {1.0, 2.0}, {1, 0, 2, 0}};
  v1::AuditReport r;
  ToProto(s, &r);
  auto back = FromProto(r);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->n, 3);
  EXPECT_EQ(back->groups.at({"sex", "F"}).beta_sum, (std::vector<double>{1.0, 2.0}));
  // The same group twice is refused.
  *r.add_groups() = r.groups(0);
  EXPECT_EQ(FromProto(r).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune
