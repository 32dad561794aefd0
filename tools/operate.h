// `attune status` and `attune log`: operating a running or finished study.
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

// Checks the hash chain of the audit log in a coordinator data directory.
int RunLogVerify(const std::string& data_dir);
// Prints the last `last` audit-log entries (all when 0).
int RunLogShow(const std::string& data_dir, uint64_t last);

}  // namespace attune::tools
