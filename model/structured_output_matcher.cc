// GrammarMatcher: a pushdown recognizer of the JSON a Grammar describes, one byte at a time. A
// state is a set of parses (a union's alternatives are followed side by side until bytes tell
// them apart); each parse is a stack of frames, the root level at the bottom.
#include <algorithm>
#include <utility>

#include "model/regex_dfa.h"
#include "model/structured_output.h"
#include "model/structured_output_internal.h"
#include "model/tokenizer_internal.h"

namespace tessera::model {

using internal::GrammarFrame;
using internal::GrammarNode;
using internal::NodeType;

namespace {

enum Phase : uint8_t {
  kRootValue,      // before the value
  kRootDone,       // after it: nothing more
  kObjOpen,        // after '{'
  kObjKeyNext,     // after ','
  kObjColon,       // after a key
  kObjValue,       // after ':'
  kObjAfterValue,  // after a member's value
  kKey,            // in a key's quotes
  kArrOpen,        // after '['
  kArrNext,        // after ','
  kArrAfterValue,  // after an item
  kStr,            // in a string's quotes
  kNumMinus,
  kNumZero,
  kNumInt,
  kNumDot,
  kNumFrac,
  kNumExp,
  kNumExpSign,
  kNumExpDigits,
  kLit,        // in a literal (true, an enum's value, a choice)
  kRegexText,  // in raw text under a regular expression (its DFA state in `hi`)
};

using Stack = std::vector<GrammarFrame>;

bool IsWhitespace(uint8_t b) { return b == ' ' || b == '\n' || b == '\t' || b == '\r'; }
static_assert(2 + kIndentPerLevel * kMaxNesting <= 255, "GrammarFrame::ws holds a gap");
bool IsDigit(uint8_t b) { return b >= '0' && b <= '9'; }
bool IsHex(uint8_t b) { return IsDigit(b) || (b >= 'a' && b <= 'f') || (b >= 'A' && b <= 'F'); }

bool Used(const GrammarFrame& f, int32_t i) { return (f.used[i / 64] >> (i % 64)) & 1; }

// The string lexer shared by strings and keys. kChar: `b` starts a character; kMore: it continues
// one (escape, \u digits, UTF-8 continuation); kClose: the closing quote. Its state is the frame's
// `lex` and `utf8`, and during \u escapes `pending` (the code unit so far, bits 0-15; digits read,
// bits 16-18; whether it must be a low surrogate, bit 20). Escapes must pair surrogates, and
// UTF-8 must be well formed, as strict JSON parsers demand.
enum class Lex { kReject, kChar, kMore, kClose };
enum LexState : uint8_t {
  kLexPlain = 0,
  kLexEscape = 1,     // after a backslash
  kLexHex = 2,        // in the 4 hex digits of \u
  kLexLowSlash = 3,   // after a high surrogate: a backslash must follow
  kLexLowU = 4,       // ... then 'u'
  kLexFirstCont = 5,  // the first UTF-8 continuation byte, in [first_lo, first_hi] of `pending`
};
constexpr int32_t kLowSurrogateBit = 1 << 20;

Lex LexString(GrammarFrame& f, uint8_t b) {
  if (f.utf8 > 0) {
    uint8_t lo = 0x80, hi = 0xBF;
    if (f.lex == kLexFirstCont) {
      lo = static_cast<uint8_t>(f.pending & 0xFF);
      hi = static_cast<uint8_t>((f.pending >> 8) & 0xFF);
      f.lex = kLexPlain;
    }
    if (b < lo || b > hi) return Lex::kReject;
    --f.utf8;
    return Lex::kMore;
  }
  switch (f.lex) {
    case kLexEscape:
      switch (b) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
          f.lex = kLexPlain;
          return Lex::kMore;
        case 'u':
          f.lex = kLexHex;
          f.pending = 0;
          return Lex::kMore;
        default:
          return Lex::kReject;
      }
    case kLexHex: {
      if (!IsHex(b)) return Lex::kReject;
      const int digit = IsDigit(b) ? b - '0' : (b | 0x20) - 'a' + 10;
      const int32_t value = ((f.pending & 0xFFFF) << 4) | digit;
      const int32_t digits = ((f.pending >> 16) & 7) + 1;
      const bool low = (f.pending & kLowSurrogateBit) != 0;
      f.pending = (f.pending & kLowSurrogateBit) | (digits << 16) | (value & 0xFFFF);
      if (digits < 4) return Lex::kMore;
      const bool is_high = value >= 0xD800 && value <= 0xDBFF;
      const bool is_low = value >= 0xDC00 && value <= 0xDFFF;
      if (low != is_low || (low && is_high)) return Lex::kReject;
      f.lex = is_high ? kLexLowSlash : kLexPlain;
      return Lex::kMore;
    }
    case kLexLowSlash:
      if (b != '\\') return Lex::kReject;
      f.lex = kLexLowU;
      return Lex::kMore;
    case kLexLowU:
      if (b != 'u') return Lex::kReject;
      f.lex = kLexHex;
      f.pending = kLowSurrogateBit;
      return Lex::kMore;
    default:
      break;
  }
  if (b == '"') return Lex::kClose;
  if (b == '\\') {
    f.lex = kLexEscape;
    return Lex::kChar;
  }
  if (b < 0x20) return Lex::kReject;
  const internal::Utf8Lead lead = internal::Utf8LeadOf(b);
  if (lead.continuation < 0) return Lex::kReject;
  if (lead.continuation > 0) {
    f.utf8 = static_cast<uint8_t>(lead.continuation);
    f.lex = kLexFirstCont;
    f.pending = lead.first_lo | (lead.first_hi << 8);
  }
  return Lex::kChar;
}

// Runs a string's pattern over its decoded text: `b` was read in lexer state (lex_before,
// utf8_before) and took the frame to its state now. Short escapes reach the DFA as the character
// they stand for; \u escapes are refused (see below). False when no match can follow.
bool FeedPattern(GrammarFrame& f, uint8_t b, uint8_t lex_before, uint8_t utf8_before) {
  const RegexDfa& dfa = *f.node->pattern;
  const auto feed = [&](uint32_t cp) {
    std::string bytes;
    internal::AppendUtf8(static_cast<char32_t>(cp), bytes);
    for (size_t k = 0; k < bytes.size() && f.hi != RegexDfa::kDead; ++k) {
      f.hi = dfa.Next(f.hi, static_cast<uint8_t>(bytes[k]));
    }
    return f.hi != RegexDfa::kDead;
  };
  if (utf8_before > 0) {  // a continuation byte, as it is
    f.hi = dfa.Next(f.hi, b);
    return f.hi != RegexDfa::kDead;
  }
  switch (lex_before) {
    case kLexPlain:
    case kLexFirstCont:
      if (b == '\\') {  // only if a character a short escape stands for may come
        for (const uint8_t c : {'"', '\\', '/', '\b', '\f', '\n', '\r', '\t'}) {
          if (dfa.Next(f.hi, c) != RegexDfa::kDead) return true;
        }
        return false;
      }
      f.hi = dfa.Next(f.hi, b);
      return f.hi != RegexDfa::kDead;
    case kLexEscape:
      switch (b) {
        case 'u':
          // No \u escapes under a pattern: whether one can match is known only at its last
          // digit, too late to keep the output from a dead end. Characters come as UTF-8.
          return false;
        case 'b':
          return feed('\b');
        case 'f':
          return feed('\f');
        case 'n':
          return feed('\n');
        case 'r':
          return feed('\r');
        case 't':
          return feed('\t');
        default:
          return feed(b);  // " \ /
      }
    case kLexHex: {
      if (f.lex == kLexHex) return true;  // digits still to come
      const auto unit = static_cast<uint32_t>(f.pending & 0xFFFF);
      if (f.lex == kLexLowSlash) {  // a high surrogate: wait for its pair
        f.lo = static_cast<int32_t>(unit);
        return true;
      }
      if ((f.pending & kLowSurrogateBit) != 0) {
        return feed(0x10000 + ((static_cast<uint32_t>(f.lo) - 0xD800) << 10) + (unit - 0xDC00));
      }
      return feed(unit);
    }
    default:
      return true;  // the backslash and 'u' of a low surrogate
  }
}

bool KeyPossible(const GrammarFrame& object) {
  const GrammarNode& node = *object.node;
  if (node.additional != nullptr) return true;
  for (int32_t i = 0; i < static_cast<int32_t>(node.keys.size()); ++i) {
    if (!Used(object, i)) return true;
  }
  return false;
}

bool RequiredGiven(const GrammarFrame& object) {
  return (object.node->required[0] & ~object.used[0]) == 0 &&
         (object.node->required[1] & ~object.used[1]) == 0;
}

bool NumberComplete(const GrammarFrame& f) {
  return f.phase == kNumZero || f.phase == kNumInt || f.phase == kNumFrac ||
         f.phase == kNumExpDigits;
}

bool LiteralComplete(const GrammarFrame& f) {
  return f.lo < f.hi && static_cast<int32_t>(f.node->literals[f.lo].size()) == f.count;
}

// Narrows [lo, hi) of sorted `strings` to those whose byte `pos` is `b`.
bool Narrow(const std::vector<std::string>& strings, int32_t& lo, int32_t& hi, int32_t pos,
            uint8_t b) {
  int32_t new_lo = hi;
  int32_t new_hi = hi;
  for (int32_t i = lo; i < hi; ++i) {
    const std::string& s = strings[i];
    const bool match = static_cast<int32_t>(s.size()) > pos && static_cast<uint8_t>(s[pos]) == b;
    if (match && new_lo == hi) new_lo = i;
    if (!match && new_lo != hi) {
      new_hi = i;
      break;
    }
  }
  if (new_lo == hi) return false;
  lo = new_lo;
  hi = new_hi;
  return true;
}

class Machine {
 public:
  explicit Machine(GrammarMatcher::State& out) : out_(out) {}

  // Every parse that `stack` becomes after `b`, appended to the output.
  void Feed(Stack& stack, uint8_t b) {
    GrammarFrame& f = stack.back();
    switch (f.phase) {
      case kRootValue:
        if (f.count == 0 && Whitespace(stack, b)) return;
        return Enter(stack, f.node, b, 0);
      case kRootDone:
        return;
      case kObjOpen:
      case kObjKeyNext:
        if (Whitespace(stack, b)) return;
        if (b == '}' && f.phase == kObjOpen && RequiredGiven(f)) return Complete(stack);
        if (b == '"' && KeyPossible(f)) {
          f.ws = 0;
          GrammarFrame key;
          key.node = f.node;
          key.phase = kKey;
          key.hi = static_cast<int32_t>(f.node->keys.size());
          return Push(stack, key);
        }
        return;
      case kObjColon:
        if (Whitespace(stack, b)) return;
        if (b == ':') {
          f.phase = kObjValue;
          f.ws = 0;
          return Emit(stack);
        }
        return;
      case kObjValue: {
        if (Whitespace(stack, b)) return;
        const GrammarNode* value =
            f.pending >= 0 ? f.node->key_values[f.pending] : f.node->additional;
        return Enter(stack, value, b, 0);
      }
      case kObjAfterValue:
        if (Whitespace(stack, b)) return;
        if (b == ',' && KeyPossible(f)) {
          f.phase = kObjKeyNext;
          f.ws = 0;
          return Emit(stack);
        }
        if (b == '}' && RequiredGiven(f)) return Complete(stack);
        return;
      case kKey:
        return Key(stack, b);
      case kArrOpen:
      case kArrNext: {
        if (Whitespace(stack, b)) return;
        if (b == ']' && f.phase == kArrOpen && f.node->min_items == 0) return Complete(stack);
        const GrammarNode* item = f.node->Item(f.count);
        if (item == nullptr || f.count >= f.node->max_items) return;
        return Enter(stack, item, b, 0);
      }
      case kArrAfterValue:
        if (Whitespace(stack, b)) return;
        if (b == ',' && f.count < f.node->max_items && f.node->Item(f.count) != nullptr) {
          f.phase = kArrNext;
          f.ws = 0;
          return Emit(stack);
        }
        if (b == ']' && f.count >= f.node->min_items) return Complete(stack);
        return;
      case kStr: {
        const uint8_t lex_before = f.lex;
        const uint8_t utf8_before = f.utf8;
        const Lex lex = LexString(f, b);
        if (lex == Lex::kReject) return;
        if (lex == Lex::kClose) {
          if (f.count < f.node->min_length) return;
          if (f.node->pattern != nullptr && !f.node->pattern->Accepting(f.hi)) return;
          return Complete(stack);
        }
        if (lex == Lex::kChar) {
          if (f.count >= f.node->max_length) return;
          ++f.count;
        }
        if (f.node->pattern != nullptr && !FeedPattern(f, b, lex_before, utf8_before)) return;
        return Emit(stack);
      }
      case kRegexText: {
        const RegexDfa& dfa = *f.node->pattern;
        if (dfa.Accepting(f.hi)) {  // the text may end here: the byte is then its parent's
          Stack ended = stack;
          Complete(ended, /*emit=*/false);
          Feed(ended, b);
        }
        GrammarFrame& g = stack.back();
        g.hi = dfa.Next(g.hi, b);
        if (g.hi != RegexDfa::kDead) Emit(stack);
        return;
      }
      case kLit: {
        if (LiteralComplete(f)) {  // the literal may end here: the byte is then its parent's
          Stack ended = stack;
          Complete(ended, /*emit=*/false);
          Feed(ended, b);
        }
        GrammarFrame& g = stack.back();
        if (Narrow(g.node->literals, g.lo, g.hi, g.count, b)) {
          ++g.count;
          Emit(stack);
        }
        return;
      }
      default:
        return Number(stack, b);
    }
  }

  // `stack`'s top expects a value of `node`; `b` is its first byte.
  void Enter(Stack& stack, const GrammarNode* node, uint8_t b, int unions) {
    if (stack.size() >= static_cast<size_t>(kMaxNesting)) return;
    GrammarFrame f;
    f.node = node;
    switch (node->type) {
      case NodeType::kUnion:
        if (unions > 16) return;  // CheckUnionCycles keeps this from looping; bounded anyway
        for (const GrammarNode* alt : node->alternatives) {
          if (Full()) return;
          Stack branch = stack;
          Enter(branch, alt, b, unions + 1);
        }
        return;
      case NodeType::kObject:
        if (b != '{') return;
        f.phase = kObjOpen;
        return Push(stack, f);
      case NodeType::kArray:
        if (b != '[') return;
        f.phase = kArrOpen;
        return Push(stack, f);
      case NodeType::kString:
        if (b != '"') return;
        f.phase = kStr;
        f.hi = node->pattern != nullptr ? node->pattern->start() : 0;
        return Push(stack, f);
      case NodeType::kNumber:
      case NodeType::kInteger:
        if (b == '-') {
          f.phase = kNumMinus;
        } else if (b == '0') {
          f.phase = kNumZero;
          f.count = 1;
        } else if (IsDigit(b)) {
          f.phase = kNumInt;
          f.count = 1;
        } else {
          return;
        }
        return Push(stack, f);
      case NodeType::kRegex:
        f.phase = kRegexText;
        f.hi = node->pattern->Next(node->pattern->start(), b);
        if (f.hi == RegexDfa::kDead) return;
        return Push(stack, f);
      case NodeType::kLiterals:
        f.phase = kLit;
        f.hi = static_cast<int32_t>(node->literals.size());
        if (!Narrow(node->literals, f.lo, f.hi, 0, b)) return;
        f.count = 1;
        return Push(stack, f);
    }
  }

 private:
  bool Full() const { return out_.ends.size() >= static_cast<size_t>(kMaxParses); }

  void Emit(const Stack& stack) {
    if (Full()) return;  // a state holds at most kMaxParses parses (see kMaxAlternatives)
    out_.frames.insert(out_.frames.end(), stack.begin(), stack.end());
    out_.ends.push_back(static_cast<uint32_t>(out_.frames.size()));
  }

  void Push(Stack& stack, const GrammarFrame& frame) {
    stack.back().ws = 0;
    stack.push_back(frame);
    Emit(stack);
  }

  // Whether `b` is whitespace (handled: emitted when the gap may hold it), in a gap of the top
  // frame. A gap is one space, or a newline and an indent of up to kIndentPerLevel bytes a level.
  bool Whitespace(Stack& stack, uint8_t b) {
    if (!IsWhitespace(b)) return false;
    GrammarFrame& f = stack.back();
    const int indent_limit = kIndentPerLevel * static_cast<int>(stack.size());
    if (f.ws == 0 && (b == ' ' || b == '\n')) {
      f.ws = b == ' ' ? 1 : 2;
    } else if (f.ws >= 2 && (b == ' ' || b == '\t') && f.ws - 2 < indent_limit) {
      ++f.ws;
    } else {
      return true;  // whitespace the gap may not hold: refused
    }
    Emit(stack);
    return true;
  }

  // Pops the finished value; its parent moves past it.
  void Complete(Stack& stack, bool emit = true) {
    stack.pop_back();
    GrammarFrame& parent = stack.back();
    parent.ws = 0;
    switch (parent.phase) {
      case kRootValue:
        parent.phase = kRootDone;
        break;
      case kObjValue:
        parent.phase = kObjAfterValue;
        break;
      case kArrOpen:
      case kArrNext:
        parent.phase = kArrAfterValue;
        ++parent.count;
        break;
      default:
        break;
    }
    if (emit) Emit(stack);
  }

  void Key(Stack& stack, uint8_t b) {
    GrammarFrame& k = stack.back();
    const GrammarNode& node = *k.node;
    const Lex lex = LexString(k, b);
    if (lex == Lex::kReject) return;
    GrammarFrame& object = stack[stack.size() - 2];
    if (lex == Lex::kClose) {
      int32_t exact = -1;
      if (k.lo < k.hi && static_cast<int32_t>(node.keys[k.lo].size()) == k.count) exact = k.lo;
      if (exact >= 0 && Used(object, exact)) return;  // a key given twice
      if (exact < 0 && node.additional == nullptr) return;
      if (exact >= 0) object.used[exact / 64] |= uint64_t{1} << (exact % 64);
      object.pending = exact;
      object.phase = kObjColon;
      object.ws = 0;
      stack.pop_back();
      return Emit(stack);
    }
    // Known keys still possible (unused ones, or prefixes of them); else only another key.
    bool known = k.lo < k.hi && Narrow(node.keys, k.lo, k.hi, k.count, b);
    if (known) {
      known = false;
      for (int32_t i = k.lo; i < k.hi; ++i) known |= !Used(object, i);
    }
    if (!known) k.lo = k.hi;
    if (!known && node.additional == nullptr) return;
    ++k.count;
    Emit(stack);
  }

  void Number(Stack& stack, uint8_t b) {
    GrammarFrame& f = stack.back();
    const bool integer = f.node->type == NodeType::kInteger;
    const auto next = [&](Phase phase) {
      f.phase = phase;
      Emit(stack);
    };
    switch (f.phase) {
      case kNumMinus:
        if (b == '0') {
          f.count = 1;
          return next(kNumZero);
        }
        if (IsDigit(b)) {
          f.count = 1;
          return next(kNumInt);
        }
        return;
      case kNumZero:
      case kNumInt:
        if (IsDigit(b) && f.phase == kNumInt) {
          if (f.count >= kMaxNumberDigits) break;
          ++f.count;
          return Emit(stack);
        }
        if (b == '.' && !integer) return next(kNumDot);
        if ((b == 'e' || b == 'E') && !integer) return next(kNumExp);
        break;
      case kNumDot:
        if (!IsDigit(b)) return;
        f.lo = 1;
        return next(kNumFrac);
      case kNumFrac:
        if (IsDigit(b)) {
          if (f.lo >= kMaxNumberDigits) break;
          ++f.lo;
          return Emit(stack);
        }
        if (b == 'e' || b == 'E') return next(kNumExp);
        break;
      case kNumExp:
        if (b == '+' || b == '-') return next(kNumExpSign);
        [[fallthrough]];
      case kNumExpSign:
        if (!IsDigit(b)) return;
        f.hi = 1;
        return next(kNumExpDigits);
      case kNumExpDigits:
        if (IsDigit(b)) {
          if (f.hi >= 2) break;  // |exponent| < 100: a double holds the value
          ++f.hi;
          return Emit(stack);
        }
        break;
      default:
        return;
    }
    // The number ended before `b`, which belongs to its parent.
    if (!NumberComplete(f)) return;
    Complete(stack, /*emit=*/false);
    Feed(stack, b);
  }

  GrammarMatcher::State& out_;
};

// A state's parses as stacks, one at a time.
template <typename Fn>
void ForEachParse(const GrammarMatcher::State& state, Fn&& fn) {
  uint32_t begin = 0;
  for (const uint32_t end : state.ends) {
    fn(state.frames.data() + begin, state.frames.data() + end);
    begin = end;
  }
}

}  // namespace

GrammarMatcher::GrammarMatcher(std::shared_ptr<const Grammar> grammar)
    : grammar_(std::move(grammar)) {
  GrammarFrame root;
  root.node = grammar_->root();
  root.phase = kRootValue;
  root.count = grammar_->leading_whitespace() ? 0 : 1;
  state_.frames.push_back(root);
  state_.ends.push_back(1);
}

GrammarMatcher::~GrammarMatcher() = default;
GrammarMatcher::GrammarMatcher(const GrammarMatcher&) = default;
GrammarMatcher& GrammarMatcher::operator=(const GrammarMatcher&) = default;

void GrammarMatcher::Step(const State& in, uint8_t byte, State& out) const {
  out.Clear();
  Machine machine(out);
  ForEachParse(in, [&](const GrammarFrame* begin, const GrammarFrame* end) {
    stack_.assign(begin, end);
    machine.Feed(stack_, byte);
  });
  if (out.ends.size() < 2) return;
  // Alternatives that met again (or never differed) are one parse.
  State unique;
  ForEachParse(out, [&](const GrammarFrame* begin, const GrammarFrame* end) {
    bool seen = false;
    ForEachParse(unique, [&](const GrammarFrame* b, const GrammarFrame* e) {
      seen = seen || std::equal(begin, end, b, e);
    });
    if (seen) return;
    unique.frames.insert(unique.frames.end(), begin, end);
    unique.ends.push_back(static_cast<uint32_t>(unique.frames.size()));
  });
  out = std::move(unique);
}

bool GrammarMatcher::Advance(uint8_t byte) {
  Step(state_, byte, scratch_);
  if (scratch_.ends.empty()) return false;
  std::swap(state_, scratch_);
  return true;
}

bool GrammarMatcher::AdvanceBytes(absl::string_view bytes) {
  State saved = state_;
  for (const char c : bytes) {
    if (!Advance(static_cast<uint8_t>(c))) {
      state_ = std::move(saved);
      return false;
    }
  }
  return true;
}

bool GrammarMatcher::IsAcceptingState(const State& state) {
  bool accepting = false;
  ForEachParse(state, [&](const GrammarFrame* begin, const GrammarFrame* end) {
    const GrammarFrame& top = *(end - 1);
    if (end - begin == 1) {
      accepting = accepting || top.phase == kRootDone;
    } else if (end - begin == 2) {  // a number or literal at the root ends where the text ends
      accepting = accepting || (top.phase == kLit && LiteralComplete(top)) || NumberComplete(top) ||
                  (top.phase == kRegexText && top.node->pattern->Accepting(top.hi));
    }
  });
  return accepting;
}

bool GrammarMatcher::IsAccepting() const { return IsAcceptingState(state_); }

bool GrammarMatcher::InPatternString(const RegexDfa** pattern, int32_t* state) const {
  if (state_.ends.size() != 1) return false;
  const GrammarFrame& top = state_.frames.back();
  if (top.phase != kStr || top.lex != 0 || top.utf8 != 0 || top.node->pattern == nullptr ||
      top.node->max_length != INT32_MAX) {
    return false;
  }
  *pattern = top.node->pattern.get();
  *state = top.hi;
  return true;
}

bool GrammarMatcher::InPlainString() const {
  if (state_.ends.size() != 1) return false;
  const GrammarFrame& top = state_.frames.back();
  if (top.lex != 0 || top.utf8 != 0) return false;
  if (top.phase == kStr) return top.node->max_length == INT32_MAX && top.node->pattern == nullptr;
  return top.phase == kKey && top.lo >= top.hi && top.node->additional != nullptr;
}

bool GrammarMatcher::CanContinue() const {
  State next;
  for (int b = 0; b < 256; ++b) {
    Step(state_, static_cast<uint8_t>(b), next);
    if (!next.ends.empty()) return true;
  }
  return false;
}

}  // namespace tessera::model
