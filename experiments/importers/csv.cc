#include "csv.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace attune::importers {

CsvReader::CsvReader(std::string path, char sep)
    : path_(std::move(path)), sep_(sep), in_(gzopen(path_.c_str(), "rb")) {
  if (in_ != nullptr) gzbuffer(in_, 1 << 17);
}

CsvReader::~CsvReader() {
  if (in_ != nullptr) gzclose(in_);
}

bool CsvReader::GetLine(std::string* line) {
  line->clear();
  if (in_ == nullptr || read_error_) return false;
  char buf[1 << 14];
  while (gzgets(in_, buf, sizeof(buf)) != nullptr) {
    const size_t n = std::strlen(buf);
    line->append(buf, n);
    if (n > 0 && buf[n - 1] == '\n') {
      line->pop_back();
      return true;
    }
  }
  int err = Z_OK;
  gzerror(in_, &err);
  if (err != Z_OK && err != Z_STREAM_END) {
    read_error_ = true;
    return false;
  }
  return !line->empty();
}

Status CsvReader::Finish() const {
  if (!read_error_) return absl::OkStatus();
  int err = Z_OK;
  const char* what = gzerror(in_, &err);
  return absl::DataLossError(absl::StrCat(path_, ":", next_line_, ": cannot read on (", what,
                                          "): truncated or corrupt"));
}

bool CsvReader::Next(std::vector<std::string>* fields) {
  fields->clear();
  std::string line;
  if (!GetLine(&line)) return false;
  line_ = next_line_++;
  if (first_ && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
  first_ = false;
  std::string field;
  bool quoted = false;
  for (size_t i = 0;; ++i) {
    if (i == line.size()) {
      if (quoted) {  // the quoted field goes on on the next line
        std::string more;
        if (!GetLine(&more)) break;
        ++next_line_;
        line += "\n" + more;
      } else {
        break;
      }
    }
    const char c = line[i];
    if (quoted) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        field += '"';
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field += c;
      }
    } else if (c == '"' && field.empty()) {
      quoted = true;
    } else if (c == sep_) {
      fields->push_back(std::move(field));
      field.clear();
    } else if (c == '\r' && i + 1 == line.size()) {
      // CRLF line end
    } else {
      field += c;
    }
  }
  fields->push_back(std::move(field));
  return true;
}

Status CsvReader::Error(const std::string& what) const {
  return absl::InvalidArgumentError(absl::StrCat(path_, ":", line_, ": ", what));
}

StatusOr<std::vector<int>> ColumnIndexes(const CsvReader& r, const std::vector<std::string>& header,
                                         const std::vector<std::string>& wanted) {
  std::vector<int> out;
  for (const auto& w : wanted) {
    auto it = std::find(header.begin(), header.end(), w);
    if (it == header.end()) return r.Error(absl::StrCat("no column '", w, "' in the header"));
    out.push_back(static_cast<int>(it - header.begin()));
  }
  return out;
}

}  // namespace attune::importers
