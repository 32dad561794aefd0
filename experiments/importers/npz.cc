// Zip reading after PKWARE's APPNOTE.TXT: the end-of-central-directory
// record (found from the end of the file), then one central directory
// header per member giving its method, sizes (or a zip64 extra field) and
// the offset of its local header, which is followed by the member's data.
#include "npz.h"

#include <zlib.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string_view>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace attune::importers {
namespace {

uint64_t Le(const std::string& b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
  return v;
}

Status Damaged(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat(path, ": not a readable .npz (", what, ")"));
}

// Deflate cannot expand data more than 1032-fold: a member that claims
// more (a lie of its header, found by fuzz/targets/npz.cc: 2 GiB was
// allocated for a file of a few bytes) is refused before any allocation.
constexpr uint64_t kMaxDeflateRatio = 1032;

StatusOr<std::string> Inflate(const std::string& path, const std::string& member,
                              std::string_view in, uint64_t size) {
  if (size > in.size() * kMaxDeflateRatio + 64 || size > UINT32_MAX) {
    return Damaged(path, absl::StrCat(member, ": claims ", size, " bytes from ", in.size(),
                                      " compressed, more than deflate can give"));
  }
  std::string out(size, '\0');
  z_stream z{};
  if (inflateInit2(&z, -MAX_WBITS) != Z_OK) return absl::InternalError("zlib: inflateInit2 failed");
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = inflate(&z, Z_FINISH);
  const uint64_t produced = z.total_out;
  inflateEnd(&z);
  if (rc != Z_STREAM_END || produced != size) {
    return Damaged(path, absl::StrCat(member, ": deflate stream does not inflate to ", size,
                                      " bytes"));
  }
  return out;
}

}  // namespace

StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  const std::string b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // End of central directory: signature 0x06054b50, 22 bytes + a comment.
  if (b.size() < 22) return Damaged(path, "shorter than a zip end record");
  size_t eocd = std::string::npos;
  for (size_t i = b.size() - 22 + 1; i-- > 0 && b.size() - i <= 22 + 0xffff;) {
    if (Le(b, i, 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  }
  if (eocd == std::string::npos) return Damaged(path, "no zip end-of-central-directory record");
  const uint64_t entries = Le(b, eocd + 10, 2);
  uint64_t at = Le(b, eocd + 16, 4);
  std::map<std::string, NpyArray> out;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > b.size() || Le(b, at, 4) != 0x02014b50) {
      return Damaged(path, absl::StrCat("central directory entry ", e, " is not where it says"));
    }
    const uint64_t method = Le(b, at + 10, 2);
    const uint32_t crc = static_cast<uint32_t>(Le(b, at + 16, 4));
    uint64_t packed = Le(b, at + 20, 4), size = Le(b, at + 24, 4);
    const uint64_t name_len = Le(b, at + 28, 2), extra_len = Le(b, at + 30, 2),
                   comment_len = Le(b, at + 32, 2);
    uint64_t local = Le(b, at + 42, 4);
    if (at + 46 + name_len + extra_len > b.size()) return Damaged(path, "central directory truncated");
    const std::string name = b.substr(at + 46, name_len);
    // zip64: the 32-bit fields that read 0xffffffff are in extra field 1,
    // in the order size, packed size, local header offset.
    // A field's length is the writer's word: nothing is read past the
    // extra area's end.
    const uint64_t extra_end = at + 46 + name_len + extra_len;
    for (uint64_t x = at + 46 + name_len; x + 4 <= extra_end;) {
      const uint64_t id = Le(b, x, 2), len = Le(b, x + 2, 2);
      if (id == 1) {
        uint64_t f = x + 4;
        for (uint64_t* v : {&size, &packed, &local}) {
          if (*v == 0xffffffffu && f + 8 <= x + 4 + len && f + 8 <= extra_end) {
            *v = Le(b, f, 8);
            f += 8;
          }
        }
      }
      x += 4 + len;
    }
    at += 46 + name_len + extra_len + comment_len;
    // `local` may be any 64-bit value (zip64): compared without overflow.
    if (local > b.size() || b.size() - local < 30 || Le(b, local, 4) != 0x04034b50) {
      return Damaged(path, absl::StrCat(name, ": local header missing"));
    }
    const uint64_t data = local + 30 + Le(b, local + 26, 2) + Le(b, local + 28, 2);
    if (data > b.size() || packed > b.size() - data) {
      return Damaged(path, absl::StrCat(name, ": data runs past the end of the file"));
    }
    const std::string_view raw(b.data() + data, packed);
    std::string bytes;
    if (method == 0) {
      if (packed != size) return Damaged(path, absl::StrCat(name, ": stored sizes differ"));
      bytes.assign(raw);
    } else if (method == 8) {
      ATTUNE_ASSIGN_OR_RETURN(bytes, Inflate(path, name, raw, size));
    } else {
      return absl::UnimplementedError(
          absl::StrCat(path, ": ", name, ": zip compression method ", method,
                       " (only stored and deflate are read)"));
    }
    if (crc32(0, reinterpret_cast<const Bytef*>(bytes.data()), static_cast<uInt>(bytes.size())) !=
        crc) {
      return Damaged(path, absl::StrCat(name, ": CRC-32 mismatch"));
    }
    if (!absl::EndsWith(name, ".npy")) continue;
    ATTUNE_ASSIGN_OR_RETURN(NpyArray array,
                            ParseNpy(bytes, absl::StrCat(path, ":", name), /*convert_numeric=*/true));
    out.emplace(name.substr(0, name.size() - 4), std::move(array));
  }
  return out;
}

}  // namespace attune::importers
