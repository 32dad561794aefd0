#include "operate.h"

#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "absl/strings/str_format.h"
#include "attune/common/audit_html.h"
#include "attune/common/config.h"
#include "attune/common/provision.h"
#include "attune/common/store.h"
#include "attune/common/tls.h"
#include "attune/v1/federation.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace attune::tools {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

int Fail(const Status& s) {
  std::fprintf(stderr, "attune: error: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::string Num(double v, const char* fmt = "%.4f") {
  return std::isfinite(v) ? absl::StrFormat(fmt, v) : std::string("n/a");
}

json JsonNum(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

std::string Ago(int64_t ms) {
  if (ms < 0) return "never";
  if (ms < 60000) return absl::StrFormat("%.1f s ago", ms / 1000.0);
  if (ms < 3600000) return absl::StrFormat("%.1f min ago", ms / 60000.0);
  return absl::StrFormat("%.1f h ago", ms / 3600000.0);
}

// Fills what the study directory knows and the flags did not say.
Status Complete(StatusOptions* o) {
  if (!o->study_dir.empty()) {
    ATTUNE_ASSIGN_OR_RETURN(StudyConfig study,
                            LoadStudyConfig((fs::path(o->study_dir) / kStudyFile).string()));
    if (o->study_id.empty()) o->study_id = study.study_id;
    if (o->coordinator.empty()) o->coordinator = study.coordinator;
    if (o->tls_dir.empty()) o->tls_dir = (fs::path(o->study_dir) / "operator").string();
  }
  std::string missing;
  if (o->coordinator.empty()) missing += " --coordinator";
  if (o->study_id.empty()) missing += " --study-id";
  if (o->tls_dir.empty()) missing += " --tls-dir";
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        "missing" + missing + " (or give --study-dir, the directory from `attune provision init`)");
  }
  return absl::OkStatus();
}

void PrintTable(const v1::StudyStatus& st) {
  std::printf("study %s: %lld of %d rounds committed; now: %s; strategy %s; audit log %llu entries\n",
              st.study_id().c_str(), static_cast<long long>(std::max<int64_t>(st.committed_round(), 0)),
              st.total_rounds(), st.phase().c_str(), st.strategy().c_str(),
              static_cast<unsigned long long>(st.log_entries()));
  std::printf("secure aggregation: %s\n", st.secure_aggregation() ? "on" : "off");
  if (st.has_privacy()) {
    const v1::PrivacyStatus& p = st.privacy();
    std::printf("differential privacy (%s, noise multiplier %g): epsilon %.4g spent of %.4g at "
                "delta %.3g; %d noisy update releases, %d audit releases (exact sums, small "
                "cells suppressed)\n",
                p.mode().c_str(), p.noise_multiplier(), p.epsilon_spent(), p.epsilon_budget(),
                p.delta(), p.releases(), p.audit_releases());
  } else {
    std::printf("differential privacy: off\n");
  }
  std::printf("\n%-20s %-8s %-14s %8s %7s  %s\n", "site", "alive", "last seen", "samples", "rounds",
              "progress");
  for (const auto& s : st.sites()) {
    std::printf("%-20s %-8s %-14s %8lld %7lld  %s\n", s.site_id().c_str(),
                s.revoked() ? "revoked" : (s.alive() ? "yes" : "no"),
                Ago(s.last_seen_ms_ago()).c_str(), static_cast<long long>(s.train_samples()),
                static_cast<long long>(s.rounds_contributed()), s.progress().c_str());
  }
  if (st.rounds_size() == 0) return;
  std::printf("\n%5s %6s %11s %9s %8s %8s\n", "round", "sites", "train_loss", "val_loss",
              "val_auc", "seconds");
  for (const auto& r : st.rounds()) {
    std::printf("%5lld %6d %11s %9s %8s %8s\n", static_cast<long long>(r.round()), r.sites(),
                Num(r.train_loss()).c_str(), Num(r.val_loss()).c_str(), Num(r.val_auc()).c_str(),
                Num(r.seconds(), "%.1f").c_str());
  }
}

void PrintJson(const v1::StudyStatus& st) {
  json j = {{"study_id", st.study_id()},
            {"committed_round", st.committed_round()},
            {"total_rounds", st.total_rounds()},
            {"phase", st.phase()},
            {"strategy", st.strategy()},
            {"log_entries", st.log_entries()},
            {"secure_aggregation", st.secure_aggregation()}};
  if (st.has_privacy()) {
    const v1::PrivacyStatus& p = st.privacy();
    j["privacy"] = {{"mode", p.mode()},
                    {"epsilon_spent", p.epsilon_spent()},
                    {"epsilon_budget", p.epsilon_budget()},
                    {"delta", p.delta()},
                    {"noise_multiplier", p.noise_multiplier()},
                    {"releases", p.releases()},
                    {"audit_releases", p.audit_releases()}};
  }
  j["sites"] = json::array();
  for (const auto& s : st.sites()) {
    j["sites"].push_back({{"site", s.site_id()},
                          {"alive", s.alive()},
                          {"revoked", s.revoked()},
                          {"subscribed", s.subscribed()},
                          {"last_seen_ms_ago", s.last_seen_ms_ago()},
                          {"train_samples", s.train_samples()},
                          {"rounds_contributed", s.rounds_contributed()},
                          {"progress", s.progress()}});
  }
  j["rounds"] = json::array();
  for (const auto& r : st.rounds()) {
    j["rounds"].push_back({{"round", r.round()},
                           {"sites", r.sites()},
                           {"train_loss", JsonNum(r.train_loss())},
                           {"val_loss", JsonNum(r.val_loss())},
                           {"val_auc", JsonNum(r.val_auc())},
                           {"seconds", JsonNum(r.seconds())}});
  }
  std::printf("%s\n", j.dump(2).c_str());
}

}  // namespace

int RunStatus(StatusOptions o) {
  if (Status s = Complete(&o); !s.ok()) return Fail(s);
  auto tls = LoadTlsBundle(o.tls_dir);
  if (!tls.ok()) return Fail(tls.status());
  auto stub = v1::Federation::NewStub(MakeChannel(o.coordinator, *tls));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::StatusRequest req;
  req.set_study_id(o.study_id);
  v1::StudyStatus st;
  Status s = FromGrpcStatus(stub->Status(&ctx, req, &st));
  if (!s.ok()) {
    return Fail(absl::Status(s.code(), absl::StrFormat("coordinator at %s: %s", o.coordinator,
                                                       std::string(s.message()))));
  }
  if (o.json) {
    PrintJson(st);
  } else {
    PrintTable(st);
  }
  return 0;
}

int RunAudit(AuditCommand o) {
  if (Status s = Complete(&o.connect); !s.ok()) return Fail(s);
  auto tls = LoadTlsBundle(o.connect.tls_dir);
  if (!tls.ok()) return Fail(tls.status());
  auto stub = v1::Federation::NewStub(MakeChannel(o.connect.coordinator, *tls));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(o.timeout_s));
  v1::AuditRequest req;
  req.set_study_id(o.connect.study_id);
  req.set_model_version(o.model_version);
  req.set_split(o.split);
  const std::string which = o.model_version < 0 ? std::string("the latest model")
                                                : absl::StrFormat("model %d", o.model_version);
  std::printf(
      "audit of %s on the %s split: waiting for the sites (an audit-only round runs\n"
      "between training rounds; at most %d s)...\n",
      which.c_str(), o.split.c_str(), o.timeout_s);
  std::fflush(stdout);
  v1::AuditReply reply;
  Status s = FromGrpcStatus(stub->Audit(&ctx, req, &reply));
  if (!s.ok()) {
    return Fail(absl::Status(
        s.code(),
        absl::StrFormat("coordinator at %s: %s", o.connect.coordinator, std::string(s.message()))));
  }
  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  if (Status w = WriteAuditFiles(o.out_dir, reply.audit_json()); !w.ok()) return Fail(w);
  const json doc = json::parse(reply.audit_json(), nullptr, false);
  const json& overall = doc["overall"];
  std::printf(
      "model %s, %s split: %s patients from %zu sites; AUC %s; %s cells suppressed\n",
      doc["model_version"].dump().c_str(), doc["split"].get<std::string>().c_str(),
      overall["n"].dump().c_str(), doc["sites"].size(),
      overall["auc"].is_number() ? Num(overall["auc"].get<double>(), "%.3f").c_str() : "n/a",
      doc["suppressed_cells"].dump().c_str());
  for (const json& f : doc["flags"]) {
    std::printf("FLAG %s for %s = %s: JSD term %.4f bits, membership AUC %.3f\n",
                f["feature"].get<std::string>().c_str(), f["column"].get<std::string>().c_str(),
                f["value"].get<std::string>().c_str(), f["jsd_contribution_bits"].get<double>(),
                f["membership_auc"].get<double>());
  }
  if (doc["flags"].empty()) std::printf("no shortcut flags\n");
  std::printf("wrote %s and %s\n", (fs::path(o.out_dir) / "audit.json").c_str(),
              (fs::path(o.out_dir) / "audit.html").c_str());
  return 0;
}

int RunAuditRender(const std::string& json_path, const std::string& html_path) {
  StatusOr<std::string> text = ReadFile(json_path);
  if (!text.ok()) return Fail(text.status());
  StatusOr<std::string> html = AuditHtml(*text);
  if (!html.ok()) return Fail(absl::InvalidArgumentError(
      absl::StrCat(json_path, ": ", std::string(html.status().message()))));
  if (Status s = WriteFileAtomic(html_path, *html); !s.ok()) return Fail(s);
  std::printf("wrote %s\n", html_path.c_str());
  return 0;
}

int RunLogVerify(const std::string& data_dir) {
  auto store = StateStore::OpenReadOnly(data_dir);
  if (!store.ok()) return Fail(store.status());
  auto n = (*store)->VerifyLog();
  if (!n.ok()) {
    std::fprintf(stderr, "attune: audit log of study '%s' in %s does NOT verify\n",
                 (*store)->study_id().c_str(), data_dir.c_str());
    return Fail(n.status());
  }
  std::string head = std::string(64, '0');
  if (*n > 0) {
    auto last = (*store)->ReadLog(*n - 1, 1);
    if (last.ok() && !last->empty()) head = last->front().hash;
  }
  std::printf("audit log of study '%s': %llu entries, hash chain intact (head %s)\n",
              (*store)->study_id().c_str(), static_cast<unsigned long long>(*n), head.c_str());
  return 0;
}

int RunLogShow(const std::string& data_dir, uint64_t last) {
  auto store = StateStore::OpenReadOnly(data_dir);
  if (!store.ok()) return Fail(store.status());
  const uint64_t total = (*store)->LogEntries();
  const uint64_t from = last == 0 || last >= total ? 0 : total - last;
  for (uint64_t at = from; at < total;) {
    auto entries = (*store)->ReadLog(at, 1024);
    if (!entries.ok()) return Fail(entries.status());
    if (entries->empty()) break;
    for (const LogEntry& e : *entries) {
      const std::time_t secs = static_cast<std::time_t>(e.unix_ms / 1000);
      char when[32];
      std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&secs));
      std::printf("%6llu %s %-18s %-12s %s\n", static_cast<unsigned long long>(e.seq), when,
                  e.kind.c_str(), e.site.empty() ? "-" : e.site.c_str(), e.detail_json.c_str());
      at = e.seq + 1;
    }
  }
  return 0;
}

}  // namespace attune::tools
