#include "attune/common/at_rest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "attune/common/config.h"

namespace attune::at_rest {
namespace {

constexpr std::string_view kMagic = "ATNE";
constexpr char kVersion = 1;
constexpr size_t kHeader = 4 + 1 + crypto::kAeadNonceBytes;

crypto::ByteView Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Status MakeKeyFile(const std::string& path) {
  ATTUNE_ASSIGN_OR_RETURN(crypto::SecretBytes key, crypto::RandomBytes(kKeyBytes));
  std::string text;
  for (uint8_t b : key) {
    text.push_back("0123456789abcdef"[b >> 4]);
    text.push_back("0123456789abcdef"[b & 15]);
  }
  text.push_back('\n');
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    const int err = errno;
    crypto::Wipe(text.data(), text.size());
    if (err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat(path, ": exists; an at-rest key is never overwritten"));
    }
    return absl::InternalError(absl::StrCat(path, ": cannot create: ", std::strerror(err)));
  }
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                  ::fsync(fd) == 0;
  ::close(fd);
  crypto::Wipe(text.data(), text.size());
  if (!ok) return absl::InternalError(absl::StrCat(path, ": cannot write the key"));
  return absl::OkStatus();
}

StatusOr<crypto::SecretBytes> LoadKeyFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat("at-rest key file ", path, ": ", std::strerror(errno)));
  }
  if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return absl::PermissionDeniedError(absl::StrCat("at-rest key file ", path,
                                                    " is accessible by group or others (mode ",
                                                    mode, "): chmod 600 it"));
  }
  ATTUNE_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r')) {
    text.pop_back();
  }
  crypto::SecretBytes key;
  bool ok = text.size() == 2 * kKeyBytes;
  for (size_t i = 0; ok && i < text.size(); i += 2) {
    const int hi = HexDigit(text[i]), lo = HexDigit(text[i + 1]);
    ok = hi >= 0 && lo >= 0;
    key.push_back(static_cast<uint8_t>(hi * 16 + lo));
  }
  crypto::Wipe(text.data(), text.size());
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("at-rest key file ", path, " must hold 64 hex digits"));
  }
  return key;
}

StatusOr<std::string> Seal(const crypto::SecretBytes& key, std::string_view aad,
                           std::string_view plain) {
  ATTUNE_ASSIGN_OR_RETURN(crypto::SecretBytes nonce, crypto::RandomBytes(crypto::kAeadNonceBytes));
  ATTUNE_ASSIGN_OR_RETURN(crypto::Bytes sealed,
                          crypto::Seal(crypto::Aead::kAesGcm, key, nonce, Bytes(aad), Bytes(plain)));
  std::string out;
  out.reserve(kHeader + sealed.size());
  out.append(kMagic);
  out.push_back(kVersion);
  out.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
  out.append(reinterpret_cast<const char*>(sealed.data()), sealed.size());
  return out;
}

bool IsSealed(std::string_view stored) {
  return stored.size() >= kHeader + crypto::kAeadTagBytes && stored.substr(0, 4) == kMagic &&
         stored[4] == kVersion;
}

StatusOr<std::string> Open(const crypto::SecretBytes& key, std::string_view aad,
                           std::string_view stored) {
  if (!IsSealed(stored)) {
    return absl::DataLossError(std::string(aad) + ": not sealed at rest");
  }
  StatusOr<crypto::SecretBytes> plain =
      crypto::Open(crypto::Aead::kAesGcm, key, Bytes(stored.substr(5, crypto::kAeadNonceBytes)),
                   Bytes(aad), Bytes(stored.substr(kHeader)));
  if (!plain.ok()) {
    return absl::DataLossError(
        std::string(aad) + ": does not open with the at-rest key (another key, or the data was altered)");
  }
  return std::string(plain->begin(), plain->end());
}

}  // namespace attune::at_rest
