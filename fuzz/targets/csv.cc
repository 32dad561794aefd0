// The publishers' CSV files (importers/csv.h CsvReader: gzip or plain, BOM,
// CRLF, quoted fields across lines): any bytes read to records or stop
// with a status naming the file and line.
#include "fuzz_util.h"
#include "importers/csv.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  fuzz::Cursor in(data, size);
  const char sep = in.Byte() % 2 == 1 ? '\t' : ',';
  const std::string_view rest = in.rest();
  importers::CsvReader r(fuzz::WriteInput(reinterpret_cast<const uint8_t*>(rest.data()),
                                          rest.size(), ".csv"),
                         sep);
  if (!r.ok()) return 0;
  std::vector<std::string> fields;
  int records = 0;
  while (r.Next(&fields) && records < 100000) ++records;
  (void)r.Finish();
  return 0;
}
