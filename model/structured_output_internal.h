// The compiled form of a structured-output grammar, shared by its compiler
// (structured_output_schema.cc) and its matcher (structured_output_matcher.cc). Not an API.
#pragma once

#include <climits>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "model/regex_dfa.h"
#include "model/structured_output.h"

namespace tessera::model::internal {

enum class NodeType : uint8_t {
  kObject,
  kArray,
  kString,
  kNumber,
  kInteger,
  kLiterals,
  kUnion,
  kRegex,  // raw text matching `pattern` whole (the regex kind)
};

// One value's grammar. Nodes point at one another (a $ref may make a cycle); all belong to their
// Grammar.
struct GrammarNode {
  NodeType type = NodeType::kUnion;
  // kObject: property keys as they appear between the quotes (canonical JSON escaping), sorted,
  // with their value grammars; which keys are required (bits by index); the grammar of any other
  // key's value (null: no other keys).
  std::vector<std::string> keys;
  std::vector<const GrammarNode*> key_values;
  uint64_t required[2] = {0, 0};
  const GrammarNode* additional = nullptr;
  // kArray: the grammars of the first items, then of every later one (null: no more items).
  std::vector<const GrammarNode*> prefix_items;
  const GrammarNode* items = nullptr;
  int32_t min_items = 0;
  int32_t max_items = INT32_MAX;
  // kString: length in characters (code points; an escape is one).
  int32_t min_length = 0;
  int32_t max_length = INT32_MAX;
  // kString: the decoded text must contain a match (JSON schema's pattern); kRegex: the DFA.
  std::shared_ptr<const RegexDfa> pattern;
  // kLiterals: the exact byte strings allowed (compact JSON text, or raw choices), sorted, unique.
  std::vector<std::string> literals;
  // kUnion: any of these.
  std::vector<const GrammarNode*> alternatives;

  const GrammarNode* Item(int32_t index) const {
    return index < static_cast<int32_t>(prefix_items.size()) ? prefix_items[index] : items;
  }
};

// UTF-8 as RFC 3629 has it (no overlong forms, no surrogates, nothing past U+10FFFF): how many
// continuation bytes lead byte `b` needs (-1: not a lead byte) and the range of the first one.
struct Utf8Lead {
  int continuation = -1;
  uint8_t first_lo = 0x80;
  uint8_t first_hi = 0xBF;
};
inline Utf8Lead Utf8LeadOf(uint8_t b) {
  if (b < 0x80) return {0};
  if (b >= 0xC2 && b <= 0xDF) return {1};
  if (b == 0xE0) return {2, 0xA0, 0xBF};
  if (b == 0xED) return {2, 0x80, 0x9F};
  if (b >= 0xE1 && b <= 0xEF) return {2};
  if (b == 0xF0) return {3, 0x90, 0xBF};
  if (b == 0xF4) return {3, 0x80, 0x8F};
  if (b >= 0xF1 && b <= 0xF3) return {3};
  return {};
}

}  // namespace tessera::model::internal

namespace tessera::model {
struct Grammar::Nodes {
  std::deque<internal::GrammarNode> nodes;  // stable addresses
};
}  // namespace tessera::model
