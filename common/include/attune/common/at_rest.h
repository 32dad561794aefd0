// Encryption at rest for the coordinator's data directory (store.h): a
// 256-bit key kept in a key file, and an envelope that seals each stored
// model, strategy state and audit sum with AES-256-GCM under it.
//
// Key file: 64 hex digits and a newline, mode 0600 (`attune provision init`
// writes one for the coordinator). A key file that others can read is
// refused, as ssh refuses such private keys.
//
// Envelope: "ATNE" ‖ version 1 ‖ 12-byte random nonce ‖ ciphertext ‖ 16-byte
// tag, with associated data naming what it is (study, round, item), so a
// sealed model cannot be passed off as another round's or another study's.
#pragma once

#include <string>
#include <string_view>

#include "attune/common/crypto.h"
#include "attune/common/status.h"

namespace attune::at_rest {

inline constexpr size_t kKeyBytes = 32;

// Writes a fresh random key to `path` (mode 0600). AlreadyExists when the
// file exists: a key is never overwritten (the data it protects would be lost).
Status MakeKeyFile(const std::string& path);

// The key in `path`. NotFound; PermissionDenied when group or others may
// read the file; InvalidArgument when it does not hold 64 hex digits.
StatusOr<crypto::SecretBytes> LoadKeyFile(const std::string& path);

// Seals `plain`, bound to `aad`.
StatusOr<std::string> Seal(const crypto::SecretBytes& key, std::string_view aad,
                           std::string_view plain);

// Opens an envelope made by Seal with the same key and aad. DataLoss when
// `stored` is not an envelope or does not open (another key, another aad,
// or altered bytes).
StatusOr<std::string> Open(const crypto::SecretBytes& key, std::string_view aad,
                           std::string_view stored);

// True when `stored` starts like an envelope.
bool IsSealed(std::string_view stored);

}  // namespace attune::at_rest
