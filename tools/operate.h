// `attune status`, `attune audit` and `attune log`: operating a running or
// finished study.
#pragma once

#include <string>

namespace attune::tools {

struct StatusOptions {
  std::string study_dir;    // from `attune provision init`: fills the rest
  std::string coordinator;  // host:port
  std::string study_id;
  std::string tls_dir;      // the operator's (or a site's) bundle
  bool json = false;
};
// Prints the study's status; returns the process exit code.
int RunStatus(StatusOptions options);

struct AuditCommand {
  StatusOptions connect;       // coordinator, study, the operator's bundle
  int64_t model_version = -1;  // a committed round; -1: the latest
  std::string split = "val";
  std::string out_dir = ".";   // audit.json and audit.html
  int timeout_s = 3600;        // audits wait for the running round to end
};
// Runs an audit-only round on a running coordinator; returns the exit code.
int RunAudit(AuditCommand options);
// Draws audit.html again from an audit.json; returns the exit code.
int RunAuditRender(const std::string& json_path, const std::string& html_path);

// Checks the hash chain of the audit log in a coordinator data directory.
int RunLogVerify(const std::string& data_dir);
// Prints the last `last` audit-log entries (all when 0).
int RunLogShow(const std::string& data_dir, uint64_t last);

}  // namespace attune::tools
