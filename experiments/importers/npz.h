// NumPy .npz archives: a zip file of .npy members, stored or deflated (what
// numpy.savez and savez_compressed write, zip64 extras included).
#pragma once

#include <map>
#include <string>

#include "attune/common/npy.h"
#include "attune/common/status.h"

namespace attune::importers {

// Every member "<name>.npy" as <name> → array (numeric dtypes converted to
// float). Errors name the archive and the member: NotFound, DataLoss for a
// damaged archive (bad signatures, sizes past the end, a CRC mismatch),
// Unimplemented for another compression method.
StatusOr<std::map<std::string, NpyArray>> ReadNpz(const std::string& path);

}  // namespace attune::importers
