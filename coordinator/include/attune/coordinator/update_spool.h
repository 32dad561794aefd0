// The open round's site updates, on disk, so that the coordinator's memory
// does not grow with the number of sites: an update is checked and written
// to a file as its chunks arrive (SpoolWriter), and read back one coordinate
// range at a time when the round is aggregated (SpoolReader).
//
// Files are raw little-endian float32, one per accepted update, in the
// spool folder of the coordinator's data directory. The spool is scratch: a
// coordinator restart starts the open round again, so it is cleared then.
//
// Thread-compatible: one writer per incoming update.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "attune/common/status.h"

namespace attune::coordinator {

class SpoolWriter {
 public:
  // The squares are summed in this many lanes, value i in lane i % kLanes.
  static constexpr size_t kLanes = 8;
  // Creates `path`.tmp for an update of `numel` values.
  static StatusOr<SpoolWriter> Create(std::string path, uint64_t numel);
  SpoolWriter(SpoolWriter&&) noexcept;
  SpoolWriter& operator=(SpoolWriter&&) = delete;
  ~SpoolWriter();  // removes the temp file unless Commit() succeeded

  // Values [first, first + values.size()); must continue where the last call
  // ended. InvalidArgument for NaN/Inf (naming the index) or past `numel`.
  Status Append(uint64_t first, std::span<const float> values);
  // L2 norm of everything appended so far.
  double norm() const;
  // Checks that all `numel` values arrived and renames the file into place.
  Status Commit();
  const std::string& path() const { return path_; }

 private:
  SpoolWriter(std::string path, uint64_t numel, int fd);
  std::string path_;
  uint64_t numel_;
  int fd_;
  uint64_t written_ = 0;
  std::array<double, kLanes> lanes_{};
  bool committed_ = false;
};

class SpoolReader {
 public:
  // DataLoss when the file does not hold exactly `numel` values.
  static StatusOr<SpoolReader> Open(const std::string& path, uint64_t numel);
  SpoolReader(SpoolReader&&) noexcept;
  SpoolReader& operator=(SpoolReader&&) = delete;
  ~SpoolReader();
  // Reads values [first, first + out.size()).
  Status Read(uint64_t first, std::span<float> out) const;

 private:
  SpoolReader(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
};

}  // namespace attune::coordinator
