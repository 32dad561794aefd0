// End-to-end tests with real processes: the coordinator and workers talk
// gRPC over mutual TLS on 127.0.0.1 with ephemeral ports, state lives in
// RocksDB in temporary directories, and faults are real (SIGKILL).
#include <map>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include "attune/common/audit.h"
#include "attune/common/eval_stats.h"
#include "nlohmann/json.hpp"
#include "support/process.h"
#include "support/temp_dir.h"

namespace attune::testing {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr char kStudy[] = "itest";
// The modalities β is reported for (attune explain's and audit.json's keys).
const std::vector<std::string> kModalitySlots = {"ehr_static", "ehr_events", "imaging",
                                                 "genomics"};

json ReadJson(const std::string& path) {
  return json::parse(ReadText(path), nullptr, /*allow_exceptions=*/false);
}

// audit.json's cell column=value (common/audit.h), or null.
json AuditCell(const json& audit, const std::string& column, const std::string& value) {
  for (const auto& c : audit["columns"]) {
    if (c["column"] != column) continue;
    for (const auto& cell : c["cells"]) {
      if (cell["value"] == value) return cell;
    }
  }
  return nullptr;
}

class StudyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    Process prov({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "pki", "--study-id",
                  kStudy, "--sites", "site-1,site-2,site-3,site-4,site-x"},
                 dir_ / "provision.log");
    ASSERT_EQ(prov.Wait(seconds(60)), 0) << prov.Log();
    Process syn({ATTUNE_TOOL_BIN, "synth", "--out", dir_ / "data", "--sites", "4", "--patients",
                 "200", "--seed", "11"},
                dir_ / "synth.log");
    ASSERT_EQ(syn.Wait(seconds(60)), 0) << syn.Log();
  }

  // The quickstart study with a test's changes, written to a file.
  std::string WriteStudy(int rounds, const json& changes = json::object()) {
    json study = json::parse(ReadText(ATTUNE_STUDY_JSON));
    study["study_id"] = kStudy;
    study["rounds"] = rounds;
    study["join_timeout_s"] = 60;
    study["round_deadline_s"] = 120;
    study.merge_patch(changes);
    const std::string path = dir_ / ("study-" + std::to_string(++studies_) + ".json");
    std::ofstream(path) << study.dump(2);
    return path;
  }

  // A coordinator on data directory `state` writing to `out` (both under
  // the test's directory): separate runs of a test use separate pairs.
  std::unique_ptr<Process> StartCoordinator(const std::string& study, const std::string& listen,
                                            const std::string& log,
                                            const std::string& state = "state",
                                            const std::string& out = "out",
                                            const std::vector<std::string>& extra = {}) {
    // The study's owner signs the study's terms (sites refuse unsigned ones).
    Process sign({ATTUNE_TOOL_BIN, "provision", "sign", "--dir", dir_ / "pki", "--study", study},
                 dir_ / "sign.log");
    EXPECT_EQ(sign.Wait(seconds(60)), 0) << sign.Log();
    std::filesystem::create_directories(dir_ / out);  // watched by WaitUntil
    std::filesystem::remove(dir_ / "port");
    std::vector<std::string> args{ATTUNE_COORDINATOR_BIN, "--study", study, "--listen", listen,
                                  "--data-dir", dir_ / state, "--tls-dir", dir_ / "pki/coordinator",
                                  "--out", dir_ / out, "--port-file", dir_ / "port"};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(args, dir_ / log);
  }

  int WaitForPort() {
    int port = 0;
    WaitUntil(dir_.path(), [&] { return (port = std::atoi(ReadText(dir_ / "port").c_str())) > 0; },
              seconds(30));
    return port;
  }

  // Waits until `process`'s log (a file in the test's directory) says `what`.
  bool LogSays(const Process& process, const std::string& what, seconds timeout = seconds(180)) {
    return WaitUntil(
        dir_.path(), [&] { return process.Log().find(what) != std::string::npos; }, timeout);
  }

  std::unique_ptr<Process> StartWorker(const std::string& site, int port,
                                       const std::string& tls_dir = "",
                                       const std::string& data_site = "",
                                       const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args{
        ATTUNE_WORKER_BIN, "--coordinator", "127.0.0.1:" + std::to_string(port), "--study-id",
        kStudy, "--site-dir", dir_ / ("data/" + (data_site.empty() ? site : data_site)),
        "--tls-dir", tls_dir.empty() ? dir_ / ("pki/sites/" + site) : tls_dir,
        "--reconnect-timeout", "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<Process>(std::move(args), dir_ / ("worker-" + site + ".log"));
  }

  // A worker configured by its provisioned site.json; only the coordinator's
  // ephemeral port is given on the command line (it overrides site.json's).
  std::unique_ptr<Process> StartConfiguredWorker(const std::string& site, int port) {
    return std::make_unique<Process>(
        std::vector<std::string>{ATTUNE_WORKER_BIN, "--config",
                                 dir_ / ("pki/sites/" + site + "/site.json"), "--coordinator",
                                 "127.0.0.1:" + std::to_string(port), "--site-dir",
                                 dir_ / ("data/" + site), "--reconnect-timeout", "60"},
        dir_ / ("worker-" + site + ".log"));
  }

  // Runs `study` to its end with the given sites' workers; the processes
  // are handed back (for their logs) when asked for.
  void RunToTheEnd(const std::string& study, const std::string& name, const std::string& state,
                   const std::string& out,
                   const std::vector<std::string>& sites = {"site-1", "site-2", "site-3"},
                   std::unique_ptr<Process>* coordinator = nullptr,
                   std::vector<std::unique_ptr<Process>>* site_workers = nullptr) {
    auto coord = StartCoordinator(study, "127.0.0.1:0", name + ".log", state, out);
    const int port = WaitForPort();
    ASSERT_GT(port, 0) << coord->Log();
    std::vector<std::unique_ptr<Process>> workers;
    for (const auto& s : sites) workers.push_back(StartWorker(s, port));
    ASSERT_EQ(coord->Wait(seconds(300)), 0) << coord->Log();
    for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
    if (coordinator) *coordinator = std::move(coord);
    if (site_workers) *site_workers = std::move(workers);
  }

  // Workers of `sites` on `study`; the last site is SIGKILLed while it
  // trains round 2 and restarted on the same data. Returns the summary once
  // all finished (and the coordinator's log).
  json RunWithLastSiteKilledInRound2(
      const std::string& study, std::string* coordinator_log,
      const std::vector<std::string>& sites = {"site-1", "site-2", "site-3", "site-4"}) {
    auto coord = StartCoordinator(study, "127.0.0.1:0", "coordinator.log");
    const int port = WaitForPort();
    EXPECT_GT(port, 0) << coord->Log();
    std::vector<std::unique_ptr<Process>> workers;
    for (const auto& s : sites) workers.push_back(StartWorker(s, port));
    const std::string& last = sites.back();
    EXPECT_TRUE(LogSays(*workers.back(), "round 2: training")) << workers.back()->Log();
    workers.back()->Kill(SIGKILL);
    EXPECT_TRUE(workers.back()->Wait(seconds(10)).has_value());
    // The same site, restarted on the same data, comes back.
    auto restarted = std::make_unique<Process>(
        std::vector<std::string>{ATTUNE_WORKER_BIN, "--coordinator",
                                 "127.0.0.1:" + std::to_string(port), "--study-id", kStudy,
                                 "--site-dir", dir_ / ("data/" + last), "--tls-dir",
                                 dir_ / ("pki/sites/" + last)},
        dir_ / ("worker-" + last + "-restarted.log"));
    EXPECT_EQ(coord->Wait(seconds(300)), 0) << coord->Log();
    for (size_t i = 0; i + 1 < workers.size(); ++i) {
      EXPECT_EQ(workers[i]->Wait(seconds(30)), 0) << workers[i]->Log();
    }
    EXPECT_EQ(restarted->Wait(seconds(30)), 0) << restarted->Log();
    *coordinator_log = coord->Log();
    return ReadJson(dir_ / "out/summary.json");
  }

  // The oracle of a secure evaluation: every patient of `split` at each of
  // `sites`, scored in the clear by `attune explain` on `model`, with the
  // patient's sex from the site's cohort.csv.
  struct Scored {
    bool label = false;
    double probability = 0;
    std::vector<double> beta;  // per modality slot
    std::string sex;
    std::string site;
    std::map<std::string, std::string> columns;  // cohort.csv's subgroup columns
  };
  std::vector<Scored> ScoreInTheClear(const std::string& study, const std::string& model,
                                      const std::vector<std::string>& sites,
                                      const std::string& split) {
    std::vector<Scored> out;
    for (const auto& site : sites) {
      std::map<std::string, std::vector<std::string>> row;  // patient_id -> cohort.csv fields
      std::istringstream cohort(ReadText(dir_ / ("data/" + site + "/cohort.csv")));
      std::string line;
      std::getline(cohort, line);
      EXPECT_EQ(line, "patient_id,split,label,sex,age_band,ethnicity");
      while (std::getline(cohort, line)) {
        std::vector<std::string> f;
        std::istringstream fields(line);
        for (std::string v; std::getline(fields, v, ',');) f.push_back(v);
        if (f.size() >= 6) row[f[0]] = f;
      }
      const std::string dir = dir_ / ("explain-" + split + "-" + site);
      Process explain({ATTUNE_TOOL_BIN, "explain", "--study", study, "--model", model,
                       "--site-dir", dir_ / ("data/" + site), "--split", split, "--count",
                       "100000", "--out", dir},
                      dir_ / ("explain-" + split + "-" + site + ".log"));
      EXPECT_EQ(explain.Wait(seconds(120)), 0) << explain.Log();
      for (const auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().extension() != ".json") continue;
        const json j = ReadJson(e.path());
        Scored p;
        p.label = j["label"].get<int>() != 0;
        p.probability = j["probability"].get<double>();
        for (const auto& m : kModalitySlots) {
          p.beta.push_back(j["modalities"][m]["beta"].get<double>());
        }
        const auto& f = row.at(j["patient_id"].get<std::string>());
        p.sex = f[3];
        p.site = site;
        p.columns = {{"sex", f[3]}, {"age_band", f[4]}, {"ethnicity", f[5]}};
        out.push_back(std::move(p));
      }
    }
    return out;
  }

  // The exact AUC of scored patients (Mann-Whitney, ties counting 1/2).
  static double ExactAuc(const std::vector<Scored>& scored) {
    double pairs = 0, concordant = 0;
    for (const auto& a : scored) {
      if (!a.label) continue;
      for (const auto& b : scored) {
        if (b.label) continue;
        pairs += 1;
        concordant += a.probability > b.probability ? 1 : a.probability == b.probability ? 0.5 : 0;
      }
    }
    return concordant / pairs;
  }

  TempDir dir_;
  int studies_ = 0;
};

TEST_F(StudyTest, TwoRoundsOverMutualTlsLowerValidationLoss) {
  auto coord = StartCoordinator(WriteStudy(2), "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  // site-3's own policy, tighter than the study's: a larger k, and the
  // ethnicity column never reported.
  const auto site3 = dir_ / "pki/sites/site-3/site.json";
  json config = ReadJson(site3);
  config["policy"] = {{"min_cell", 12}, {"exclude_audit_columns", {"ethnicity"}}};
  std::ofstream(site3) << config.dump(2);
  std::vector<std::unique_ptr<Process>> workers;
  for (const char* s : {"site-1", "site-2", "site-3"}) {
    workers.push_back(StartConfiguredWorker(s, port));
  }
  ASSERT_EQ(coord->Wait(seconds(240)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();

  json summary = ReadJson(dir_ / "out/summary.json");
  ASSERT_FALSE(summary.is_discarded());
  EXPECT_TRUE(summary["finished"].get<bool>());
  EXPECT_EQ(summary["rounds"], 2);
  ASSERT_EQ(summary["val_loss"].size(), 2u);
  const double initial = summary["initial"]["val_loss"].get<double>();
  const double last = summary["val_loss"][1].get<double>();
  EXPECT_LT(last, initial) << summary.dump(2);
  EXPECT_EQ(summary["history"][2]["sites_reported"], 3);
  EXPECT_TRUE(summary["final"]["auc"].is_number());

  json audit = ReadJson(dir_ / "out/audit.json");
  ASSERT_FALSE(audit.is_discarded());
  std::set<std::string> columns;
  for (const auto& c : audit["columns"]) columns.insert(c["column"].get<std::string>());
  for (const char* column : {"sex", "age_band", "ethnicity", "age_band & sex"}) {
    EXPECT_TRUE(columns.count(column)) << column << ": " << audit.dump(1);
  }
  EXPECT_TRUE(AuditCell(audit, "sex", "F")["mean_beta"].contains("imaging")) << audit.dump(1);
  // Every ethnicity cell published is the other sites' alone.
  EXPECT_NE(workers[2]->Log().find("this site's policy: min_cell 12, epsilon the study's, audit "
                                   "columns left out: ethnicity"),
            std::string::npos)
      << workers[2]->Log();
  int ethnicity_cells = 0;
  for (const auto& c : audit["columns"]) {
    if (c["column"].get<std::string>().find("ethnicity") == std::string::npos) continue;
    for (const auto& cell : c["cells"]) {
      if (cell.value("suppressed", false)) continue;
      ++ethnicity_cells;
      EXPECT_GE(cell.value("sites_suppressed", 0), 1) << c["column"] << ": " << cell.dump();
    }
  }
  EXPECT_GT(ethnicity_cells, 0);
}

#ifdef ATTUNE_MPIEXEC
// A site of two ranks under mpirun (worker/site_ranks.h): rank 0 is the
// site's client, rank 1 loads the same site data and trains each round with
// it; the other sites are single processes.
TEST_F(StudyTest, ASiteOfTwoRanksUnderMpirunTrainsEveryRoundWithTheOthers) {
  auto coord = StartCoordinator(WriteStudy(2), "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  std::vector<std::unique_ptr<Process>> workers;
  workers.push_back(std::make_unique<Process>(
      std::vector<std::string>{ATTUNE_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "--mca",
                               "btl", "self,vader", "-np", "2", ATTUNE_WORKER_BIN, "--config",
                               dir_ / "pki/sites/site-1/site.json", "--coordinator",
                               "127.0.0.1:" + std::to_string(port), "--site-dir",
                               dir_ / "data/site-1", "--reconnect-timeout", "60"},
      dir_ / "worker-site-1.log"));
  for (const char* s : {"site-2", "site-3"}) workers.push_back(StartConfiguredWorker(s, port));
  ASSERT_EQ(coord->Wait(seconds(300)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(60)), 0) << w->Log();

  EXPECT_NE(coord->Log().find("site site-1 joined ("), std::string::npos) << coord->Log();
  EXPECT_NE(coord->Log().find("training samples, 2 ranks,"), std::string::npos) << coord->Log();
  const std::string site1 = workers[0]->Log();
  EXPECT_NE(site1.find("rank 1: site data loaded"), std::string::npos) << site1;
  // Rank 1 trained both rounds with rank 0.
  size_t trained = 0;
  for (size_t at = 0; (at = site1.find("rank 1: trained with rank 0", at)) != std::string::npos;
       ++at) {
    ++trained;
  }
  EXPECT_EQ(trained, 2u) << site1;

  json summary = ReadJson(dir_ / "out/summary.json");
  ASSERT_FALSE(summary.is_discarded());
  EXPECT_TRUE(summary["finished"].get<bool>());
  EXPECT_EQ(summary["history"][2]["sites_reported"], 3) << summary.dump(2);
  EXPECT_LT(summary["val_loss"][1].get<double>(), summary["initial"]["val_loss"].get<double>())
      << summary.dump(2);
}
#endif

TEST_F(StudyTest, SiteNotOnTheRosterIsRefused) {
  auto coord = StartCoordinator(WriteStudy(1), "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  // site-x holds a valid certificate of this study's CA, but is not on the roster.
  auto rogue = StartWorker("site-x", port, "", "site-1");
  auto code = rogue->Wait(seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(rogue->Log().find("not on the roster"), std::string::npos) << rogue->Log();
  EXPECT_TRUE(WaitUntil(
      dir_.path(), [&] { return coord->Log().find("refused Join") != std::string::npos; },
      seconds(10)))
      << coord->Log();
}

TEST_F(StudyTest, CertificateFromAnotherStudyIsRefused) {
  // Another CA for a study of the same name: the worker's own terms pass,
  // the coordinator's TLS refuses the certificate.
  Process other({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "other-pki", "--study-id",
                 kStudy, "--sites", "site-1"},
                dir_ / "other.log");
  ASSERT_EQ(other.Wait(seconds(60)), 0);
  auto coord = StartCoordinator(WriteStudy(1), "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  auto intruder = StartWorker("site-1", port, dir_ / "other-pki/sites/site-1");
  auto code = intruder->Wait(seconds(90));
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(intruder->Log().find("TLS handshake"), std::string::npos) << intruder->Log();
}

TEST_F(StudyTest, BadSiteDataEndsTheWorkerWithFileAndLine) {
  auto coord = StartCoordinator(WriteStudy(1), "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0);
  std::ofstream(dir_ / "data/site-2/ehr/static.csv", std::ios::app) << "s2-p0001,1,2,oops,4,5,6,7,8\n";
  auto w = StartWorker("site-2", port);
  auto code = w->Wait(seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(w->Log().find("static.csv:"), std::string::npos) << w->Log();
}

// With encryption at rest on (the key `attune provision init` wrote): the
// restarted coordinator needs that key, refuses another, and resumes with it.
TEST_F(StudyTest, CoordinatorKilledBetweenRoundsResumesAtTheNextRound) {
  const std::string study = WriteStudy(3);
  const std::vector<std::string> key = {"--at-rest-key", dir_ / "pki/coordinator/at_rest.key"};
  auto coord = StartCoordinator(study, "127.0.0.1:0", "coordinator-1.log", "state", "out", key);
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  std::vector<std::unique_ptr<Process>> workers;
  for (const char* s : {"site-1", "site-2", "site-3"}) workers.push_back(StartWorker(s, port));
  // Round 1 committed: summary.json says so.
  ASSERT_TRUE(WaitUntil(
      dir_ / "out",
      [&] {
        json s = ReadJson(dir_ / "out/summary.json");
        return !s.is_discarded() && s["rounds"].get<int>() >= 1;
      },
      seconds(180)))
      << coord->Log();
  coord->Kill(SIGKILL);
  ASSERT_TRUE(coord->Wait(seconds(10)).has_value());
  const int committed = ReadJson(dir_ / "out/summary.json")["rounds"].get<int>();
  ASSERT_LT(committed, 3) << "the study finished before the kill; nothing to resume";

  const std::string listen = "127.0.0.1:" + std::to_string(port);
  auto no_key = StartCoordinator(study, listen, "no-key.log");
  EXPECT_EQ(no_key->Wait(seconds(30)), 1);
  EXPECT_NE(no_key->Log().find("encrypted at rest: start the coordinator with its --at-rest-key"),
            std::string::npos)
      << no_key->Log();
  Process make_key({ATTUNE_TOOL_BIN, "provision", "init", "--out", dir_ / "other-pki",
                    "--study-id", kStudy, "--sites", "site-1"},
                   dir_ / "other-provision.log");
  ASSERT_EQ(make_key.Wait(seconds(60)), 0) << make_key.Log();
  auto wrong_key = StartCoordinator(study, listen, "wrong-key.log", "state", "out",
                                    {"--at-rest-key", dir_ / "other-pki/coordinator/at_rest.key"});
  EXPECT_EQ(wrong_key->Wait(seconds(30)), 1);
  EXPECT_NE(wrong_key->Log().find("the at-rest key does not open"), std::string::npos)
      << wrong_key->Log();

  auto again = StartCoordinator(study, listen, "coordinator-2.log", "state", "out", key);
  ASSERT_EQ(again->Wait(seconds(240)), 0) << again->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
  EXPECT_NE(again->Log().find("after committed round " + std::to_string(committed)),
            std::string::npos)
      << again->Log();
  json summary = ReadJson(dir_ / "out/summary.json");
  EXPECT_TRUE(summary["finished"].get<bool>());
  ASSERT_EQ(summary["history"].size(), 4u);  // rounds 0..3, each once
  for (int r = 0; r <= 3; ++r) EXPECT_EQ(summary["history"][r]["round"], r);
}

// NOTE: the crash-resume guarantee. With fixed seeds a study's final model
// does not depend on when, or how often, the coordinator was SIGKILLed:
// committed rounds are kept, an interrupted round starts afresh, workers
// train deterministically from (seed, round), and the strategy folds
// updates in site-name order.
TEST_F(StudyTest, CoordinatorKilledAtSeveralPointsGivesTheBitwiseSameFinalModel) {
  const std::string study = WriteStudy(4);
  // The reference: an uninterrupted run.
  RunToTheEnd(study, "reference", "state-ref", "out-ref");
  // The same study, killed mid-training, mid-evaluation and right after a commit.
  auto coord = StartCoordinator(study, "127.0.0.1:0", "run-1.log", "state-kill", "out-kill");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  const std::string listen = "127.0.0.1:" + std::to_string(port);
  std::vector<std::unique_ptr<Process>> workers;
  for (const char* s : {"site-1", "site-2", "site-3"}) workers.push_back(StartWorker(s, port));
  const char* kill_points[] = {"round 1: train from", "round 2: evaluate phase open",
                               "committed round 3"};
  int run = 1;
  for (const char* point : kill_points) {
    ASSERT_TRUE(LogSays(*coord, point)) << "never reached '" << point << "'\n" << coord->Log();
    coord->Kill(SIGKILL);
    ASSERT_TRUE(coord->Wait(seconds(10)).has_value());
    coord = StartCoordinator(study, listen, "run-" + std::to_string(++run) + ".log", "state-kill",
                             "out-kill");
  }
  ASSERT_EQ(coord->Wait(seconds(240)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();

  json summary = ReadJson(dir_ / "out-kill/summary.json");
  ASSERT_TRUE(summary["finished"].get<bool>()) << summary.dump(2);
  ASSERT_EQ(summary["history"].size(), 5u);  // rounds 0..4, each committed once
  for (int r = 0; r <= 4; ++r) EXPECT_EQ(summary["history"][r]["round"], r);
  const std::string reference = ReadText(dir_ / "out-ref/model.atnm");
  const std::string resumed = ReadText(dir_ / "out-kill/model.atnm");
  ASSERT_GT(reference.size(), 1000u);
  EXPECT_TRUE(reference == resumed) << "the final models differ";
  Process verify({ATTUNE_TOOL_BIN, "log", "verify", "--data-dir", dir_ / "state-kill"},
                 dir_ / "verify.log");
  EXPECT_EQ(verify.Wait(seconds(30)), 0) << verify.Log();
}

TEST_F(StudyTest, OneOfFourWorkersKilledMidTrainingTheRoundCompletesAndItRejoins) {
  std::string log;
  json summary = RunWithLastSiteKilledInRound2(
      WriteStudy(4, {{"roster", {"site-1", "site-2", "site-3", "site-4"}}, {"min_sites", 3},
                     {"heartbeat_timeout_s", 5}, {"train", {{"local_epochs", 3}}}}),
      &log);
  ASSERT_TRUE(summary["finished"].get<bool>()) << summary.dump(2);
  const json& round2 = summary["history"][2];
  EXPECT_EQ(round2["sites_reported"], 3) << round2.dump(2);
  for (const auto& s : round2["sites"]) EXPECT_NE(s, "site-4") << round2.dump(2);
  const json& last = summary["history"][4];
  EXPECT_EQ(last["sites_reported"], 4) << last.dump(2);
  EXPECT_NE(log.find("site site-4 is gone"), std::string::npos) << log;
}

// Secure aggregation and central DP on, 4 sites over mutual TLS, against
// the same study without them. The stated margin: final test AUC within
// 0.05. With 4 sites, client-level DP gives a weak guarantee at any noise
// that keeps the model useful (the noise is on a sum of 4 updates), so the
// noise multiplier here is small and epsilon large; the test checks the
// mechanism (clipping, noise, ledger), not a strong epsilon.
TEST_F(StudyTest, SecureAggregationWithCentralDpIsWithinTheMarginOfThePlainStudy) {
  const json four = {{"roster", {"site-1", "site-2", "site-3", "site-4"}}, {"min_sites", 3}};
  json secure = four;
  secure["secure_aggregation"] = true;
  secure["secagg"] = {{"neighbours", 2}};  // SecAgg+: each site masks with 2 of the 3 others
  secure["privacy"] = {{"mode", "central"}, {"clip_norm", 5.0}, {"noise_multiplier", 0.002},
                       {"epsilon", 1e9}, {"delta", 1e-5}};
  std::map<std::string, json> summaries;
  std::map<std::string, std::string> studies;
  for (const auto& [name, changes] : {std::pair{std::string("plain"), four},
                                      std::pair{std::string("secure"), secure}}) {
    std::unique_ptr<Process> coord;
    std::vector<std::unique_ptr<Process>> workers;
    studies[name] = WriteStudy(3, changes);
    RunToTheEnd(studies[name], name, "state-" + name, "out-" + name,
                {"site-1", "site-2", "site-3", "site-4"}, &coord, &workers);
    ASSERT_FALSE(HasFatalFailure());
    summaries[name] = ReadJson(dir_ / ("out-" + name + "/summary.json"));
    ASSERT_TRUE(summaries[name]["finished"].get<bool>()) << summaries[name].dump(2);
    if (name == "secure") {
      // Every update arrived masked, and the sum was unmasked from all 4.
      EXPECT_NE(coord->Log().find("masked input from site-4 accepted"), std::string::npos);
      EXPECT_EQ(coord->Log().find("train from site-"), std::string::npos) << coord->Log();
      EXPECT_NE(workers[0]->Log().find("clipped to 5"), std::string::npos) << workers[0]->Log();
    }
  }
  const json& s = summaries["secure"];
  const double plain_auc = summaries["plain"]["final"]["auc"].get<double>();
  const double secure_auc = s["final"]["auc"].get<double>();
  std::printf("final test AUC: plain %.4f, secure aggregation + central DP %.4f\n", plain_auc,
              secure_auc);
  EXPECT_NEAR(secure_auc, plain_auc, 0.05);
  EXPECT_GT(secure_auc, 0.7);
  // The ledger: one release per round, epsilon growing, audit releases counted.
  double last_epsilon = 0;
  for (int r = 1; r <= 3; ++r) {
    const json& rec = s["history"][r];
    EXPECT_EQ(rec["secure_aggregation"]["survivors"], 4) << rec.dump(2);
    EXPECT_EQ(rec["privacy"]["releases"], r) << rec.dump(2);
    EXPECT_GT(rec["privacy"]["epsilon"].get<double>(), last_epsilon);
    last_epsilon = rec["privacy"]["epsilon"].get<double>();
    // The loss is not noised, so a DP release leaves it out.
    EXPECT_TRUE(rec["train_loss"].is_null()) << rec.dump(2);
  }
  EXPECT_EQ(s["history"][3]["privacy"]["audit_releases"], 5);  // val in rounds 0-3, test in 3

  // The evaluations were securely aggregated too, over all four sites...
  for (int r = 0; r <= 3; ++r) {
    EXPECT_EQ(s["history"][r]["secure_aggregation"]["evaluation"]["survivors"], 4)
        << s["history"][r].dump(2);
  }
  // ... and their unmasked sums are what the sites' patients, scored in the
  // clear on the final model, add up to.
  const std::string& study = studies["secure"];
  const std::string model = dir_ / "out-secure/model.atnm";
  const std::vector<std::string> sites = {"site-1", "site-2", "site-3", "site-4"};
  const std::vector<Scored> test = ScoreInTheClear(study, model, sites, "test");
  int64_t correct = 0, positives = 0;
  for (const auto& a : test) {
    correct += (a.probability >= 0.5) == a.label;
    positives += a.label;
  }
  const double exact_auc = ExactAuc(test);
  const json& final = s["final"];
  ASSERT_EQ(final["n"].get<int64_t>(), static_cast<int64_t>(test.size())) << final.dump(2);
  const double n = static_cast<double>(test.size());
  EXPECT_NEAR(final["accuracy"].get<double>(), correct / n, 1.01 / n);  // one score at 0.5 at most
  EXPECT_NEAR(final["auc"].get<double>(), exact_auc, 0.005);   // 200-bin histograms
  std::printf("secure test sums: n %d (%lld positive), AUC %.4f vs %.4f in the clear\n",
              static_cast<int>(test.size()), static_cast<long long>(positives),
              final["auc"].get<double>(), exact_auc);
  // audit.json (the last round's validation split): per sex, the count and
  // the mean attention weight of each modality.
  const json audit = ReadJson(dir_ / "out-secure/audit.json");
  const std::vector<Scored> val = ScoreInTheClear(study, model, sites, "val");
  const auto& slots = kModalitySlots;
  // Each site first held back its own small cells (and those protecting
  // them): the oracle lays each site's patients out in the study's cells
  // and applies the same rule to that site's counts.
  const json study_json = ReadJson(study);
  std::map<std::string, std::vector<std::string>> values;
  for (const auto& [column, list] : study_json["audit"]["values"].items()) {
    values[column] = list.get<std::vector<std::string>>();
  }
  const int k = study_json["audit"]["min_cell"].get<int>();
  const EvalLayout layout = EvalLayout::Make({"val"}, 200, {}, {}, values);
  std::map<std::string, std::set<CellKey>> held;  // site -> cells it held back
  for (const auto& site : sites) {
    std::map<CellKey, int64_t> counts;
    for (const auto& cell : layout.cells) counts[cell] = 0;
    int64_t n = 0;
    for (const auto& p : val) {
      if (p.site != site) continue;
      ++n;
      std::map<std::string, std::string> v;
      for (const auto& [column, listed] : values) {
        const std::string& x = p.columns.at(column);
        v[column] = std::find(listed.begin(), listed.end(), x) != listed.end() ? x : "(other)";
      }
      for (const auto& cell : layout.cells) {
        const size_t join = cell.first.find(" & ");
        const bool in = join == std::string::npos
                            ? v[cell.first] == cell.second
                            : v[cell.first.substr(0, join)] + " & " +
                                      v[cell.first.substr(join + 3)] ==
                                  cell.second;
        counts[cell] += in ? 1 : 0;
      }
    }
    held[site] = SuppressedCells(counts, n, k);
  }
  int checked = 0;
  for (const char* sex : {"F", "M"}) {
    int64_t count = 0, holding = 0;
    std::vector<double> beta(4, 0.0);
    for (const auto& site : sites) holding += held[site].count({"sex", sex});
    for (const auto& p : val) {
      if (p.sex != sex || held[p.site].count({"sex", sex})) continue;
      ++count;
      for (int m = 0; m < 4; ++m) beta[m] += p.beta[m];
    }
    const json g = AuditCell(audit, "sex", sex);
    if (count == 0) {
      EXPECT_TRUE(g["suppressed"].get<bool>()) << audit.dump(2);
      continue;
    }
    ++checked;
    ASSERT_EQ(g["n"].get<int64_t>(), count) << audit.dump(2);
    EXPECT_EQ(g.value("sites_suppressed", 0), holding) << audit.dump(2);
    // The sites' audit features (named at Join) came through the secure
    // sums: an attention share per feature, adding up to 1.
    ASSERT_GT(audit["features"].size(), 10u);
    ASSERT_EQ(g["attention"].size(), audit["features"].size());
    double share = 0;
    for (const auto& a : g["attention"]) share += a.get<double>();
    EXPECT_NEAR(share, 1.0, 1e-9);
    for (int m = 0; m < 4; ++m) {
      EXPECT_NEAR(g["mean_beta"][slots[m]].get<double>(), beta[m] / count, 1e-4) << sex << slots[m];
    }
  }
  EXPECT_GT(checked, 0) << "no sex cell was published to check";
}

// A site that dies while training in a secure round advertised its keys
// but never shares them: the round goes on with the other three (t = 3),
// and the site, restarted, takes part again.
TEST_F(StudyTest, ASiteKilledDuringASecureRoundIsLeftOutAndRejoins) {
  std::string log;
  json summary = RunWithLastSiteKilledInRound2(
      WriteStudy(5, {{"roster", {"site-1", "site-2", "site-3", "site-4"}}, {"min_sites", 3},
                     {"heartbeat_timeout_s", 5}, {"secure_aggregation", true},
                     {"train", {{"local_epochs", 3}}}}),
      &log);
  ASSERT_TRUE(summary["finished"].get<bool>()) << summary.dump(2);
  const json& round2 = summary["history"][2];
  EXPECT_EQ(round2["secure_aggregation"]["survivors"], 3) << round2.dump(2);
  for (const auto& s : round2["sites"]) EXPECT_NE(s, "site-4") << round2.dump(2);
  // Restarted, it takes part again once it has rejoined (round 3 may open
  // before its process is up; no round waits for it).
  int rejoined = 0;
  for (int r = 3; r <= 5; ++r) {
    if (summary["history"][r]["secure_aggregation"]["survivors"] == 4) ++rejoined;
  }
  EXPECT_GE(rejoined, 2) << summary.dump(2) << "\n" << log;
  EXPECT_LT(summary["val_loss"][2].get<double>(), summary["initial"]["val_loss"].get<double>());
}

// A round that misses its quorum is tried again and completes: with every
// site needed (min_sites 3 of 3), site-3's worker is SIGKILLed while it
// trains round 2, so attempt 1 closes with 2 updates; the worker restarts,
// rejoins, and attempt 2 -- new task ids, nothing of attempt 1 carried
// over -- has all three. Real workers, plain and with secure aggregation.
class RetryStudyTest : public StudyTest, public ::testing::WithParamInterface<bool> {};

TEST_P(RetryStudyTest, ARoundThatMissesItsQuorumOnceCompletesOnItsNextAttempt) {
  const bool secure = GetParam();
  std::string log;
  json summary = RunWithLastSiteKilledInRound2(
      WriteStudy(3, {{"min_sites", 3}, {"heartbeat_timeout_s", 5}, {"round_deadline_s", 60},
                     {"secure_aggregation", secure}, {"train", {{"local_epochs", 3}}}}),
      &log, {"site-1", "site-2", "site-3"});
  ASSERT_TRUE(summary["finished"].get<bool>()) << summary.dump(2) << "\n" << log;
  EXPECT_NE(log.find("round 2 failed (attempt 1 of 3)"), std::string::npos) << log;
  EXPECT_EQ(log.find("round 2 failed (attempt 2"), std::string::npos) << log;
  EXPECT_EQ(log.find("already accepted"), std::string::npos) << log;
  for (int r = 1; r <= 3; ++r) {
    EXPECT_EQ(summary["history"][r]["sites_reported"], 3) << r << ": " << summary.dump(2);
  }
}

INSTANTIATE_TEST_SUITE_P(PlainAndSecure, RetryStudyTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Secure" : "Plain"; });

// A round that would take epsilon past the budget is not run: the study
// ends with the model of the last round that fitted, and says why.
TEST_F(StudyTest, ARoundOverThePrivacyBudgetIsNotRun) {
  // sigma 1, q = 1, delta 1e-5: one round costs epsilon 4.75, two 7.09.
  const std::string study = WriteStudy(
      3, {{"secure_aggregation", true},
          {"privacy", {{"mode", "central"}, {"clip_norm", 1.0}, {"noise_multiplier", 1.0},
                       {"epsilon", 6.0}, {"delta", 1e-5}}}});
  RunToTheEnd(study, "coordinator", "state", "out");
  ASSERT_FALSE(HasFatalFailure());
  json summary = ReadJson(dir_ / "out/summary.json");
  ASSERT_EQ(summary["history"].size(), 2u) << summary.dump(2);  // rounds 0 and 1
  EXPECT_NE(summary["stopped_early"].get<std::string>().find("past the study's budget of 6"),
            std::string::npos)
      << summary.dump(2);
  const double epsilon = summary["history"][1]["privacy"]["epsilon"].get<double>();
  EXPECT_NEAR(epsilon, 4.75, 0.05);
  EXPECT_TRUE(std::filesystem::exists(dir_ / "out/model.atnm"));
}

// The site keeps its own privacy ledger: with local DP (sigma 1, delta
// 1e-5: one release costs epsilon 4.75, two 7.09) and a study budget of
// 20, site-3 allows itself 6 (--epsilon), sends round 1's noised update and
// refuses round 2's, naming its budget; the study goes on without it.
TEST_F(StudyTest, ASiteWithATighterPrivacyBudgetStopsReleasingAtItsOwn) {
  const std::string study = WriteStudy(
      2, {{"min_sites", 2},
          {"round_deadline_s", 30},
          {"privacy", {{"mode", "local"}, {"clip_norm", 1.0}, {"noise_multiplier", 1.0},
                       {"epsilon", 20.0}, {"delta", 1e-5}}}});
  auto coord = StartCoordinator(study, "127.0.0.1:0", "coordinator.log");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  std::vector<std::unique_ptr<Process>> workers;
  workers.push_back(StartWorker("site-1", port));
  workers.push_back(StartWorker("site-2", port));
  workers.push_back(StartWorker("site-3", port, "", "", {"--epsilon", "6"}));
  ASSERT_EQ(coord->Wait(seconds(300)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
  const std::string log = workers[2]->Log();
  EXPECT_NE(log.find("round 1: this site's privacy loss is epsilon 4.7"), std::string::npos)
      << log;
  EXPECT_NE(log.find("round 2 TRAIN"), std::string::npos) << log;
  EXPECT_NE(log.find("refused by this site's privacy budget"), std::string::npos) << log;
  EXPECT_NE(log.find("past its budget of 6"), std::string::npos) << log;
  // On disk: one private release, epsilon 4.75.
  const json ledger = ReadJson(dir_ / "pki/sites/site-3/state/releases.json");
  EXPECT_EQ(ledger["privacy"]["releases"], 1) << ledger.dump(2);
  EXPECT_NEAR(ledger["privacy"]["epsilon"].get<double>(), 4.75, 0.05) << ledger.dump(2);
  // The study itself spent two rounds (the coordinator's ledger).
  const json summary = ReadJson(dir_ / "out/summary.json");
  ASSERT_EQ(summary["history"].size(), 3u) << summary.dump(2);
  EXPECT_NEAR(summary["history"][2]["privacy"]["epsilon"].get<double>(), 7.09, 0.05);
}

// Audits noised by the terms (audit.noise_multiplier 0.5, one audited
// column: G = 9 statistic groups, a count's noise sd 1.5), in the clear
// and under secure aggregation: every site and the coordinator charge the
// same two releases (round 0's validation split; round 1's validation and
// test splits, one release) to their ledgers -- epsilon 16.80 at delta
// 1e-5, by hand: min over α of 4α + log((α−1)/α) − (log δ + log α)/(α−1) --
// with DP off for the updates, audit.json says the figures are noisy, and
// the noisy test count stays within the noise's spread and clamping bias
// of what the patients, scored in the clear, add up to.
TEST_F(StudyTest, NoisedAuditsAreChargedToEveryLedgerAndStayNearTheExactSums) {
  const json noised = {
      {"privacy", {{"epsilon", 1000.0}, {"delta", 1e-5}}},
      {"audit", {{"columns", {"sex"}},
                 {"values", {{"sex", {"F", "M"}}, {"age_band", nullptr}, {"ethnicity", nullptr}}},
                 {"histogram_bins", 10},
                 {"noise_multiplier", 0.5},
                 {"value_clip", 4.0}}}};
  json secure = noised;
  secure["secure_aggregation"] = true;
  const std::vector<std::string> sites = {"site-1", "site-2", "site-3"};
  for (const auto& [name, changes] : {std::pair{std::string("plain"), noised},
                                      std::pair{std::string("secure"), secure}}) {
    SCOPED_TRACE(name);
    // Each run is a study of its own: the sites start with empty ledgers.
    for (const auto& site : sites) {
      std::filesystem::remove_all(dir_ / ("pki/sites/" + site + "/state"));
    }
    const std::string study = WriteStudy(1, changes);
    std::unique_ptr<Process> coord;
    std::vector<std::unique_ptr<Process>> workers;
    RunToTheEnd(study, name, "state-" + name, "out-" + name, sites, &coord, &workers);
    ASSERT_FALSE(HasFatalFailure());
    const json summary = ReadJson(dir_ / ("out-" + name + "/summary.json"));
    ASSERT_TRUE(summary["finished"].get<bool>()) << summary.dump(2);
    const json& last = summary["history"][1];
    EXPECT_EQ(last["privacy"]["releases"], 2) << last.dump(2);
    EXPECT_NEAR(last["privacy"]["epsilon"].get<double>(), 16.8017, 1e-3) << last.dump(2);
    for (const auto& site : sites) {
      const json ledger = ReadJson(dir_ / ("pki/sites/" + site + "/state/releases.json"));
      EXPECT_EQ(ledger["privacy"]["releases"], 2) << site << ledger.dump(2);
      EXPECT_NEAR(ledger["privacy"]["epsilon"].get<double>(), 16.8017, 1e-3) << site;
    }
    EXPECT_NE(workers[0]->Log().find("this site's privacy loss is epsilon 16.8"),
              std::string::npos)
        << workers[0]->Log();
    const json audit = ReadJson(dir_ / ("out-" + name + "/audit.json"));
    EXPECT_EQ(audit["noise"]["noise_multiplier"], 0.5) << audit.dump(1).substr(0, 2000);
    EXPECT_EQ(audit["noise"]["value_clip"], 4.0);
    const std::vector<Scored> test =
        ScoreInTheClear(study, dir_ / ("out-" + name + "/model.atnm"), sites, "test");
    const json& final = summary["final"];
    const double n = final["n"].get<double>();
    std::printf("%s, noised audit: test n %.0f (exact %zu), AUC %.4f (exact %.4f)\n",
                name.c_str(), n, test.size(), final["auc"].get<double>(), ExactAuc(test));
    // The noise on the 20 histogram bins a count is summed from (sd 1.5
    // per site in the clear; 1.5 · √(3/2) in all under secure aggregation,
    // each of 3 sites adding half the variance for t = 2), and the upward
    // bias of clamping each bin at 0 where it is clamped (each site's in
    // the clear, the sum's under secure aggregation): E[max(0, -z)] = 0.4 sd.
    const bool in_clear = name == "plain";
    const double bin_sd = in_clear ? 1.5 : 1.5 * std::sqrt(1.5);
    const double n_sd = (in_clear ? 1.5 * std::sqrt(3.0) : bin_sd) * std::sqrt(20.0);
    const double bias = 20 * 0.4 * (in_clear ? 3 * 1.5 : bin_sd);
    EXPECT_NEAR(n, static_cast<double>(test.size()) + bias / 2, 4 * n_sd + bias / 2)
        << final.dump(2);
    // The AUC is printed, not checked: on 120 patients in 20 sparse bins,
    // noise of this size moves it by up to 0.2 (measured 0.51-0.72 against
    // 0.71), the more where each site clamps its own bins.
  }
}

// Crash-resume holds with secure aggregation and DP on: a coordinator
// killed mid-aggregation reruns the round with fresh keys, and since each
// site's noise is seeded by its key and the round, the final model is
// bitwise the uninterrupted run's.
TEST_F(StudyTest, CoordinatorKilledDuringSecureAggregationGivesTheBitwiseSameFinalModel) {
  const std::string study = WriteStudy(
      2, {{"secure_aggregation", true},
          {"privacy", {{"mode", "central"}, {"clip_norm", 5.0}, {"noise_multiplier", 0.01},
                       {"epsilon", 1e9}, {"delta", 1e-5}}}});
  RunToTheEnd(study, "reference", "state-ref", "out-ref");
  auto coord = StartCoordinator(study, "127.0.0.1:0", "run-1.log", "state-kill", "out-kill");
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  std::vector<std::unique_ptr<Process>> workers;
  for (const char* s : {"site-1", "site-2", "site-3"}) workers.push_back(StartWorker(s, port));
  ASSERT_TRUE(LogSays(*coord, "round 2: masked input from")) << coord->Log();
  coord->Kill(SIGKILL);
  ASSERT_TRUE(coord->Wait(seconds(10)).has_value());
  coord = StartCoordinator(study, "127.0.0.1:" + std::to_string(port), "run-2.log", "state-kill",
                           "out-kill");
  ASSERT_EQ(coord->Wait(seconds(240)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
  const std::string reference = ReadText(dir_ / "out-ref/model.atnm");
  ASSERT_GT(reference.size(), 1000u);
  EXPECT_TRUE(reference == ReadText(dir_ / "out-kill/model.atnm")) << "the final models differ";
}

// audit.every and audit-only rounds: round 1 is evaluated without subgroup
// sums, round 2 with them; the coordinator then keeps the sites for
// `attune audit` of any committed model, refuses it to a site's certificate
// and to a model that does not exist, logs each release, and ends the study
// normally on SIGTERM.
TEST_F(StudyTest, AuditOnlyRoundsRunOnAServingCoordinator) {
  const std::string study = WriteStudy(2, {{"audit", {{"every", 2}, {"min_cell", 5}}}});
  auto coord = StartCoordinator(study, "127.0.0.1:0", "coordinator.log", "state", "out",
                                {"--serve-audits"});
  const int port = WaitForPort();
  ASSERT_GT(port, 0) << coord->Log();
  std::vector<std::unique_ptr<Process>> workers;
  for (const char* s : {"site-1", "site-2", "site-3"}) workers.push_back(StartWorker(s, port));
  ASSERT_TRUE(LogSays(*coord, "serving audit-only rounds")) << coord->Log();

  const json summary = ReadJson(dir_ / "out/summary.json");
  const json first = ReadJson(dir_ / "out/audit.json");
  EXPECT_EQ(first["round"], 2) << "round 1 is not audited (audit.every = 2)";
  EXPECT_FALSE(ReadText(dir_ / "out/audit.html").empty());
  EXPECT_EQ(summary["history"][1]["audit_releases"], 2) << "rounds 0 and 1: one val split each";
  // Every site named its audit features: the sums carry attention per feature.
  ASSERT_GT(first["features"].size(), 10u) << first.dump(1);
  EXPECT_EQ(AuditCell(first, "sex", "F")["attention"].size(), first["features"].size());

  const std::string address = "127.0.0.1:" + std::to_string(port);
  Process audit({ATTUNE_TOOL_BIN, "audit", "--study-dir", dir_ / "pki", "--coordinator", address,
                 "--model", "1", "--out", dir_ / "audit-1"},
                dir_ / "audit-1.log");
  ASSERT_EQ(audit.Wait(seconds(120)), 0) << audit.Log() << coord->Log();
  const json one = ReadJson(dir_ / "audit-1/audit.json");
  ASSERT_FALSE(one.is_discarded()) << audit.Log();
  EXPECT_EQ(one["model_version"], 1);
  EXPECT_EQ(one["split"], "val");
  EXPECT_EQ(one["sites"].size(), 3u);
  EXPECT_EQ(one["overall"]["n"], first["overall"]["n"]) << "the same val split";
  EXPECT_NE(one["overall"]["auc"], first["overall"]["auc"]) << "another model";
  EXPECT_NE(ReadText(dir_ / "audit-1/audit.html").find("attune.audit/3"), std::string::npos);
  EXPECT_NE(audit.Log().find("wrote"), std::string::npos) << audit.Log();

  // Only the operator may run audits, and only of committed models.
  Process as_site({ATTUNE_TOOL_BIN, "audit", "--coordinator", address, "--study-id", kStudy,
                   "--tls-dir", dir_ / "pki/sites/site-1", "--out", dir_ / "audit-x"},
                  dir_ / "audit-site.log");
  EXPECT_EQ(as_site.Wait(seconds(60)), 1);
  EXPECT_NE(as_site.Log().find("only the attune-operator certificate"), std::string::npos)
      << as_site.Log();
  Process missing({ATTUNE_TOOL_BIN, "audit", "--study-dir", dir_ / "pki", "--coordinator", address,
                   "--model", "7", "--out", dir_ / "audit-7"},
                  dir_ / "audit-7.log");
  EXPECT_EQ(missing.Wait(seconds(60)), 1);
  EXPECT_NE(missing.Log().find("model version 7 is not committed"), std::string::npos)
      << missing.Log();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "audit-7/audit.json"));

  coord->Kill(SIGTERM);
  ASSERT_EQ(coord->Wait(seconds(60)), 0) << coord->Log();
  for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
  Process log({ATTUNE_TOOL_BIN, "log", "show", "--data-dir", dir_ / "state", "--last", "0"},
              dir_ / "log-show.log");
  ASSERT_EQ(log.Wait(seconds(60)), 0) << log.Log();
  EXPECT_NE(log.Log().find("audit_released"), std::string::npos) << log.Log();
  Process rendered({ATTUNE_TOOL_BIN, "audit", "render", "--in", dir_ / "audit-1/audit.json",
                    "--out", dir_ / "again.html"},
                   dir_ / "render.log");
  ASSERT_EQ(rendered.Wait(seconds(60)), 0) << rendered.Log();
  EXPECT_EQ(ReadText(dir_ / "again.html"), ReadText(dir_ / "audit-1/audit.html"));
}

// The audit's shortcut study (README, "Subgroup audit"): the sites'
// static data carry a room number; women lie on ward 4 at every site, so
// the room tells the sexes apart. With the shortcut planted, the room
// also predicts the label, for women at site-1 only (the largest site, 600
// patients against 300); a model that learns it attends to the room for
// women, and the audit must flag the room for sex in at least 9 of 10
// seeds. Without it (the control), at most 1 seed of 10 may flag anything
// (age is exempt for age_band: it defines it). The model is the EHR part
// (static columns and events), trained for 20 rounds. Measured with the
// default flag rule (0.004 bits, lower membership bound 0.75): the room's
// term for sex is 0.0077-0.0374 bits planted, at most 0.0021 in the
// controls.
TEST_F(StudyTest, TheRoomNumberShortcutIsFlaggedAndItsControlIsNot) {
  constexpr int kSeeds = 10;
  const int rounds = 20;
  int planted_flagged = 0, control_flagged = 0;
  std::string report;
  for (int seed = 1; seed <= kSeeds; ++seed) {
    for (const std::string mode : {"planted", "control"}) {
      const std::string data = "room-" + mode + "-" + std::to_string(seed);
      Process syn({ATTUNE_TOOL_BIN, "synth", "--out", dir_ / data, "--sites", "3",
                   "--site-patients", "600,300,300", "--seed", std::to_string(100 + seed),
                   "--room-number", mode},
                  dir_ / (data + ".log"));
      ASSERT_EQ(syn.Wait(seconds(60)), 0) << syn.Log();
      const std::string study = WriteStudy(
          rounds, {{"model", {{"static_features", 9}, {"genes", 0}, {"imaging_encoder", "none"}}},
                   {"train", {{"seed", seed}, {"learning_rate", 0.003}, {"local_epochs", 3}}},
                   {"audit", {{"defining_features", {{"age_band", {"ehr_static/age"}}}}}}});
      auto coord = StartCoordinator(study, "127.0.0.1:0", data + "-coordinator.log",
                                    "state-" + data, "out-" + data);
      const int port = WaitForPort();
      ASSERT_GT(port, 0) << coord->Log();
      std::vector<std::unique_ptr<Process>> workers;
      for (const std::string site : {"site-1", "site-2", "site-3"}) {
        workers.push_back(StartWorker(site, port, "", "../" + data + "/" + site));
      }
      ASSERT_EQ(coord->Wait(seconds(300)), 0) << coord->Log();
      for (auto& w : workers) EXPECT_EQ(w->Wait(seconds(30)), 0) << w->Log();
      const json audit = ReadJson(dir_ / ("out-" + data + "/audit.json"));
      ASSERT_FALSE(audit.is_discarded());
      bool room_for_sex = false;
      std::string flags;
      for (const auto& f : audit["flags"]) {
        const std::string column = f["column"];
        room_for_sex |= f["feature"] == "ehr_static/room_number" &&
                        column.find("sex") != std::string::npos;
        flags += " " + f["feature"].get<std::string>() + "@" + column + "=" +
                 f["value"].get<std::string>() +
                 " (jsd " + std::to_string(f["jsd_contribution_bits"].get<double>()) +
                 ", membership " + std::to_string(f["membership_auc"].get<double>()) + ")";
      }
      const json women = AuditCell(audit, "sex", "F"), men = AuditCell(audit, "sex", "M");
      const auto room = std::find(audit["features"].begin(), audit["features"].end(),
                                  "ehr_static/room_number") -
                        audit["features"].begin();
      report += "seed " + std::to_string(seed) + " " + mode + ": room attention F " +
                std::to_string(women["attention"][room].get<double>()) + " M " +
                std::to_string(men["attention"][room].get<double>()) + "; flags:" +
                (flags.empty() ? " none" : flags) + "\n";
      if (mode == "planted") planted_flagged += room_for_sex ? 1 : 0;
      if (mode == "control") control_flagged += audit["flags"].empty() ? 0 : 1;
    }
  }
  std::printf("%s", report.c_str());
  EXPECT_GE(planted_flagged, 9) << report;
  EXPECT_LE(control_flagged, 1) << report;
}

TEST_F(StudyTest, BadCommandLinesFailClearly) {
  // Malformed study file.
  std::ofstream(dir_ / "broken.json") << "{\"study_id\": \"x\", \"rounds\": 3,,}";
  Process bad_config({ATTUNE_COORDINATOR_BIN, "--study", dir_ / "broken.json", "--data-dir",
                      dir_ / "s", "--tls-dir", dir_ / "pki/coordinator"},
                     dir_ / "bad-config.log");
  EXPECT_EQ(bad_config.Wait(seconds(30)), 1);
  EXPECT_NE(bad_config.Log().find("broken.json: not valid JSON"), std::string::npos)
      << bad_config.Log();
  // A field out of range.
  Process bad_field({ATTUNE_COORDINATOR_BIN, "--study", WriteStudy(0), "--data-dir", dir_ / "s",
                     "--tls-dir", dir_ / "pki/coordinator"},
                    dir_ / "bad-field.log");
  EXPECT_EQ(bad_field.Wait(seconds(30)), 1);
  EXPECT_NE(bad_field.Log().find("rounds: must be in"), std::string::npos) << bad_field.Log();
  // No TLS bundle.
  Process no_tls({ATTUNE_COORDINATOR_BIN, "--study", WriteStudy(1), "--data-dir", dir_ / "s",
                  "--tls-dir", dir_ / "nowhere"},
                 dir_ / "no-tls.log");
  EXPECT_EQ(no_tls.Wait(seconds(30)), 1);
  EXPECT_NE(no_tls.Log().find("attune provision"), std::string::npos) << no_tls.Log();
  // Nobody listening: the worker gives up after its reconnect timeout.
  Process unreachable({ATTUNE_WORKER_BIN, "--coordinator",
                       "127.0.0.1:" + std::to_string(FreeLoopbackPort()),
                       "--study-id", kStudy, "--site-dir", dir_ / "data/site-1", "--tls-dir",
                       dir_ / "pki/sites/site-1", "--reconnect-timeout", "2"},
                      dir_ / "unreachable.log");
  auto code = unreachable.Wait(seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_NE(*code, 0);
  EXPECT_NE(unreachable.Log().find("cannot reach the coordinator"), std::string::npos)
      << unreachable.Log();
  EXPECT_EQ(unreachable.Log().find("terminate called"), std::string::npos);
  // Neither --config nor the flags it stands for.
  Process no_config({ATTUNE_WORKER_BIN, "--site-dir", dir_ / "data/site-1"},
                    dir_ / "no-config.log");
  EXPECT_EQ(no_config.Wait(seconds(30)), 1);
  EXPECT_NE(no_config.Log().find("--coordinator, --study-id, --tls-dir: required"),
            std::string::npos)
      << no_config.Log();
  // A site.json used with another site's bundle.
  Process mismatch({ATTUNE_WORKER_BIN, "--config", dir_ / "pki/sites/site-1/site.json", "--tls-dir",
                    dir_ / "pki/sites/site-2", "--site-dir", dir_ / "data/site-1"},
                   dir_ / "mismatch.log");
  EXPECT_EQ(mismatch.Wait(seconds(30)), 1);
  EXPECT_NE(mismatch.Log().find("site_id: 'site-1' but the certificate"), std::string::npos)
      << mismatch.Log();
  // Revoking a site twice, and one not on the roster.
  Process revoke({ATTUNE_TOOL_BIN, "provision", "revoke", "--dir", dir_ / "pki", "--site", "site-x"},
                 dir_ / "revoke.log");
  EXPECT_EQ(revoke.Wait(seconds(30)), 0) << revoke.Log();
  Process again({ATTUNE_TOOL_BIN, "provision", "revoke", "--dir", dir_ / "pki", "--site", "site-x"},
                dir_ / "revoke-again.log");
  EXPECT_EQ(again.Wait(seconds(30)), 1);
  EXPECT_NE(again.Log().find("already revoked"), std::string::npos) << again.Log();
  Process unknown({ATTUNE_TOOL_BIN, "provision", "revoke", "--dir", dir_ / "pki", "--site", "nobody"},
                  dir_ / "revoke-unknown.log");
  EXPECT_EQ(unknown.Wait(seconds(30)), 1);
  EXPECT_NE(unknown.Log().find("not on the roster"), std::string::npos) << unknown.Log();
}

}  // namespace
}  // namespace attune::testing
