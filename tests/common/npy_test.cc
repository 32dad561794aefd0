#include "attune/common/npy.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace attune {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    auto now = std::chrono::steady_clock::now().time_since_epoch().count();
    path_ =
        fs::temp_directory_path() / ("attune_npy_test_" + std::to_string(now) +
                                     "_" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string File(const std::string& name) const {
    return (path_ / name).string();
  }

 private:
  fs::path path_;
};

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A v1.0 or v2.0 file with the given header dict (padded to 64 bytes).
std::string MakeNpy(int major, std::string dict, const std::vector<float>& v) {
  size_t prefix = major == 1 ? 10 : 12;
  size_t total = prefix + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict.push_back('\n');
  std::string bytes = "\x93NUMPY";
  bytes.push_back(static_cast<char>(major));
  bytes.push_back('\0');
  uint32_t len = static_cast<uint32_t>(dict.size());
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) {
    bytes.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  }
  bytes += dict;
  bytes.append(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  return bytes;
}

void ExpectRoundTrip(const NpyArray& array, const std::string& path) {
  ASSERT_TRUE(WriteNpy(path, array).ok());
  std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 10u);
  size_t header_len = static_cast<unsigned char>(bytes[8]) |
                      (static_cast<unsigned char>(bytes[9]) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_EQ(bytes[10 + header_len - 1], '\n');
  EXPECT_EQ(bytes.size(), 10 + header_len + array.data.size() * 4);

  StatusOr<NpyArray> read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, array.shape);
  EXPECT_EQ(read->data, array.data);
}

TEST(NpyTest, RoundTrip2D) {
  TempDir dir;
  NpyArray a;
  a.shape = {16, 32};
  for (int i = 0; i < 16 * 32; ++i) a.data.push_back(0.25f * i - 7.5f);
  ExpectRoundTrip(a, dir.File("a.npy"));
}

TEST(NpyTest, RoundTripEmpty) {
  TempDir dir;
  NpyArray a;
  a.shape = {0, 3};
  ExpectRoundTrip(a, dir.File("empty.npy"));
}

TEST(NpyTest, RoundTrip1DOddSizes) {
  TempDir dir;
  for (int n : {1, 3, 7, 13, 101}) {
    NpyArray a;
    a.shape = {n};
    for (int i = 0; i < n; ++i) a.data.push_back(1.0f / (i + 1));
    ExpectRoundTrip(a, dir.File("v" + std::to_string(n) + ".npy"));
  }
}

TEST(NpyTest, RoundTripScalar) {
  TempDir dir;
  NpyArray a;
  a.data = {3.5f};
  ExpectRoundTrip(a, dir.File("scalar.npy"));
}

TEST(NpyTest, WriteRejectsShapeMismatch) {
  TempDir dir;
  NpyArray a;
  a.shape = {2, 3};
  a.data = {1, 2, 3};
  EXPECT_EQ(WriteNpy(dir.File("bad.npy"), a).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NpyTest, WriteToMissingDirIsInternal) {
  TempDir dir;
  NpyArray a;
  a.shape = {1};
  a.data = {1};
  EXPECT_EQ(WriteNpy(dir.File("no/such/dir/a.npy"), a).code(),
            absl::StatusCode::kInternal);
}

TEST(NpyTest, ReadsVersion2AndLenientHeaders) {
  TempDir dir;
  std::string path = dir.File("v2.npy");
  WriteBytes(path, MakeNpy(2,
                           "{\"shape\": (2,3), \"fortran_order\": False,"
                           " \"descr\": \"<f4\"}",
                           {1, 2, 3, 4, 5, 6}));
  StatusOr<NpyArray> read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(read->data, (std::vector<float>{1, 2, 3, 4, 5, 6}));

  // Python 2 long suffix, no trailing comma.
  WriteBytes(path, MakeNpy(1,
                           "{'descr':'<f4','fortran_order':False,"
                           "'shape':(2L,)}",
                           {7, 8}));
  read = ReadNpy(path);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->shape, (std::vector<int64_t>{2}));
}

TEST(NpyTest, MissingFileIsNotFound) {
  TempDir dir;
  std::string path = dir.File("missing.npy");
  StatusOr<NpyArray> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(read.status().message().find(path), std::string::npos);
}

TEST(NpyTest, CorruptMagicIsDataLoss) {
  TempDir dir;
  std::string path = dir.File("corrupt.npy");
  NpyArray a;
  a.shape = {4};
  a.data = {1, 2, 3, 4};
  ASSERT_TRUE(WriteNpy(path, a).ok());
  std::string bytes = ReadBytes(path);
  bytes[1] = 'X';
  WriteBytes(path, bytes);
  StatusOr<NpyArray> read = ReadNpy(path);
  EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(read.status().message().find(path), std::string::npos);
}

TEST(NpyTest, TruncatedFileIsDataLoss) {
  TempDir dir;
  std::string path = dir.File("truncated.npy");
  NpyArray a;
  a.shape = {4, 4};
  a.data.assign(16, 1.0f);
  ASSERT_TRUE(WriteNpy(path, a).ok());
  std::string bytes = ReadBytes(path);
  for (size_t keep : {bytes.size() - 1, size_t{70}, size_t{40}, size_t{9},
                      size_t{3}, size_t{0}}) {
    WriteBytes(path, bytes.substr(0, keep));
    StatusOr<NpyArray> read = ReadNpy(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << keep;
    EXPECT_NE(read.status().message().find(path), std::string::npos);
  }
}

TEST(NpyTest, WrongDtypeOrderOrHeaderIsDataLoss) {
  TempDir dir;
  std::string path = dir.File("bad.npy");
  for (const char* dict :
       {"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }",
        "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
        "{'descr': '<f4', 'shape': (1,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': 1, }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), ",
        "not a dict"}) {
    WriteBytes(path, MakeNpy(1, dict, {1, 2}));
    StatusOr<NpyArray> read = ReadNpy(path);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << dict;
    EXPECT_NE(read.status().message().find(path), std::string::npos);
  }
}

}  // namespace
}  // namespace attune
