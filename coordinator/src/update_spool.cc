#include "attune/coordinator/update_spool.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace attune::coordinator {
namespace {

Status Errno(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

// Adds the square of value i to lane (start + i) % kLanes: each lane sums
// its values in index order whatever pieces they came in, so the norm is the
// same for the same update however the network cut it, and the lanes are
// independent sums (no branch, no chain of dependent additions).
void AddSquares(uint64_t start, std::span<const float> v,
                std::array<double, SpoolWriter::kLanes>& lanes) {
  constexpr size_t L = SpoolWriter::kLanes;
  size_t i = 0;
  for (; i < v.size() && (start + i) % L != 0; ++i) {
    lanes[(start + i) % L] += static_cast<double>(v[i]) * v[i];
  }
  std::array<double, L> acc = lanes;
  for (; i + L <= v.size(); i += L) {
    for (size_t k = 0; k < L; ++k) acc[k] += static_cast<double>(v[i + k]) * v[i + k];
  }
  for (size_t k = 0; i + k < v.size(); ++k) acc[k] += static_cast<double>(v[i + k]) * v[i + k];
  lanes = acc;
}

double Total(const std::array<double, SpoolWriter::kLanes>& lanes) {
  double t = 0;
  for (double l : lanes) t += l;
  return t;
}

}  // namespace

SpoolWriter::SpoolWriter(std::string path, uint64_t numel, int fd)
    : path_(std::move(path)), numel_(numel), fd_(fd) {}

SpoolWriter::SpoolWriter(SpoolWriter&& o) noexcept
    : path_(std::move(o.path_)), numel_(o.numel_), fd_(o.fd_), written_(o.written_),
      lanes_(o.lanes_), committed_(o.committed_) {
  o.fd_ = -1;
  o.committed_ = true;  // the moved-from writer owns no file
}

SpoolWriter::~SpoolWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink((path_ + ".tmp").c_str());
}

StatusOr<SpoolWriter> SpoolWriter::Create(std::string path, uint64_t numel) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("cannot create", tmp);
  return SpoolWriter(std::move(path), numel, fd);
}

Status SpoolWriter::Append(uint64_t first, std::span<const float> values) {
  if (first != written_) {
    return absl::InternalError(absl::StrCat("spool: values at ", first, ", expected ", written_));
  }
  if (written_ + values.size() > numel_) {
    return absl::InvalidArgumentError(
        absl::StrCat("update has more than the model's ", numel_, " values"));
  }
  // Checked before anything is written: a NaN or Inf makes its lane's sum
  // non-finite (finite values cannot: every lane stays far below the
  // largest double), and only then is the piece searched for the culprit.
  std::array<double, kLanes> lanes = lanes_;
  AddSquares(written_, values, lanes);
  if (!std::isfinite(Total(lanes))) {
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return absl::InvalidArgumentError(absl::StrCat("update value ", written_ + i, " is ",
                                                       std::isnan(values[i]) ? "NaN" : "Inf"));
      }
    }
  }
  const char* p = reinterpret_cast<const char*>(values.data());
  size_t left = values.size_bytes();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write", path_ + ".tmp");
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  lanes_ = lanes;
  written_ += values.size();
  return absl::OkStatus();
}

double SpoolWriter::norm() const { return std::sqrt(Total(lanes_)); }

Status SpoolWriter::Commit() {
  if (written_ != numel_) {
    return absl::InvalidArgumentError(
        absl::StrCat("update has ", written_, " values, the model has ", numel_));
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    return Errno("close", path_ + ".tmp");
  }
  fd_ = -1;
  if (::rename((path_ + ".tmp").c_str(), path_.c_str()) != 0) return Errno("rename", path_);
  committed_ = true;
  return absl::OkStatus();
}

SpoolReader::SpoolReader(SpoolReader&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) {
  o.fd_ = -1;
}

SpoolReader::~SpoolReader() {
  if (fd_ >= 0) ::close(fd_);
}

StatusOr<SpoolReader> SpoolReader::Open(const std::string& path, uint64_t numel) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  SpoolReader r(path, fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Errno("stat", path);
  if (static_cast<uint64_t>(st.st_size) != numel * sizeof(float)) {
    return absl::DataLossError(absl::StrCat(path, ": ", st.st_size, " bytes, expected ",
                                            numel * sizeof(float)));
  }
  return r;
}

Status SpoolReader::Read(uint64_t first, std::span<float> out) const {
  char* p = reinterpret_cast<char*>(out.data());
  size_t left = out.size_bytes();
  off_t off = static_cast<off_t>(first * sizeof(float));
  while (left > 0) {
    const ssize_t n = ::pread(fd_, p, left, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read", path_);
    }
    if (n == 0) return absl::DataLossError(absl::StrCat(path_, ": short read"));
    p += n;
    off += n;
    left -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace attune::coordinator
