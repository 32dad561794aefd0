#include "attune/common/tensor_codec.h"

#include <gtest/gtest.h>

#include <numeric>

namespace attune {
namespace {

FlatModel MakeModel(std::vector<std::vector<int64_t>> shapes) {
  FlatModel m;
  for (size_t i = 0; i < shapes.size(); ++i) {
    m.schema.tensors.push_back({"t" + std::to_string(i), shapes[i], "f32"});
  }
  m.values.resize(m.schema.numel());
  for (size_t i = 0; i < m.values.size(); ++i) m.values[i] = 0.5f * i - 3.25f;  // distinct
  return m;
}

class CodecRoundTrip : public ::testing::TestWithParam<std::vector<std::vector<int64_t>>> {};

TEST_P(CodecRoundTrip, DecodesWhatWasEncoded) {
  const FlatModel m = MakeModel(GetParam());
  auto back = DecodeModel(EncodeModel(m));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->schema, m.schema);
  EXPECT_EQ(back->values, m.values);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CodecRoundTrip,
                         ::testing::Values(std::vector<std::vector<int64_t>>{},
                                           std::vector<std::vector<int64_t>>{{0}},
                                           std::vector<std::vector<int64_t>>{{1}},
                                           std::vector<std::vector<int64_t>>{{3, 0}, {7}},
                                           std::vector<std::vector<int64_t>>{{13, 7}, {1}, {2, 3, 5}},
                                           std::vector<std::vector<int64_t>>{{1023, 3}}));

TEST(Codec, RefusesCorruptPayloads) {
  const std::string good = EncodeModel(MakeModel({{4, 4}}));
  EXPECT_EQ(DecodeModel("XXXX").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeModel(good.substr(0, good.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeModel(good + "x").status().code(), absl::StatusCode::kDataLoss);
  std::string bad_version = good;
  bad_version[4] = 9;
  EXPECT_EQ(DecodeModel(bad_version).status().code(), absl::StatusCode::kDataLoss);
}

// A header whose schema's shape product would wrap around (to 0 values:
// 2^40 · 2^24 = 2^64) is refused, not read as an empty model.
TEST(Codec, RefusesAShapeWhoseProductWouldOverflow) {
  auto header = [](const std::string& schema, uint64_t count) {
    std::string h = "ATNM";
    auto le = [&h](uint64_t v, int bytes) {
      for (int i = 0; i < bytes; ++i) h.push_back(static_cast<char>(v >> (8 * i)));
    };
    le(1, 4);  // version
    le(schema.size(), 4);
    h += schema;
    le(count, 8);
    return h;
  };
  const std::string wraps = R"([{"name":"w","shape":[1099511627776,16777216],"dtype":"f32"}])";
  auto m = DecodeModel(header(wraps, 0));
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  EXPECT_NE(m.status().message().find("more than"), std::string::npos) << m.status();
  // Two tensors of 2^40 values each: the total is over the bound too.
  const std::string two = R"([{"name":"a","shape":[1099511627776],"dtype":"f32"},)"
                          R"({"name":"b","shape":[1099511627776],"dtype":"f32"}])";
  EXPECT_EQ(DecodeModel(header(two, 0)).status().code(), absl::StatusCode::kDataLoss);
  // The same framing with a sane shape decodes.
  std::string ok = header(R"([{"name":"w","shape":[2,1],"dtype":"f32"}])", 2);
  ok.append(8, '\0');
  auto good = DecodeModel(ok);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->values.size(), 2u);
}

TEST(Chunks, SplitAndAssembleOddSizes) {
  for (size_t size : {size_t{0}, size_t{1}, size_t{999}, size_t{1000}, size_t{1001}, size_t{4097}}) {
    std::string payload(size, '\0');
    for (size_t i = 0; i < size; ++i) payload[i] = static_cast<char>(i * 31 + 7);
    const auto pieces = SplitChunks(payload, 1000);
    EXPECT_EQ(pieces.size(), size == 0 ? 1 : (size + 999) / 1000);
    ChunkAssembler a(payload.size(), Sha256(payload), 1 << 20);
    for (size_t i = 0; i < pieces.size(); ++i) {
      ASSERT_TRUE(a.Add(i, pieces[i], Sha256(pieces[i])).ok());
    }
    auto whole = a.Finish();
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(*whole, payload);
  }
}

// The streamed encoding is EncodeModel's bytes cut where SplitChunks cuts
// them: pieces inside the header, across it and the values, and within the
// values; the digest and size are those of the whole encoding.
TEST(Chunks, EncodedPiecesAreTheEncodingWithoutBuildingIt) {
  for (int64_t numel : {int64_t{0}, int64_t{1}, int64_t{250}, int64_t{1001}}) {
    FlatModel m{TensorSchema{{{"weight", {numel}, "f32"}, {"b", {0}, "f32"}}}, {}};
    for (int64_t i = 0; i < numel; ++i) m.values.push_back(0.25f * static_cast<float>(i) - 3);
    const std::string whole = EncodeModel(m);
    EXPECT_EQ(EncodedModelSize(m), whole.size());
    EXPECT_EQ(EncodedModelSha256(m), Sha256(whole));
    for (size_t max : {size_t{7}, size_t{64}, size_t{1000}, whole.size(), whole.size() + 5}) {
      std::vector<std::string> pieces;
      ASSERT_TRUE(ForEachEncodedPiece(m, max, [&](std::string_view p) {
                    pieces.emplace_back(p);
                    return absl::OkStatus();
                  }).ok());
      const auto expected = SplitChunks(whole, max);
      ASSERT_EQ(pieces.size(), expected.size()) << numel << " values, pieces of " << max;
      for (size_t i = 0; i < pieces.size(); ++i) EXPECT_EQ(pieces[i], expected[i]) << i;
    }
  }
  // A failing consumer stops the stream with its status.
  FlatModel m{TensorSchema{{{"w", {100}, "f32"}}}, std::vector<float>(100, 1.0f)};
  int calls = 0;
  const Status s = ForEachEncodedPiece(m, 16, [&](std::string_view) {
    return ++calls == 2 ? absl::CancelledError("enough") : absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 2);
}

TEST(Chunks, AssemblerRefusesBadStreams) {
  const std::string payload(2500, 'a');
  const auto pieces = SplitChunks(payload, 1000);
  {  // out of order
    ChunkAssembler a(payload.size(), Sha256(payload), 1 << 20);
    EXPECT_EQ(a.Add(1, pieces[1], Sha256(pieces[1])).code(), absl::StatusCode::kInvalidArgument);
  }
  {  // corrupt chunk
    ChunkAssembler a(payload.size(), Sha256(payload), 1 << 20);
    std::string bad(pieces[0]);
    bad[5] = 'b';
    EXPECT_EQ(a.Add(0, bad, Sha256(pieces[0])).code(), absl::StatusCode::kDataLoss);
  }
  {  // short
    ChunkAssembler a(payload.size(), Sha256(payload), 1 << 20);
    ASSERT_TRUE(a.Add(0, pieces[0], Sha256(pieces[0])).ok());
    EXPECT_EQ(a.Finish().status().code(), absl::StatusCode::kDataLoss);
  }
  {  // wrong whole digest
    ChunkAssembler a(payload.size(), Sha256("other"), 1 << 20);
    for (size_t i = 0; i < pieces.size(); ++i) ASSERT_TRUE(a.Add(i, pieces[i], Sha256(pieces[i])).ok());
    EXPECT_EQ(a.Finish().status().code(), absl::StatusCode::kDataLoss);
  }
  {  // announced size over the limit
    ChunkAssembler a(uint64_t{1} << 40, Sha256(payload), 1 << 20);
    EXPECT_EQ(a.Add(0, pieces[0], Sha256(pieces[0])).code(), absl::StatusCode::kInvalidArgument);
  }
}

// A chunk's own digest is optional; the whole digest decides. A corrupt
// chunk without one is caught at Finish, one with a wrong one at once.
TEST(Chunks, AChunkDigestIsCheckedWhenGivenAndTheWholeOneAlways) {
  const std::string payload(2500, 'a');
  const auto pieces = SplitChunks(payload, 1000);
  {
    ChunkAssembler a(payload.size(), Sha256(payload), 1 << 20);
    for (size_t i = 0; i < pieces.size(); ++i) ASSERT_TRUE(a.Add(i, pieces[i], "").ok());
    auto whole = a.Finish();
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(*whole, payload);
  }
  {
    ChunkVerifier v(payload.size(), Sha256(payload), 1 << 20);
    std::string bad(pieces[1]);
    bad[7] = 'b';
    ASSERT_TRUE(v.Add(0, pieces[0], "").ok());
    ASSERT_TRUE(v.Add(1, bad, "").ok());
    ASSERT_TRUE(v.Add(2, pieces[2], "").ok());
    const Status s = v.Finish();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(s.message().find("payload checksum mismatch"), std::string::npos) << s;
  }
  {
    ChunkVerifier v(payload.size(), Sha256(payload), 1 << 20);
    EXPECT_EQ(v.Add(0, pieces[0], "short").code(), absl::StatusCode::kDataLoss);
  }
}

TEST(Sha256, MatchesKnownVector) {
  // FIPS 180-2 test vector for "abc".
  const std::string d = Sha256("abc");
  const unsigned char want[4] = {0xba, 0x78, 0x16, 0xbf};
  ASSERT_EQ(d.size(), 32u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(static_cast<unsigned char>(d[i]), want[i]);
}

// Feeds `blob` to a ModelStreamParser in pieces of `piece` bytes and
// collects what it hands out.
Status ParseInPieces(std::string_view blob, size_t piece, std::vector<float>* out,
                     TensorSchema* schema) {
  ModelStreamParser p;
  for (size_t off = 0; off < blob.size(); off += piece) {
    ATTUNE_RETURN_IF_ERROR(p.Feed(blob.substr(off, piece), [&](uint64_t first, std::span<const float> v) {
      if (first != out->size()) return absl::InternalError("values out of order");
      out->insert(out->end(), v.begin(), v.end());
      return absl::OkStatus();
    }));
  }
  if (p.schema()) *schema = *p.schema();
  return p.Finish();
}

TEST(ModelStreamParser, GivesTheSameModelWhateverThePieces) {
  const FlatModel m = MakeModel({{3, 5}, {7}, {0}, {2, 2, 2}});
  const std::string blob = EncodeModel(m);
  for (size_t piece : {size_t{1}, size_t{3}, size_t{13}, size_t{64}, blob.size()}) {
    std::vector<float> values;
    TensorSchema schema;
    ASSERT_TRUE(ParseInPieces(blob, piece, &values, &schema).ok()) << "piece " << piece;
    EXPECT_EQ(values, m.values) << "piece " << piece;
    EXPECT_EQ(schema, m.schema);
  }
}

TEST(ModelStreamParser, RefusesTruncatedAndOverlongPayloads) {
  const std::string blob = EncodeModel(MakeModel({{4, 4}}));
  std::vector<float> values;
  TensorSchema schema;
  EXPECT_EQ(ParseInPieces(blob.substr(0, blob.size() - 2), 5, &values, &schema).code(),
            absl::StatusCode::kDataLoss);
  values.clear();
  EXPECT_EQ(ParseInPieces(blob + "more", 5, &values, &schema).code(),
            absl::StatusCode::kDataLoss);
  values.clear();
  EXPECT_EQ(ParseInPieces(blob.substr(0, 6), 5, &values, &schema).code(),
            absl::StatusCode::kDataLoss);
  values.clear();
  EXPECT_EQ(ParseInPieces("XXXX" + blob.substr(4), 5, &values, &schema).code(),
            absl::StatusCode::kDataLoss);
}

TEST(Codec, ViewsAlignedValuesInPlace) {
  for (int extra = 0; extra < 8; ++extra) {
    FlatModel m = MakeModel({{2, 3}});
    m.schema.tensors[0].name += std::string(extra, 'x');  // every schema length mod 8
    const std::string blob = EncodeModel(m);
    auto view = ViewModel(blob);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(std::vector<float>(view->values.begin(), view->values.end()), m.values);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(view->values.data()) % 8, 0u);
    ASSERT_TRUE(DecodeModel(blob).ok());
  }
  std::string zeros = EncodeZeroModel(MakeModel({{5}}).schema);
  std::span<float> v = MutableValues(zeros);
  ASSERT_EQ(v.size(), 5u);
  v[4] = 2.5f;
  EXPECT_EQ(DecodeModel(zeros)->values, (std::vector<float>{0, 0, 0, 0, 2.5f}));
}

TEST(Chunks, VerifierMatchesTheAssemblerWithoutKeepingBytes) {
  const std::string payload(3 * 1000 + 17, 'q');
  const auto pieces = SplitChunks(payload, 1000);
  ChunkVerifier v(payload.size(), Sha256(payload), 1 << 20);
  for (size_t i = 0; i < pieces.size(); ++i) ASSERT_TRUE(v.Add(i, pieces[i], Sha256(pieces[i])).ok());
  EXPECT_EQ(v.received(), payload.size());
  EXPECT_TRUE(v.Finish().ok());
  ChunkVerifier oversize(kMaxChunkBytes + 10, Sha256("x"), uint64_t{1} << 30);
  const std::string big(kMaxChunkBytes + 1, 'b');
  EXPECT_EQ(oversize.Add(0, big, Sha256(big)).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace attune
