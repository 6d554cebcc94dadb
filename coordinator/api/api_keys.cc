#include "coordinator/api/api_keys.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tessera::coordinator::api {
namespace {

// Equal in time that depends on key.size() only.
bool SameKey(absl::string_view given, const std::string& key) {
  unsigned diff = given.size() == key.size() ? 0u : 1u;
  for (size_t i = 0; i < key.size(); ++i) {
    const unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= g ^ static_cast<unsigned char>(key[i]);
  }
  return diff == 0;
}

}  // namespace

absl::Status ApiKeys::Validate(const std::vector<std::string>& keys, absl::string_view flag) {
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": key ", i + 1, " is empty"));
    }
    for (const char c : keys[i]) {
      const auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u == 0x7f) {
        return absl::InvalidArgumentError(absl::StrCat(
            flag, ": key ", i + 1,
            " holds whitespace or a control character, which an Authorization header cannot "
            "carry"));
      }
    }
  }
  return absl::OkStatus();
}

bool ApiKeys::Allows(absl::string_view authorization) const {
  if (keys_.empty()) return true;
  const size_t space = authorization.find(' ');
  if (space == absl::string_view::npos ||
      !absl::EqualsIgnoreCase(authorization.substr(0, space), "bearer")) {
    return false;
  }
  const absl::string_view given = authorization.substr(space + 1);
  bool match = false;
  for (const std::string& key : keys_) match |= SameKey(given, key);  // no early exit
  return match;
}

}  // namespace tessera::coordinator::api
