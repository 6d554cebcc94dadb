// A byte-level DFA compiled from a regular expression, for structured outputs: vLLM's `regex`
// kind (the output matches the whole expression) and JSON schema's `pattern` keyword (a string
// contains a match, unless ^ and $ anchor it; ECMA-262 semantics for the subset below).
//
// The syntax (a subset shared by ECMA-262, Python and RE2): literals (UTF-8 included), `.`
// (any character but a newline), classes `[a-z_]` and `[^...]` of ASCII characters and ranges,
// escapes \d \w \s \D \W \S \n \t \r \f \v \uXXXX and escaped punctuation, groups `(...)` and
// `(?:...)`, alternation `|`, quantifiers `* + ? {m} {m,} {m,n}` (lazy forms `*?` ... match the
// same language), and `^` / `$` at the very start and end. Back-references, look-around, word
// boundaries and anchors elsewhere are kInvalidArgument naming what is not supported. Negated
// classes and `.` match any non-ASCII character; non-ASCII characters in classes are refused.
//
// Immutable after Compile; shared by the grammars that use it, from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::model {

class RegexDfa {
 public:
  // kInvalidArgument "regex: ..." for syntax outside the subset, or an expression whose DFA would
  // exceed kMaxStates states. `search`: true for JSON schema's pattern (a match anywhere unless
  // anchored); false for a whole-text match.
  static absl::StatusOr<std::shared_ptr<const RegexDfa>> Compile(absl::string_view pattern,
                                                                 bool search);
  static constexpr int32_t kMaxStates = 2048;
  static constexpr int32_t kDead = -1;

  int32_t start() const { return 0; }
  // The state after `byte`, or kDead when no match can follow.
  int32_t Next(int32_t state, uint8_t byte) const { return next_[state * 256 + byte]; }
  bool Accepting(int32_t state) const { return accepting_[state]; }
  int32_t num_states() const { return static_cast<int32_t>(accepting_.size()); }

 private:
  RegexDfa() = default;
  std::vector<int32_t> next_;  // [state * 256 + byte]
  std::vector<bool> accepting_;
};

}  // namespace tessera::model
