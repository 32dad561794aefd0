// Minimal NumPy .npy reader/writer for little-endian float32 arrays in C
// order (and, for importers, a parser of other numeric dtypes): the format Attune uses for precomputed imaging patch features.
// Format versions 1.0 and 2.0 are read; 1.0 is written.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "attune/common/status.h"

namespace attune {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // product(shape) values, C order
};

// Writes `array` to `path` (dtype '<f4', fortran_order False).
// InvalidArgument when data.size() != product(shape); Internal on I/O errors.
Status WriteNpy(const std::string& path, const NpyArray& array);

// Reads a '<f4' C-order array. Errors name the file: NotFound when it does
// not exist; DataLoss for a bad magic, a malformed header, another dtype,
// fortran order, or a file shorter than the header says.
StatusOr<NpyArray> ReadNpy(const std::string& path);

// Parses the bytes of a .npy file (a member of an .npz, say); `name` stands
// for the file in errors. With convert_numeric, '<f8', '<i8', '|u1' and
// '|b1' arrays are also accepted and converted to float.
StatusOr<NpyArray> ParseNpy(std::string_view bytes, const std::string& name,
                            bool convert_numeric = false);

}  // namespace attune
