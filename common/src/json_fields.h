// Reading JSON configuration files (study.json, site.json) with errors that
// name the file and the field. Private to attune_common.
#pragma once

#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "attune/common/status.h"
#include "nlohmann/json.hpp"

namespace attune {

// `text` as a JSON object; InvalidArgument naming `path` otherwise.
inline StatusOr<nlohmann::json> ParseJsonObject(const std::string& text, const std::string& path) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not valid JSON (check commas, quotes and brackets)"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": must be a JSON object"));
  }
  return j;
}

// Reads typed fields out of a JSON object, recording the first error with
// its full path; unknown keys are errors too (a typo must not be ignored).
class FieldReader {
 public:
  using json = nlohmann::json;
  FieldReader(const json& obj, std::string prefix, Status* status)
      : obj_(obj), prefix_(std::move(prefix)), status_(status) {}

  template <typename T>
  void Get(const char* key, T* out) {
    seen_.insert(key);
    if (!status_->ok() || !obj_.contains(key)) return;
    const json& v = obj_.at(key);
    try {
      if constexpr (std::is_same_v<T, std::string>) {
        if (!v.is_string()) return Fail(key, "must be a string");
      } else if constexpr (std::is_same_v<T, std::vector<std::string>>) {
        if (!v.is_array()) return Fail(key, "must be an array of strings");
        for (const auto& e : v)
          if (!e.is_string()) return Fail(key, "must be an array of strings");
      } else if constexpr (std::is_same_v<T, bool>) {
        if (!v.is_boolean()) return Fail(key, "must be true or false");
      } else if constexpr (std::is_integral_v<T>) {
        if (!v.is_number_integer()) return Fail(key, "must be an integer");
      } else if constexpr (std::is_floating_point_v<T>) {
        if (!v.is_number()) return Fail(key, "must be a number");
      }
      *out = v.get<T>();
    } catch (const json::exception& e) {
      Fail(key, e.what());
    }
  }

  const json* Object(const char* key) {
    seen_.insert(key);
    if (!status_->ok() || !obj_.contains(key)) return nullptr;
    if (!obj_.at(key).is_object()) {
      Fail(key, "must be an object");
      return nullptr;
    }
    return &obj_.at(key);
  }

  void RejectUnknown() {
    if (!status_->ok()) return;
    for (auto it = obj_.begin(); it != obj_.end(); ++it) {
      if (!seen_.count(it.key())) return Fail(it.key(), "unknown field");
    }
  }

 private:
  void Fail(const std::string& key, const std::string& why) {
    *status_ = absl::InvalidArgumentError(absl::StrCat(prefix_, key, ": ", why));
  }

  const json& obj_;
  std::string prefix_;
  Status* status_;
  std::set<std::string> seen_;
};

}  // namespace attune
