// audit.html: the audit document (audit.h) as one self-contained page that
// a reviewer opens in any browser, offline: per-group AUC with counts, mean
// modality weight β per group, attention heatmaps over the input features
// per group, the gaps between groups and the shortcut flags with their
// evidence. The page carries the document itself as JSON and draws it at
// load with d3 (inlined: no network, no files beside it).
#pragma once

#include <string>
#include <string_view>

#include "attune/common/status.h"

namespace attune {

// The page for `audit_json` (kAuditSchema). InvalidArgument when the text
// is not an audit document of that schema.
StatusOr<std::string> AuditHtml(std::string_view audit_json);

// Writes <dir>/audit.json and <dir>/audit.html (each replaced atomically).
Status WriteAuditFiles(const std::string& dir, std::string_view audit_json);

}  // namespace attune
