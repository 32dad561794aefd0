// 8-bit RGB PNG files through libpng (for `attune explain`'s heatmaps).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune::worker {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // row-major, 3 bytes per pixel

  uint8_t* at(int x, int y) { return pixels.data() + 3 * (static_cast<size_t>(y) * width + x); }
};

// Writes atomically (a temporary file renamed into place); errors name the path.
Status WritePng(const std::string& path, const RgbImage& image);
// Reads any PNG libpng reads, converted to 8-bit RGB.
StatusOr<RgbImage> ReadPng(const std::string& path);

}  // namespace attune::worker
