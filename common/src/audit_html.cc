#include "attune/common/audit_html.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "attune/common/audit.h"
#include "attune/common/config.h"

namespace attune {
namespace assets {
extern const unsigned char kD3Js[];
extern const unsigned long kD3JsSize;
extern const unsigned char kAuditReportJs[];
extern const unsigned long kAuditReportJsSize;
}  // namespace assets

namespace {

constexpr char kStyle[] = R"css(
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
       color: #1a1a1a; margin: 24px auto; max-width: 1100px; padding: 0 16px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; border-bottom: 1px solid #ccc; padding-bottom: 3px; margin-top: 28px; }
h3 { font-size: 15px; margin: 16px 0 4px; }
.meta, .note, .gaps { color: #555; }
.ok { color: #1b7f3b; font-weight: 600; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; }
table.flags td:first-child { font-weight: 700; color: #b30000; }
svg.chart { display: block; margin: 4px 0 8px; font-size: 12px; }
svg text.muted, .muted { fill: #888; }
svg text.flagged { fill: #b30000; font-weight: 700; }
rect.auc { fill: #4c78a8; }
rect.group { fill: #b30000; }
rect.rest { fill: #9e9e9e; }
line.overall { stroke: #333; stroke-dasharray: 4 3; }
.axis path, .axis line { fill: none; stroke: #666; shape-rendering: crispEdges; }
)css";

// Script text that cannot end its element early ("</" does; d3 and our
// renderer have it nowhere but in strings, where "<\/" reads the same).
std::string ScriptSafe(absl::string_view text) {
  return absl::StrReplaceAll(text, {{"</", "<\\/"}});
}

absl::string_view Text(const unsigned char* bytes, unsigned long size) {
  return {reinterpret_cast<const char*>(bytes), size};
}

// JSON inside <script>: "<" occurs only in strings, where \u003c is "<".
std::string JsonSafe(absl::string_view json) {
  return absl::StrReplaceAll(json, {{"<", "\\u003c"}});
}

std::string HtmlEscape(absl::string_view text) {
  return absl::StrReplaceAll(text,
                             {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

}  // namespace

StatusOr<std::string> AuditHtml(std::string_view audit_json) {
  const nlohmann::json doc = nlohmann::json::parse(audit_json, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || doc.value("schema", "") != kAuditSchema) {
    return absl::InvalidArgumentError(
        absl::StrCat("audit.html: not an audit document of schema ", kAuditSchema));
  }
  const std::string title = absl::StrCat(
      "Attune subgroup audit", doc.contains("study_id") ? ": " : "",
      doc.contains("study_id") ? doc["study_id"].get<std::string>() : "");
  return absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"generator\" content=\"attune\">\n<title>",
      HtmlEscape(title), "</title>\n<style>", kStyle, "</style>\n</head>\n<body>\n",
      "<main id=\"report\"></main>\n"
      "<noscript><p>This report draws itself with JavaScript; the same figures are in "
      "audit.json.</p></noscript>\n"
      "<script type=\"application/json\" id=\"audit-data\">",
      JsonSafe(doc.dump()), "</script>\n",
      "<script>/* d3 ", "v3, BSD-3-Clause, (c) Mike Bostock */\n",
      ScriptSafe(Text(assets::kD3Js, assets::kD3JsSize)), "\n</script>\n<script>",
      ScriptSafe(Text(assets::kAuditReportJs, assets::kAuditReportJsSize)),
      "</script>\n</body>\n</html>\n");
}

Status WriteAuditFiles(const std::string& dir, std::string_view audit_json) {
  ATTUNE_ASSIGN_OR_RETURN(std::string html, AuditHtml(audit_json));
  ATTUNE_RETURN_IF_ERROR(WriteFileAtomic(dir + "/audit.json", std::string(audit_json)));
  return WriteFileAtomic(dir + "/audit.html", html);
}

}  // namespace attune
