// A study directory, as `attune provision` makes and maintains it:
//
//   <dir>/ca/{ca.crt,ca.key}                     the study CA (keep ca.key offline)
//   <dir>/coordinator/{ca.crt,cert.crt,key.pem}  the coordinator's server bundle
//   <dir>/coordinator/at_rest.key        its at-rest key (at_rest.h; kept if present)
//   <dir>/operator/{ca.crt,cert.crt,key.pem}     client bundle, CN kOperatorName
//   <dir>/sites/<site>/{ca.crt,cert.crt,key.pem,site.json}  one per site
//   <dir>/study.json                             the study file (roster, revoked)
//   <dir>/study.terms, and a copy in every bundle  the study's terms, signed
//                                                  with ca.key (terms.h)
//
// Every change of the roster (add-site, revoke) and every `sign` re-signs
// the terms at the next version and writes them to every bundle folder, so
// these need ca.key: the study's owner runs them, and copies the new
// coordinator/study.terms to the coordinator's machine, which never holds
// ca.key. Sites get newer terms from the coordinator with its tasks.
//
// Key files are mode 0600. study.json is always rewritten atomically and only
// after the new text passes ParseStudyConfig, so a coordinator that re-reads
// it (LoadStudyConfig) never sees a half-written or invalid file.
#pragma once

#include <string>
#include <vector>

#include "attune/common/config.h"
#include "attune/common/status.h"
#include "attune/common/terms.h"

namespace attune {

inline constexpr char kStudyFile[] = "study.json";
inline constexpr char kAtRestKeyFile[] = "at_rest.key";  // in <dir>/coordinator/

// Site names become directory names and certificate CNs: 1 to 64 of
// [A-Za-z0-9._-], not "." or "..", not "coordinator" (the coordinator's CN)
// and not starting with kReservedPrefix. InvalidArgument says which rule.
Status CheckSiteName(const std::string& site);

struct InitOptions {
  std::string out_dir;
  std::string study_id;
  std::vector<std::string> sites;
  // host:port the sites dial; goes into study.json and every site.json.
  std::string coordinator = "127.0.0.1:7070";
  // The coordinator certificate's names (DNS or IP). Empty: the host of
  // `coordinator`, 127.0.0.1 and localhost.
  std::vector<std::string> coordinator_hosts;
  // A study file to start from; its study_id, coordinator, roster and
  // revoked (which it may lack) are replaced by these options, its other
  // fields are kept. Empty: only those four fields are written and the rest
  // take ParseStudyConfig's defaults, except that min_sites is lowered to
  // the number of sites when there are fewer sites than its default.
  std::string base_study_path;
  int valid_days = 365;
  bool overwrite = false;  // replace an existing <out_dir>/ca
};

struct InitResult {
  StudyConfig study;                           // <out_dir>/study.json as written
  std::vector<std::string> coordinator_hosts;  // the coordinator certificate's names
};

// Makes a study directory. Everything (keys, certificates, study.json, which
// is validated) is made before anything is written, and ca/ is written last.
// AlreadyExists when <out_dir>/ca exists and `overwrite` is false (a study
// CA is never replaced by accident).
StatusOr<InitResult> InitStudy(const InitOptions& options);

// Issues a bundle for a new site with <dir>/ca, writes <dir>/sites/<site>/
// and appends the site to the roster of <dir>/study.json. AlreadyExists when
// the site is on the roster (revoked or not), InvalidArgument for a bad
// name, NotFound when <dir>/ca/ca.key or <dir>/study.json is missing.
StatusOr<StudyConfig> AddSite(const std::string& dir, const std::string& site,
                              int valid_days = 365);

// Adds a site to "revoked" in <dir>/study.json: from then on a coordinator
// refuses its certificate (StudyConfig::Admits) and sites refuse it as a
// peer (the re-signed terms). NotFound when the site is not on the roster,
// AlreadyExists when it is already revoked.
StatusOr<StudyConfig> RevokeSite(const std::string& dir, const std::string& site);

// Signs the terms of a study file at the next version and writes them to
// every bundle of <dir>: after an edit of <dir>/study.json (`study_path`
// empty), or to make `study_path` the study's file (it is copied to
// <dir>/study.json first). InvalidArgument for a file that does not parse
// or names another study; NotFound without <dir>/ca/ca.key.
StatusOr<StudyTerms> SignStudy(const std::string& dir, const std::string& study_path = "");

}  // namespace attune
