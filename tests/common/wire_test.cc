#include "attune/common/wire.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/tls.h"

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

// A model's frames (what a site uploads) are its chunks byte for byte; all
// but the first's data lie in the model's values (the first, header and
// first values together, is transient), and as a gRPC message a frame
// holds its owner until the message is gone.
TEST(WriteModelFrames, AreTheModelsChunksWithTheDataInPlace) {
  auto m = std::make_shared<FlatModel>();
  const size_t n = kMaxChunkBytes / 2 + 3;  // two chunks and a bit
  m->schema = TensorSchema{{{"w", {static_cast<int64_t>(n)}, "f32"}}};
  for (size_t i = 0; i < n; ++i) m->values.push_back(static_cast<float>(i % 977) - 3.5f);
  v1::UpdateMeta meta;
  meta.set_task_id("t");
  std::vector<std::string> chunks, frames;
  ASSERT_TRUE(WriteModelChunks(*m, meta, [&](const v1::Chunk& c) {
    chunks.push_back(c.SerializeAsString());
    return true;
  }));
  const char* values = reinterpret_cast<const char*>(m->values.data());
  const char* values_end = values + m->values.size() * sizeof(float);
  std::vector<bool> transient;
  std::vector<std::string> buffered;
  const std::shared_ptr<const void> owner = m;
  ASSERT_TRUE(WriteModelFrames(*m, meta, [&](const ChunkFrame& f) {
    frames.push_back(f.head + std::string(f.data) + std::string(f.tail));
    transient.push_back(f.transient);
    if (!f.transient) {
      EXPECT_GE(f.data.data(), values);
      EXPECT_LE(f.data.data() + f.data.size(), values_end);
    }
    grpc::ByteBuffer b = ChunkFrameBuffer(f, owner);
    if (!f.transient) EXPECT_GT(owner.use_count(), 2);  // the message holds the model
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(b.Dump(&slices).ok());
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    buffered.push_back(bytes);
    return true;
  }));
  EXPECT_EQ(owner.use_count(), 2);  // `m` and `owner`: every message let go
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(frames, chunks);
  EXPECT_EQ(buffered, chunks);
  EXPECT_EQ(transient, (std::vector<bool>{true, false, false}));
  int calls = 0;
  EXPECT_FALSE(WriteModelFrames(*m, meta, [&](const ChunkFrame&) { return ++calls < 2; }));
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

// The frames a server sends a payload in are, byte for byte, the chunks
// WriteChunks makes: the first with the metadata, the last marked, any
// size (empty, one byte, exactly a chunk, a chunk and a bit).
TEST(WriteChunkFrames, AreTheChunksByteForByte) {
  for (size_t size : {size_t{0}, size_t{1}, kMaxChunkBytes, kMaxChunkBytes * 2 + 7}) {
    std::string payload(size, '\0');
    for (size_t i = 0; i < size; ++i) payload[i] = static_cast<char>((i * 7) % 253);
    v1::UpdateMeta meta;
    meta.set_study_id("s");
    meta.set_round(4);
    const std::string digest = Sha256(payload);
    std::vector<std::string> messages, frames;
    ASSERT_TRUE(WriteChunks(payload, meta, [&](const v1::Chunk& c) {
      messages.push_back(c.SerializeAsString());
      return true;
    }));
    std::string data;
    ASSERT_TRUE(WriteChunkFrames(payload, meta, digest, [&](const ChunkFrame& f) {
      frames.push_back(f.head + std::string(f.data) + std::string(f.tail));
      data.append(f.data);
      return true;
    }));
    EXPECT_EQ(frames, messages) << size;
    EXPECT_EQ(data, payload) << size;
    v1::Chunk first;
    ASSERT_FALSE(frames.empty());
    ASSERT_TRUE(first.ParseFromString(frames[0]));
    EXPECT_EQ(first.meta().total_sha256(), digest);
    EXPECT_EQ(first.meta().total_bytes(), size);
  }
  // A writer that stops is not written to again.
  int calls = 0;
  EXPECT_FALSE(WriteChunkFrames(std::string(kMaxChunkBytes * 3, 'x'), {}, "",
                                [&](const ChunkFrame&) { return ++calls < 2; }));
  EXPECT_EQ(calls, 2);
}

// A task in domain terms reaches the wire field by field; the site's own
// decoders (LayoutFromProto, secagg::FromProto) read back what was meant.
TEST(TaskToProto, EveryFieldOfAPlainAndASecureTask) {
  Task plain;
  plain.kind = Task::Kind::kEvaluate;
  plain.round = 3;
  plain.model_version = 3;
  plain.splits = {"val", "test"};
  plain.audit = true;
  plain.task_id = "n/r3/a2/evaluate/site-1";
  TrainSettings train{2, 32, 0.05, 7, 0.01};
  v1::RoundTask m = ToProto(plain, "study-x", train, "signed terms");
  EXPECT_EQ(m.kind(), v1::RoundTask::EVALUATE);
  EXPECT_EQ(m.study_id(), "study-x");
  EXPECT_EQ(m.round(), 3);
  EXPECT_EQ(m.model_version(), 3);
  EXPECT_EQ(std::vector<std::string>(m.splits().begin(), m.splits().end()),
            (std::vector<std::string>{"val", "test"}));
  EXPECT_TRUE(m.audit());
  EXPECT_EQ(m.task_id(), plain.task_id);
  EXPECT_EQ(m.hyper().local_epochs(), 2);
  EXPECT_EQ(m.hyper().batch_size(), 32);
  EXPECT_FLOAT_EQ(m.hyper().learning_rate(), 0.05f);
  EXPECT_EQ(m.hyper().seed(), 7u);
  EXPECT_FLOAT_EQ(m.hyper().proximal_mu(), 0.01f);
  EXPECT_EQ(m.terms(), "signed terms");
  EXPECT_FALSE(m.has_secagg());
  EXPECT_FALSE(m.has_dp());
  EXPECT_FALSE(m.has_eval_layout());

  auto parts = std::make_shared<SecureTaskParts>();
  parts->setup = SecAggTerms{"ctx", 1, {"a", "b", "c"}, 2, 0, 11, 4.0, 0.25};
  parts->dp = DpTerms{1.5, 0.75};
  // The layout's splits travel as the task's own (the driver makes both
  // from the phase's splits).
  parts->eval_layout =
      EvalLayout::Make(plain.splits, 4, {"ehr"}, {"f1"}, {{"sex", {"F", "M"}}});
  secagg::Advertisement ad;
  ad.site = 2;
  ad.cipher_public_key = crypto::Bytes(32, 1);
  ad.mask_public_key = crypto::Bytes(32, 2);
  ad.seed_commitment = crypto::Bytes(32, 3);
  ad.signature = crypto::Bytes(64, 4);
  parts->advertisements.emplace_back(ad, "PEM");
  parts->shares.push_back({0, 1, crypto::Bytes(5, 9)});
  parts->survivors = {0, 2};
  parts->dropped = {1};
  parts->confirmations = {{0, "sig0"}, {2, "sig2"}};
  Task secure = plain;
  secure.kind = Task::Kind::kSecAggUnmask;
  secure.secure = parts;
  m = ToProto(secure, "study-x", train, "signed terms");
  EXPECT_EQ(m.kind(), v1::RoundTask::SECAGG_UNMASK);
  EXPECT_EQ(m.secagg().context(), "ctx");
  EXPECT_EQ(m.secagg().index(), 1);
  EXPECT_EQ(m.secagg().sites_size(), 3);
  EXPECT_EQ(m.secagg().sites(2), "c");
  EXPECT_EQ(m.secagg().threshold(), 2);
  EXPECT_EQ(m.secagg().degree(), 0);
  EXPECT_EQ(m.secagg().length(), 11);
  EXPECT_DOUBLE_EQ(m.secagg().value_clip(), 4.0);
  EXPECT_DOUBLE_EQ(m.secagg().weight(), 0.25);
  EXPECT_DOUBLE_EQ(m.dp().clip_norm(), 1.5);
  EXPECT_DOUBLE_EQ(m.dp().noise_stddev(), 0.75);
  const EvalLayout back = LayoutFromProto(m);
  EXPECT_EQ(back.splits, parts->eval_layout->splits);
  EXPECT_EQ(back.bins, 4);
  EXPECT_EQ(back.features, parts->eval_layout->features);
  EXPECT_EQ(back.cells, parts->eval_layout->cells);
  EXPECT_EQ(back.Words(), parts->eval_layout->Words());
  ASSERT_EQ(m.advertisements_size(), 1);
  EXPECT_EQ(m.advertisements(0).certificate_pem(), "PEM");
  const secagg::Advertisement ad_back = secagg::FromProto(m.advertisements(0));
  EXPECT_EQ(ad_back.site, 2);
  EXPECT_EQ(ad_back.signature, ad.signature);
  ASSERT_EQ(m.shares_size(), 1);
  EXPECT_EQ(m.shares(0).to(), 1);
  EXPECT_EQ(m.shares(0).sealed().size(), 5u);
  EXPECT_EQ(std::vector<int>(m.survivors().begin(), m.survivors().end()), (std::vector<int>{0, 2}));
  EXPECT_EQ(std::vector<int>(m.dropped().begin(), m.dropped().end()), (std::vector<int>{1}));
  ASSERT_EQ(m.confirmations_size(), 2);
  EXPECT_EQ(m.confirmations(1).site(), 2);
  EXPECT_EQ(m.confirmations(1).signature(), "sig2");
}

// A chunk read where it lies: the data as views into the message's pieces
// (no copy), everything else as protobuf parses it; refused where protobuf
// or the bounds refuse the joined bytes.
TEST(ReadChunkPieces, GivesTheDataInPlaceAndTheRestAsProtobufWould) {
  v1::Chunk chunk;
  chunk.mutable_meta()->set_task_id("r1/a1/train/site-a");
  chunk.mutable_meta()->set_total_bytes(5000);
  chunk.set_seq(0);
  chunk.set_data(std::string(5000, 'v'));
  chunk.set_last(true);
  const std::string bytes = chunk.SerializeAsString();
  for (size_t cut : {size_t{1}, size_t{7}, size_t{1000}, bytes.size()}) {
    std::vector<std::string_view> pieces;
    for (size_t at = 0; at < bytes.size(); at += cut) {
      pieces.push_back(std::string_view(bytes).substr(at, cut));
    }
    ChunkPieces got;
    ASSERT_TRUE(ReadChunkPieces(pieces, WireBounds{}, &got).ok()) << cut;
    std::string data;
    for (std::string_view p : got.data) {
      // Each view lies inside the message: nothing was copied.
      EXPECT_GE(p.data(), bytes.data());
      EXPECT_LE(p.data() + p.size(), bytes.data() + bytes.size());
      data.append(p);
    }
    EXPECT_EQ(data, chunk.data());
    EXPECT_EQ(got.data_size(), 5000u);
    EXPECT_TRUE(got.rest.data().empty());
    EXPECT_EQ(got.rest.meta().task_id(), "r1/a1/train/site-a");
    EXPECT_TRUE(got.rest.last());
  }
  // Data written twice: the last is the chunk's (protobuf's rule).
  v1::Chunk again;
  again.set_data("second");
  const std::string twice = bytes + again.SerializeAsString();
  const std::string_view one[] = {twice};
  ChunkPieces got;
  ASSERT_TRUE(ReadChunkPieces(one, WireBounds{}, &got).ok());
  ASSERT_EQ(got.data.size(), 1u);
  EXPECT_EQ(got.data[0], "second");
  EXPECT_EQ(got.rest.meta().total_bytes(), 5000u);
  // Cut short, an unknown field, a length past the end: refused.
  const std::string_view shortened[] = {std::string_view(bytes).substr(0, bytes.size() - 3)};
  EXPECT_FALSE(ReadChunkPieces(shortened, WireBounds{}, &got).ok());
  const std::string unknown = bytes + std::string("\x38\x01", 2);  // field 7
  const std::string_view with_unknown[] = {unknown};
  EXPECT_FALSE(ReadChunkPieces(with_unknown, WireBounds{}, &got).ok());
  const std::string past = std::string("\x1a\x10", 2) + "abc";
  const std::string_view past_end[] = {past};
  EXPECT_FALSE(ReadChunkPieces(past_end, WireBounds{}, &got).ok());
}

}  // namespace
}  // namespace attune
