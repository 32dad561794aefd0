// PNG images (png.h ReadPng, ReadPngGray: chest X-rays, polyps): any bytes
// decode to an image of width × height pixels, at most kMaxPngPixels, or
// are refused.
//
// Every chunk of a PNG carries a CRC-32, and libpng refuses a critical
// chunk whose CRC is wrong: a mutated header would almost never get past
// it. So the input's chunks get their CRCs made right before it is read
// (an input that does not start as a PNG is read as it is), and the
// fuzzer reaches the header's sizes and the image data.
#include <zlib.h>

#include <cstdlib>
#include <string>

#include "attune/common/png.h"
#include "fuzz_util.h"

namespace {

uint32_t Be32(const std::string& b, size_t at) {
  return (uint32_t{static_cast<uint8_t>(b[at])} << 24) |
         (uint32_t{static_cast<uint8_t>(b[at + 1])} << 16) |
         (uint32_t{static_cast<uint8_t>(b[at + 2])} << 8) | uint32_t{static_cast<uint8_t>(b[at + 3])};
}

std::string WithRightCrcs(std::string b) {
  static const std::string kSignature = "\x89PNG\r\n\x1a\n";
  if (b.compare(0, kSignature.size(), kSignature) != 0) return b;
  // Chunk: length (4), type (4), data (length), CRC of type and data (4).
  for (size_t at = kSignature.size(); b.size() - at >= 12;) {
    const uint64_t length = Be32(b, at);
    if (length > b.size() - at - 12) break;
    const uLong crc = crc32(0, reinterpret_cast<const Bytef*>(b.data() + at + 4),
                            static_cast<uInt>(4 + length));
    const size_t end = at + 8 + length;
    for (int i = 0; i < 4; ++i) b[end + i] = static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
    at = end + 4;
  }
  return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  const std::string fixed =
      WithRightCrcs(std::string(reinterpret_cast<const char*>(data), size));
  const std::string& path =
      fuzz::WriteInput(reinterpret_cast<const uint8_t*>(fixed.data()), fixed.size(), ".png");
  StatusOr<RgbImage> rgb = ReadPng(path);
  if (rgb.ok() && (rgb->pixels.size() != static_cast<size_t>(rgb->width) * rgb->height * 3 ||
                   static_cast<uint64_t>(rgb->width) * rgb->height > kMaxPngPixels)) {
    std::abort();
  }
  StatusOr<GrayImage> gray = ReadPngGray(path);
  if (gray.ok() && gray->pixels.size() != static_cast<size_t>(gray->width) * gray->height) {
    std::abort();
  }
  return 0;
}
