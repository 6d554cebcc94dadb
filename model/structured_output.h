// Structured outputs (vLLM's structured_outputs / guided decoding, OpenAI's response_format):
// what a request asks its output to be (StructuredOutput), the grammar compiled from it (Grammar)
// and a byte-level matcher over that grammar (GrammarMatcher). The token-level side, which turns
// a matcher's state into a mask over a vocabulary, is model/token_constraint.h.
//
// A Grammar is a tree of typed nodes compiled from a JSON schema (docs/decisions/0015): object
// (properties, required, additionalProperties), array (items, prefixItems, minItems, maxItems),
// string (minLength, maxLength, pattern: model/regex_dfa.h over the decoded text), number, integer,
// boolean and null, enum and const (the values' compact JSON text), anyOf/oneOf (alternatives;
// oneOf is not checked for exclusivity), allOf with one schema, $ref into the document ($defs,
// definitions, recursion allowed), and type lists. Keywords that constrain values in ways the
// grammar cannot express (minimum, multipleOf, ...) are refused by name rather than ignored;
// annotations (title, description, format, ...) are ignored. Objects whose schema lists properties
// take no others unless additionalProperties says so (as OpenAI's strict mode and xgrammar); an
// object schema without properties takes any members.
//
// The JSON a matcher accepts: keys in any order, each at most once, required ones before '}';
// keys and enum strings in their canonical escaping; where JSON allows whitespace, one space, or a
// newline and an indent of at most kIndentPerLevel spaces or tabs per nesting level (pretty
// printing; a model cannot pad a gap with more, which weak models do); numbers of at most
// kMaxNumberDigits digits a part and exponents of two; nesting at most kMaxNesting deep; strings of
// well-formed UTF-8 with paired surrogate escapes, and no \u escapes in a string with a pattern.
// A regex output is raw text that matches the expression whole.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::model {

struct StructuredOutput {
  enum class Kind : int32_t {
    kNone = 0,
    kJsonObject = 1,  // any JSON object (response_format {"type": "json_object"})
    kJsonSchema = 2,  // spec: a JSON schema (response_format json_schema; vLLM's "json")
    kChoice = 3,      // spec: a JSON array of strings; the output is exactly one of them, raw
    kRegex = 4,       // spec: a regular expression (model/regex_dfa.h) the whole output matches
  };
  Kind kind = Kind::kNone;
  std::string spec;
  // >= 0: the output is free until this token is generated, and the grammar holds after it: a
  // reasoning model thinks first and answers in the grammar after its "</think>" token (what
  // vLLM does for reasoning models). -1: the grammar holds from the first token.
  int32_t start_after_token = -1;
  bool operator==(const StructuredOutput&) const = default;
};

// vLLM's StructuredOutputsParams (the request field structured_outputs, and SamplingParams'
// structured_outputs / guided_decoding over KServe), as JSON text: one of json (a schema, as an
// object or a string), json_object (true), choice (a list of strings) and regex (a string);
// false and null entries are skipped, and vLLM's backend options are accepted and ignored.
// kInvalidArgument for grammar and structural_tag (not supported), several kinds, or unknown
// fields; kind kNone when every entry is false or null. The spec is not compiled here.
absl::StatusOr<StructuredOutput> StructuredOutputFromVllmParams(absl::string_view json_text);

inline constexpr int32_t kIndentPerLevel = 4;
inline constexpr int32_t kMaxNumberDigits = 20;
inline constexpr int32_t kMaxNesting = 48;
inline constexpr int32_t kMaxObjectProperties = 128;
// A value may be any of at most kMaxAlternatives schemas (anyOf, oneOf, type lists, nested), and
// a matcher follows at most kMaxParses alternative parses at once: bounds on the work of a byte.
inline constexpr int32_t kMaxAlternatives = 256;
inline constexpr int32_t kMaxParses = 1024;

class RegexDfa;

namespace internal {
struct GrammarNode;
// One level of a parse: the value being read, and how far (structured_output_matcher.cc).
struct GrammarFrame {
  const GrammarNode* node = nullptr;  // the value's grammar (the root level: the whole grammar's)
  uint8_t phase = 0;
  uint8_t ws = 0;     // the current gap: 0 empty, 1 a space, 2 + n a newline and n indent bytes
  uint8_t lex = 0;    // strings and keys: the lexer state (structured_output_matcher.cc)
  uint8_t utf8 = 0;   // UTF-8 continuation bytes still due
  int32_t count = 0;  // characters, items, bytes (keys, literals), digits; root: 1 if raw text
  int32_t lo = 0;     // keys, literals: candidates [lo, hi); numbers: fraction digits
  int32_t hi = 0;     // numbers: exponent digits
  int32_t pending =
      -1;  // object: the property whose value comes next (-1: another); strings, keys: the lexer's
  uint64_t used[2] = {0, 0};  // object: the properties given (kMaxObjectProperties bits)
  bool operator==(const GrammarFrame&) const = default;
};
}  // namespace internal

// Immutable once compiled; shared (shared_ptr) by every matcher made from it, on any thread.
class Grammar {
 public:
  // kInvalidArgument naming what is wrong: a spec that is not JSON, an unsupported keyword (with
  // its JSON pointer), a $ref outside the document, a choice list that is empty or holds a
  // non-string, and so on. kNone is refused.
  static absl::StatusOr<std::shared_ptr<const Grammar>> Compile(const StructuredOutput& spec);

  ~Grammar();
  Grammar(const Grammar&) = delete;
  Grammar& operator=(const Grammar&) = delete;

  const internal::GrammarNode* root() const { return root_; }
  // JSON may have whitespace before its value; a choice is the raw text alone.
  bool leading_whitespace() const { return leading_whitespace_; }

 private:
  friend class GrammarBuilder;
  Grammar();
  struct Nodes;
  std::unique_ptr<Nodes> nodes_;
  const internal::GrammarNode* root_ = nullptr;
  bool leading_whitespace_ = true;
};

// The state of one output in its grammar: which bytes may come next. Not thread-safe; copyable
// (a copy goes on independently).
class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const Grammar> grammar);
  ~GrammarMatcher();
  GrammarMatcher(const GrammarMatcher&);
  GrammarMatcher& operator=(const GrammarMatcher&);

  // Consumes `byte` when the grammar allows it there (true); otherwise false, state unchanged.
  bool Advance(uint8_t byte);
  // All of `bytes`, or none of them (false, state unchanged).
  bool AdvanceBytes(absl::string_view bytes);
  // The bytes so far are a whole value of the grammar.
  bool IsAccepting() const;
  // Some byte may still come (false once a complete object or string has been closed).
  bool CanContinue() const;
  // The output is inside a JSON string (or an object key that may be any string) with no length
  // limit, between characters: any plain text may follow (token_constraint.h).
  bool InPlainString() const;
  // The output is inside a JSON string with a pattern and no length limit, between characters:
  // which plain text may follow depends only on the pattern's DFA state, given here.
  bool InPatternString(const RegexDfa** pattern, int32_t* state) const;

  // The state as alternative parses (an internal form that token_constraint.cc walks).
  struct State {
    std::vector<internal::GrammarFrame> frames;  // the parses' stacks, one after another
    std::vector<uint32_t> ends;                  // where each parse's stack ends in `frames`
    void Clear() {
      frames.clear();
      ends.clear();
    }
  };
  const State& state() const { return state_; }
  // `in` after `byte`, into `out` (cleared first): an empty `out` means the byte is not allowed.
  // `out` must not be `in`.
  void Step(const State& in, uint8_t byte, State& out) const;
  static bool IsAcceptingState(const State& state);

 private:
  std::shared_ptr<const Grammar> grammar_;
  State state_;
  State scratch_;
  mutable std::vector<internal::GrammarFrame> stack_;  // Step's working stack, kept for capacity
};

}  // namespace tessera::model
