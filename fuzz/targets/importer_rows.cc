// The dataset readers' row and table parsers (importers/readers.h). The first
// byte picks the reader (% 4: TCGA glioma, MIMIC-IV demo, NIH ChestX-ray,
// PneumoniaMNIST; bit 2 sets its --site-by column); the rest, cut at
// "\n=====\n", is that reader's files in the order of kReaders (the last
// takes the remainder), written into one source folder of this process;
// files not given this time are removed. PneumoniaMNIST's pieces are its
// .npy members, zipped here (stored, true CRCs) so that the reader's array
// checks are reached; NIH rows can name a real 8x8 PNG, images/x.png.
// Any bytes give a cohort or an error naming the file: no crash, no
// sanitizer report, no hang, nothing written outside the folder.
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/png.h"
#include "fuzz_util.h"
#include "importers/importers.h"
#include "importers/readers.h"

using namespace attune;

namespace {

struct Reader {
  decltype(&importers::ReadTcgaGlioma) read;
  const char* site_by;
  std::vector<std::string> files;  // under the source folder, in input order
};

const Reader kReaders[] = {
    {importers::ReadTcgaGlioma, "tss", {"TCGA_GBM_LGG_Mutations_all.csv"}},
    {importers::ReadMimicIvDemo, "admission_location",
     {"hosp/patients.csv.gz", "hosp/admissions.csv.gz", "hosp/d_labitems.csv.gz",
      "hosp/labevents.csv.gz", "hosp/diagnoses_icd.csv.gz"}},
    {importers::ReadNihChestXray, "view", {"metadata_nih1000.csv"}},
    // Members of pneumoniamnist.npz, less ".npy".
    {importers::ReadPneumoniaMnist, "",
     {"train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"}},
};
constexpr char kNpz[] = "pneumoniamnist.npz";

const std::string& Source() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/attune-fuzz-import-XXXXXX";
    const std::string d = mkdtemp(tmpl) != nullptr ? tmpl : "/tmp/attune-fuzz-import";
    for (const char* sub : {"", "/hosp", "/images"}) mkdir((d + sub).c_str(), 0700);
    (void)WritePng(d + "/images/x.png", RgbImage{8, 8, std::vector<uint8_t>(8 * 8 * 3, 128)});
    return d;
  }();
  return dir;
}

void Put(const std::string& path, std::string_view bytes) {
  if (FILE* f = std::fopen(path.c_str(), "wb")) {
    std::fwrite(bytes.data(), 1, bytes.size(), f);
    std::fclose(f);
  }
}

void Le(std::string* s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}

// A zip of stored members (APPNOTE.TXT: local headers and data, the central
// directory, the end record), as numpy's savez writes them less deflate.
std::string Zip(const std::vector<std::pair<std::string, std::string_view>>& members) {
  std::string out, dir;
  for (const auto& [name, data] : members) {
    const uint64_t crc = crc32(0, reinterpret_cast<const Bytef*>(data.data()),
                               static_cast<uInt>(data.size()));
    const uint64_t local = out.size();
    for (std::string* h : {&out, &dir}) {
      const bool central = h == &dir;
      Le(h, central ? 0x02014b50 : 0x04034b50, 4);
      if (central) Le(h, 20, 2);  // version made by
      Le(h, 20, 2);               // version needed
      h->append(8, '\0');         // flags, method 0 (stored), time, date
      Le(h, crc, 4);
      Le(h, data.size(), 4);  // packed
      Le(h, data.size(), 4);  // size
      Le(h, name.size(), 2);
      h->append(central ? 12 : 2, '\0');  // extra length; comment length, disk, attributes
      if (central) Le(h, local, 4);
      *h += name;
    }
    out += data;
  }
  const uint64_t dir_at = out.size();
  out += dir;
  Le(&out, 0x06054b50, 4);
  out.append(4, '\0');  // disk numbers
  Le(&out, members.size(), 2);
  Le(&out, members.size(), 2);
  Le(&out, dir.size(), 4);
  Le(&out, dir_at, 4);
  out.append(2, '\0');  // comment length
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static constexpr std::string_view kSep = "\n=====\n";
  fuzz::Cursor in(data, size);
  const uint8_t choice = in.Byte();
  const Reader& reader = kReaders[choice % 4];
  std::vector<std::string_view> pieces{in.rest()};
  while (pieces.size() < reader.files.size()) {
    const size_t cut = pieces.back().find(kSep);
    if (cut == std::string_view::npos) break;
    const std::string_view tail = pieces.back().substr(cut + kSep.size());
    pieces.back() = pieces.back().substr(0, cut);
    pieces.push_back(tail);
  }
  // NIH rows name image files: keep them inside the source folder.
  if (reader.read == importers::ReadNihChestXray && pieces[0].find("..") != std::string_view::npos) {
    return 0;
  }
  const std::string& dir = Source();
  for (const Reader& r : kReaders) {
    for (const std::string& name : r.files) std::remove((dir + "/" + name).c_str());
  }
  std::remove((dir + "/" + kNpz).c_str());
  if (reader.read == importers::ReadPneumoniaMnist) {
    std::vector<std::pair<std::string, std::string_view>> members;
    for (size_t i = 0; i < pieces.size(); ++i) members.emplace_back(reader.files[i] + ".npy", pieces[i]);
    Put(dir + "/" + kNpz, Zip(members));
  } else {
    for (size_t i = 0; i < pieces.size(); ++i) Put(dir + "/" + reader.files[i], pieces[i]);
  }
  importers::ImportOptions options;
  options.source = dir;
  options.site_by = choice & 4 ? reader.site_by : "";
  importers::ImportReport report;
  (void)reader.read(options, &report);
  return 0;
}
