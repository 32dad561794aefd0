// 8-bit PNG files through libpng: RGB for `attune explain`'s heatmaps,
// grayscale for the imaging importers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "attune/common/status.h"

namespace attune {

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // row-major, 3 bytes per pixel

  uint8_t* at(int x, int y) { return pixels.data() + 3 * (static_cast<size_t>(y) * width + x); }
};

// Writes atomically (a temporary file renamed into place); errors name the path.
Status WritePng(const std::string& path, const RgbImage& image);
struct GrayImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // row-major, 1 byte per pixel
};

// The most pixels a PNG may have (8192 x 8192: a mammogram is about a
// third of that): its header's size is checked before anything is
// allocated, since a header of a few bytes can claim a million by a million.
inline constexpr uint64_t kMaxPngPixels = uint64_t{1} << 26;

// Read any PNG libpng reads (gray, palette, RGB, with or without alpha),
// converted to 8-bit RGB or to 8-bit gray (libpng's luminance). Alpha is
// composited over black. Errors name the path; InvalidArgument for an image
// of more than kMaxPngPixels.
StatusOr<RgbImage> ReadPng(const std::string& path);
StatusOr<GrayImage> ReadPngGray(const std::string& path);

}  // namespace attune
