// PNG images (png.h ReadPng, ReadPngGray: chest X-rays, polyps): any bytes
// decode to an image of width × height pixels, or are refused.
#include <cstdlib>

#include "attune/common/png.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace attune;
  const std::string& path = fuzz::WriteInput(data, size, ".png");
  StatusOr<RgbImage> rgb = ReadPng(path);
  if (rgb.ok() && rgb->pixels.size() != static_cast<size_t>(rgb->width) * rgb->height * 3) {
    std::abort();
  }
  StatusOr<GrayImage> gray = ReadPngGray(path);
  if (gray.ok() && gray->pixels.size() != static_cast<size_t>(gray->width) * gray->height) {
    std::abort();
  }
  return 0;
}
