// Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/):
// small valid inputs of each decoder, made by Attune's own encoders, so
// that fuzzing starts past the first checks. Run once after a change of a
// format, and commit what it writes:
//   build/fuzz/attune-fuzz-seeds fuzz/corpus
// (.npz and the importers' tables come from numpy and the public data:
// fuzz/corpus/README.md.)
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "attune/common/config.h"
#include "attune/common/eval_stats.h"
#include "attune/common/npy.h"
#include "attune/common/png.h"
#include "attune/common/secagg.h"
#include "attune/common/secure_update.h"
#include "attune/common/tensor_codec.h"
#include "attune/common/wire.h"
#include "attune/v1/federation.pb.h"

namespace fs = std::filesystem;
using namespace attune;

namespace {

fs::path root;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(root / target);
  std::ofstream(root / target / name, std::ios::binary) << bytes;
}

std::string With(uint8_t choice, const std::string& rest) {
  return std::string(1, static_cast<char>(choice)) + rest;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

EvalSums SomeSums(int bins, std::vector<std::string> features) {
  EvalSums s = EvalSums::Make("val", bins, ModalityNames(), features);
  const std::vector<std::string> columns = {"sex", "age_band"};
  std::vector<double> beta(ModalityNames().size(), 0.25), attention(features.size(), 0.5),
      values(features.size(), 1.0);
  for (int i = 0; i < 12; ++i) {
    PatientEval p;
    p.label = i % 3 == 0;
    p.probability = 0.1 + 0.07 * i;
    p.loss = 0.4;
    p.beta = beta;
    p.attention = attention;
    p.values = values;
    const std::vector<std::string> v = {i % 2 ? "F" : "M", i % 4 < 2 ? "60-69" : "70-79"};
    const auto cells = SubgroupCells(columns, v);
    s.AddPatient(p, cells);
  }
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  const std::vector<std::string> features = {"ehr_static/age", "genomics/IDH1"};

  // model_stream: cut in pieces of 1 and of 64 bytes.
  const FlatModel small{TensorSchema{{{"a", {3, 4}, "f32"}, {"b", {5}, "f32"}}},
                        std::vector<float>(17, 0.5f)};
  const FlatModel empty{TensorSchema{{{"z", {0}, "f32"}}}, {}};
  Write("model_stream", "small", With(0, EncodeModel(small)));
  Write("model_stream", "small-64", With(63, EncodeModel(small)));
  Write("model_stream", "empty", With(5, EncodeModel(empty)));

  // audit_report and wire_messages: a report of two cells and their pair.
  v1::AuditReport report;
  ToProto(SomeSums(4, features), &report);
  report.set_study_id("s");
  report.set_task_id("t");
  Write("audit_report", "report", With(1, report.SerializeAsString()));
  Write("wire_messages", "report", With(0, report.SerializeAsString()));
  v1::JoinRequest join;
  join.set_study_id("s");
  (*join.mutable_samples())["train"] = 100;
  for (const auto& f : features) join.add_audit_features(f);
  Write("wire_messages", "join", With(1, join.SerializeAsString()));
  v1::Chunk chunk;
  chunk.mutable_meta()->set_task_id("t");
  (*chunk.mutable_meta()->mutable_metrics())["train_loss"] = 0.5;
  chunk.set_data("abc");
  chunk.set_sha256(Sha256("abc"));
  chunk.set_last(true);
  Write("wire_messages", "chunk", With(2, chunk.SerializeAsString()));
  // chunk_pieces: that chunk in pieces of 7 bytes, and one of data only
  // written twice (the last one is the chunk's), in pieces of 1.
  Write("chunk_pieces", "chunk-7", With(6, With(0, With(1, chunk.SerializeAsString()))));
  v1::Chunk twice;
  twice.set_seq(3);
  twice.set_data("first");
  std::string twice_bytes = twice.SerializeAsString();
  twice.set_data("second, the one kept");
  twice.clear_seq();
  twice.set_last(true);
  twice_bytes += twice.SerializeAsString();
  Write("chunk_pieces", "data-twice-1", With(0, With(0, With(0, twice_bytes))));
  v1::HeartbeatRequest beat;
  beat.set_study_id("s");
  beat.set_stage("training");
  beat.set_epochs(3);
  Write("wire_messages", "heartbeat", With(4, beat.SerializeAsString()));
  v1::RoundTask task;
  task.set_task_id("t");
  *task.mutable_eval_layout() =
      ToProto(EvalLayout::Make({"val"}, 4, ModalityNames(), features, {{"sex", {"F", "M"}}}));
  Write("wire_messages", "task", With(5, task.SerializeAsString()));

  // eval_words: a site's words of the same sums.
  for (bool cells : {false, true}) {
    const EvalLayout layout = EvalLayout::Make(
        {"val"}, 4, ModalityNames(), {"ehr_static/age"},
        cells ? std::map<std::string, std::vector<std::string>>{{"sex", {"F", "M"}}}
              : std::map<std::string, std::vector<std::string>>{});
    EvalSums s = SomeSums(4, {"ehr_static/age"});
    if (!cells) s.groups.clear();
    auto words = EncodeEvalWords({s}, layout, 3);
    if (!words.ok()) {
      std::fprintf(stderr, "eval words: %s\n", std::string(words.status().message()).c_str());
      return 1;
    }
    words->front() &= ~1u;  // the harness keeps the layout's length for even first words
    std::string bytes(reinterpret_cast<const char*>(words->data()), words->size() * 4);
    // bins 4 = 2 * (1 + 1); cells; not noised.
    Write("eval_words", cells ? "cells" : "totals",
          std::string{1, static_cast<char>(cells ? 1 : 0), 0} + bytes);
  }

  // secagg_messages: a real advertisement, shares and unmask response.
  {
    secagg::Options o;
    o.context = "fuzz study round 1 update";
    o.sites = 3;
    o.threshold = 2;
    o.length = 8;
    auto sign = [](crypto::ByteView) -> StatusOr<crypto::Bytes> { return crypto::Bytes(64, 1); };
    auto client = secagg::Client::Make(o, 0, sign);
    if (!client.ok()) return 1;
    const std::string ad = secagg::ToProto(client->advertisement(), "").SerializeAsString();
    Write("secagg_messages", "advertisement", With(0, ad));
    Write("secagg_messages", "relayed", With(3, ad));
    v1::SecAggShares shares;
    secagg::SealedShares s{0, 1, crypto::Bytes(80, 3)};
    *shares.add_shares() = secagg::ToProto(s);
    Write("secagg_messages", "shares", With(1, shares.SerializeAsString()));
    Write("secagg_messages", "inbox", With(4, secagg::ToProto(s).SerializeAsString()));
    secagg::UnmaskResponse r;
    r.site = 0;
    r.self_mask_seeds.push_back({1, shamir::Share{2, crypto::SecretBytes(32, 5)}});
    Write("secagg_messages", "unmask", With(2, secagg::ToProto(r).SerializeAsString()));
    Write("secagg_messages", "request", std::string{5, 3, 1, 0, 1, 2, 2});
  }

  // study_config: the quickstart study, its model, and terms-like JSON.
  for (const char* f : {"quickstart.json", "tcga_glioma.json"}) {
    const std::string text = ReadAll(fs::path(ATTUNE_SOURCE_DIR) / "experiments/studies" / f);
    Write("study_config", f, With(0, text));
  }
  Write("study_config", "model", With(1, ModelConfig{}.ToJson()));
  Write("study_config", "terms",
        With(2, R"({"study_id":"s","version":1,"roster":["site-1","site-2"],"seed":7})"));

  // site_config: a site's own file.
  Write("site_config", "site.json",
        R"({"site_id":"site-1","study_id":"s","coordinator":"127.0.0.1:7000","tls_dir":".",)"
        R"("policy":{"min_cell":20,"epsilon":3.0,"exclude_audit_columns":["ethnicity"]}})");

  // npy and png: written by Attune's writers.
  const fs::path tmp = fs::temp_directory_path() / "attune-fuzz-seeds";
  fs::create_directories(tmp);
  NpyArray a;
  a.shape = {2, 3};
  a.data = {1, 2, 3, 4, 5, 6};
  if (!WriteNpy((tmp / "a.npy").string(), a).ok()) return 1;
  Write("npy", "f4", With(0, ReadAll(tmp / "a.npy")));
  RgbImage img;
  img.width = 3;
  img.height = 2;
  img.pixels.assign(18, 128);
  if (!WritePng((tmp / "a.png").string(), img).ok()) return 1;
  Write("png", "rgb", ReadAll(tmp / "a.png"));

  // csv: plain, quoted across lines, with a BOM and CRLF.
  Write("csv", "plain", With(0, "patient_id,split,label\np1,train,1\np2,val,0\n"));
  Write("csv", "quoted", With(0, "\xef\xbb\xbf" "a,b\r\n\"x, y\",\"multi\nline\"\r\n\"\"\"q\"\"\",2"));
  Write("csv", "tsv", With(1, "gene\tTP53\tIDH1\ns1\t0.5\t1.25\n"));
  fs::remove_all(tmp);
  std::printf("seeds written under %s\n", root.c_str());
  return 0;
}
