// A CSV reader for publishers' files: gzip-compressed or plain (zlib reads
// both), a UTF-8 byte-order mark, CRLF or LF line ends, a missing final
// newline, and quoted fields ("a, b", "" for a quote) are all accepted.
// Errors name the file and line.
#pragma once

#include <string>
#include <vector>

#include "attune/common/status.h"

struct gzFile_s;  // zlib's

namespace attune::importers {

class CsvReader {
 public:
  CsvReader(std::string path, char sep = ',');
  ~CsvReader();
  CsvReader(const CsvReader&) = delete;
  CsvReader& operator=(const CsvReader&) = delete;
  bool ok() const { return in_ != nullptr; }
  // The next record; false at the end of the file. A quoted field may span
  // lines.
  bool Next(std::vector<std::string>* fields);
  int line() const { return line_; }  // the line the last record started on
  const std::string& path() const { return path_; }
  Status Error(const std::string& what) const;  // "<path>:<line>: <what>"
  // After Next() returned false: DataLoss when the end came from a read
  // error (a truncated or corrupt gzip stream), else OK.
  Status Finish() const;

 private:
  std::string path_;
  char sep_;
  bool GetLine(std::string* line);

  ::gzFile_s* in_ = nullptr;
  bool read_error_ = false;
  int line_ = 0, next_line_ = 1;
  bool first_ = true;
};

// The header's column positions by name; an error names a missing column.
StatusOr<std::vector<int>> ColumnIndexes(const CsvReader& r, const std::vector<std::string>& header,
                                         const std::vector<std::string>& wanted);

}  // namespace attune::importers
