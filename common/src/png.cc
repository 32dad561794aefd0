#include "attune/common/png.h"

#include <png.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"

namespace attune {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

}  // namespace

Status WritePng(const std::string& path, const RgbImage& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != 3u * image.width * image.height) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a valid RGB image"));
  }
  const std::string tmp = path + ".tmp";
  File f(std::fopen(tmp.c_str(), "wb"));
  if (!f) return absl::InternalError(absl::StrCat(tmp, ": cannot open for writing"));
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    return absl::ResourceExhaustedError("libpng: out of memory");
  }
  // libpng reports errors by longjmp; nothing with a destructor lives
  // between here and the end of the writes.
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return absl::InternalError(absl::StrCat(tmp, ": libpng failed to write"));
  }
  png_init_io(png, f.get());
  png_set_IHDR(png, info, image.width, image.height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < image.height; ++y) {
    png_write_row(png, image.pixels.data() + 3u * y * image.width);
  }
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  if (std::fflush(f.get()) != 0) return absl::InternalError(absl::StrCat(tmp, ": write failed"));
  f.reset();
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat(path, ": ", ec.message()));
  return absl::OkStatus();
}

namespace {

// Reads `path` with libpng's simplified API into `format` (PNG_FORMAT_*).
Status ReadPngAs(const std::string& path, uint32_t format, int* width, int* height,
                 std::vector<uint8_t>* pixels) {
  png_image img{};
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&img, path.c_str())) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a PNG (", img.message, ")"));
  }
  if (uint64_t{img.width} * img.height > kMaxPngPixels) {
    png_image_free(&img);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a PNG of ", img.width, " x ", img.height, " pixels; at most ",
                     kMaxPngPixels, " pixels are read"));
  }
  img.format = format;
  *width = static_cast<int>(img.width);
  *height = static_cast<int>(img.height);
  pixels->resize(PNG_IMAGE_SIZE(img));
  const png_color black{0, 0, 0};
  if (!png_image_finish_read(&img, &black, pixels->data(), 0, nullptr)) {
    png_image_free(&img);
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", img.message));
  }
  return absl::OkStatus();
}

}  // namespace

StatusOr<RgbImage> ReadPng(const std::string& path) {
  RgbImage out;
  ATTUNE_RETURN_IF_ERROR(ReadPngAs(path, PNG_FORMAT_RGB, &out.width, &out.height, &out.pixels));
  return out;
}

StatusOr<GrayImage> ReadPngGray(const std::string& path) {
  GrayImage out;
  ATTUNE_RETURN_IF_ERROR(ReadPngAs(path, PNG_FORMAT_GRAY, &out.width, &out.height, &out.pixels));
  return out;
}

}  // namespace attune
