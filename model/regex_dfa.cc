// RegexDfa: parse (a recursive-descent parser into a small tree), Thompson NFA, subset
// construction over byte classes, then states that cannot reach a match are dropped.
#include "model/regex_dfa.h"

#include <algorithm>
#include <bitset>
#include <deque>
#include <map>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/tokenizer_internal.h"

namespace tessera::model {
namespace {

using ByteSet = std::bitset<256>;

struct Re {
  enum Kind { kSet, kSeq, kAlt, kRepeat } kind = kSeq;
  ByteSet set;
  std::vector<Re> kids;
  int min = 0;
  int max = -1;  // -1: unbounded
};

Re Set(ByteSet set) {
  Re re;
  re.kind = Re::kSet;
  re.set = set;
  return re;
}
Re Byte(uint8_t b) {
  ByteSet s;
  s.set(b);
  return Set(s);
}
Re Range(int lo, int hi) {
  ByteSet s;
  for (int b = lo; b <= hi; ++b) s.set(static_cast<size_t>(b));
  return Set(s);
}
Re Seq(std::vector<Re> kids) {
  Re re;
  re.kind = Re::kSeq;
  re.kids = std::move(kids);
  return re;
}
Re Alt(std::vector<Re> kids) {
  Re re;
  re.kind = Re::kAlt;
  re.kids = std::move(kids);
  return re;
}
Re Repeat(Re kid, int min, int max) {
  Re re;
  re.kind = Re::kRepeat;
  re.kids.push_back(std::move(kid));
  re.min = min;
  re.max = max;
  return re;
}
// Any character outside ASCII, as UTF-8 (the string lexer checks the finer ranges).
Re NonAscii() {
  return Alt({Seq({Range(0xC2, 0xDF), Range(0x80, 0xBF)}),
              Seq({Range(0xE0, 0xEF), Range(0x80, 0xBF), Range(0x80, 0xBF)}),
              Seq({Range(0xF0, 0xF4), Range(0x80, 0xBF), Range(0x80, 0xBF), Range(0x80, 0xBF)})});
}
// ASCII bytes of `set`, plus every non-ASCII character when `non_ascii`.
Re Chars(const ByteSet& ascii, bool non_ascii) {
  return non_ascii ? Alt({Set(ascii), NonAscii()}) : Set(ascii);
}
ByteSet AsciiComplement(const ByteSet& set) {
  ByteSet out;
  for (int b = 0; b < 0x80; ++b) out.set(static_cast<size_t>(b), !set.test(static_cast<size_t>(b)));
  return out;
}
Re Utf8Of(uint32_t cp) {
  std::string encoded;
  internal::AppendUtf8(static_cast<char32_t>(cp), encoded);
  std::vector<Re> bytes;
  for (const char c : encoded) bytes.push_back(Byte(static_cast<uint8_t>(c)));
  return Seq(std::move(bytes));
}

class Parser {
 public:
  explicit Parser(absl::string_view text) : text_(text) {}

  absl::StatusOr<Re> Parse() {
    TESSERA_ASSIGN_OR_RETURN(Re re, ParseAlt(0));
    if (pos_ < text_.size()) return Error("unbalanced ')'");
    return re;
  }

 private:
  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("regex: ", what, " at offset ", pos_));
  }
  bool More() const { return pos_ < text_.size(); }
  char Peek() const { return text_[pos_]; }

  absl::StatusOr<Re> ParseAlt(int depth) {
    if (depth > 100) return Error("groups nested too deep");
    std::vector<Re> branches;
    TESSERA_ASSIGN_OR_RETURN(Re first, ParseSeq(depth));
    branches.push_back(std::move(first));
    while (More() && Peek() == '|') {
      ++pos_;
      TESSERA_ASSIGN_OR_RETURN(Re next, ParseSeq(depth));
      branches.push_back(std::move(next));
    }
    return branches.size() == 1 ? std::move(branches[0]) : Alt(std::move(branches));
  }

  absl::StatusOr<Re> ParseSeq(int depth) {
    std::vector<Re> items;
    while (More() && Peek() != '|' && Peek() != ')') {
      TESSERA_ASSIGN_OR_RETURN(Re atom, ParseAtom(depth));
      TESSERA_ASSIGN_OR_RETURN(atom, ParseQuantifiers(std::move(atom)));
      items.push_back(std::move(atom));
    }
    return items.size() == 1 ? std::move(items[0]) : Seq(std::move(items));
  }

  absl::StatusOr<Re> ParseQuantifiers(Re atom) {
    while (More()) {
      int min = 0, max = -1;
      const char c = Peek();
      if (c == '*') {
        ++pos_;
      } else if (c == '+') {
        min = 1;
        ++pos_;
      } else if (c == '?') {
        max = 1;
        ++pos_;
      } else if (c == '{') {
        size_t at = pos_ + 1;
        const auto number = [&](int* out) {
          const size_t begin = at;
          int64_t v = 0;
          while (at < text_.size() && text_[at] >= '0' && text_[at] <= '9') {
            v = std::min<int64_t>(v * 10 + (text_[at] - '0'), 1 << 20);
            ++at;
          }
          *out = static_cast<int>(v);
          return at > begin;
        };
        if (!number(&min)) return atom;  // a literal '{', as ECMA-262 reads it
        max = min;
        if (at < text_.size() && text_[at] == ',') {
          ++at;
          if (!number(&max)) max = -1;
        }
        if (at >= text_.size() || text_[at] != '}') return Error("a malformed {m,n}");
        pos_ = at + 1;
        if ((max >= 0 && max < min) || min > 1000 || max > 1000) {
          return Error("a repetition count above 1000 or {m,n} with n < m");
        }
      } else {
        return atom;
      }
      if (More() && Peek() == '?') ++pos_;  // lazy: the same language
      atom = Repeat(std::move(atom), min, max);
    }
    return atom;
  }

  absl::StatusOr<Re> ParseAtom(int depth) {
    const char c = Peek();
    switch (c) {
      case '(': {
        ++pos_;
        if (More() && Peek() == '?') {
          if (text_.substr(pos_, 2) == "?:") {
            pos_ += 2;
          } else if (text_.substr(pos_, 2) == "?<" && text_.substr(pos_, 3) != "?<=" &&
                     text_.substr(pos_, 3) != "?<!") {
            pos_ = text_.find('>', pos_);
            if (pos_ == absl::string_view::npos) return Error("an unterminated group name");
            ++pos_;
          } else if (text_.substr(pos_, 3) == "?P<") {
            pos_ = text_.find('>', pos_);
            if (pos_ == absl::string_view::npos) return Error("an unterminated group name");
            ++pos_;
          } else {
            return Error("look-around and inline flags are not supported");
          }
        }
        TESSERA_ASSIGN_OR_RETURN(Re inner, ParseAlt(depth + 1));
        if (!More() || Peek() != ')') return Error("a missing ')'");
        ++pos_;
        return inner;
      }
      case '[':
        return ParseClass();
      case '.': {
        ++pos_;
        ByteSet ascii = AsciiComplement(ByteSet());
        ascii.reset('\n');
        return Chars(ascii, true);
      }
      case '\\':
        return ParseEscape();
      case '^':
      case '$':
        return Error("anchors are only supported at the start and the end");
      case '*':
      case '+':
      case '?':
        return Error("nothing to repeat");
      case ')':
        return Error("unbalanced ')'");
      default:
        return ParseLiteral();
    }
  }

  absl::StatusOr<Re> ParseLiteral() {
    const auto lead = static_cast<uint8_t>(text_[pos_]);
    size_t n = 1;
    if (lead >= 0xF0) {
      n = 4;
    } else if (lead >= 0xE0) {
      n = 3;
    } else if (lead >= 0xC0) {
      n = 2;
    }
    if (pos_ + n > text_.size()) return Error("a truncated UTF-8 character");
    std::vector<Re> bytes;
    for (size_t i = 0; i < n; ++i) bytes.push_back(Byte(static_cast<uint8_t>(text_[pos_ + i])));
    pos_ += n;
    return n == 1 ? std::move(bytes[0]) : Seq(std::move(bytes));
  }

  // A class escape's ASCII set (\d \w \s), or none.
  static bool ClassEscape(char c, ByteSet* set) {
    ByteSet s;
    switch (c) {
      case 'd':
        for (int b = '0'; b <= '9'; ++b) s.set(b);
        break;
      case 'w':
        for (int b = '0'; b <= '9'; ++b) s.set(b);
        for (int b = 'a'; b <= 'z'; ++b) s.set(b);
        for (int b = 'A'; b <= 'Z'; ++b) s.set(b);
        s.set('_');
        break;
      case 's':
        for (const char b : {' ', '\t', '\n', '\r', '\f', '\v'}) s.set(static_cast<uint8_t>(b));
        break;
      default:
        return false;
    }
    *set = s;
    return true;
  }

  // The byte of a single-character escape (\n, \., ...), or -1.
  static int SimpleEscape(char c) {
    switch (c) {
      case 'n':
        return '\n';
      case 't':
        return '\t';
      case 'r':
        return '\r';
      case 'f':
        return '\f';
      case 'v':
        return '\v';
      default:
        break;
    }
    const auto b = static_cast<uint8_t>(c);
    if (b < 0x80 && !std::isalnum(b)) return b;  // escaped punctuation
    return -1;
  }

  absl::StatusOr<uint32_t> HexEscape(size_t digits) {
    if (pos_ + digits > text_.size()) return Error("a truncated \\u or \\x escape");
    uint32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      const char h = text_[pos_ + i];
      int d = -1;
      if (h >= '0' && h <= '9') d = h - '0';
      if (h >= 'a' && h <= 'f') d = h - 'a' + 10;
      if (h >= 'A' && h <= 'F') d = h - 'A' + 10;
      if (d < 0) return Error("a malformed \\u or \\x escape");
      v = v * 16 + static_cast<uint32_t>(d);
    }
    pos_ += digits;
    return v;
  }

  absl::StatusOr<Re> ParseEscape() {
    ++pos_;
    if (!More()) return Error("a trailing backslash");
    const char c = text_[pos_++];
    ByteSet set;
    if (ClassEscape(c, &set)) return Set(set);
    if (c == 'D' || c == 'W' || c == 'S') {
      ClassEscape(static_cast<char>(c + ('a' - 'A')), &set);
      return Chars(AsciiComplement(set), true);
    }
    if (c == 'u' || c == 'x') {
      TESSERA_ASSIGN_OR_RETURN(uint32_t cp, HexEscape(c == 'u' ? 4 : 2));
      if (cp >= 0xD800 && cp <= 0xDFFF) return Error("a surrogate \\u escape");
      return Utf8Of(cp);
    }
    const int b = SimpleEscape(c);
    if (b < 0) {
      return Error(absl::StrCat("the escape \\", std::string(1, c),
                                " is not supported (back-references and word boundaries are not)"));
    }
    return Byte(static_cast<uint8_t>(b));
  }

  absl::StatusOr<Re> ParseClass() {
    ++pos_;  // '['
    bool negated = false;
    if (More() && Peek() == '^') {
      negated = true;
      ++pos_;
    }
    ByteSet set;
    bool first = true;
    while (true) {
      if (!More()) return Error("a missing ']'");
      char c = Peek();
      if (c == ']' && !first) break;
      first = false;
      int lo = -1;
      if (c == '\\') {
        ++pos_;
        if (!More()) return Error("a trailing backslash");
        const char e = text_[pos_++];
        ByteSet escaped;
        if (ClassEscape(e, &escaped)) {
          set |= escaped;
          continue;
        }
        if (e == 'u' || e == 'x') {
          TESSERA_ASSIGN_OR_RETURN(uint32_t cp, HexEscape(e == 'u' ? 4 : 2));
          if (cp >= 0x80) return Error("non-ASCII characters in classes are not supported");
          lo = static_cast<int>(cp);
        } else {
          lo = SimpleEscape(e);
          if (lo < 0) return Error("an unsupported escape in a class");
        }
      } else {
        if (static_cast<uint8_t>(c) >= 0x80) {
          return Error("non-ASCII characters in classes are not supported");
        }
        lo = static_cast<uint8_t>(c);
        ++pos_;
      }
      int hi = lo;
      if (pos_ + 1 < text_.size() && Peek() == '-' && text_[pos_ + 1] != ']') {
        ++pos_;
        char h = text_[pos_++];
        if (h == '\\') {
          if (!More()) return Error("a trailing backslash");
          h = static_cast<char>(SimpleEscape(text_[pos_++]));
        }
        if (static_cast<uint8_t>(h) >= 0x80 || h < 0) {
          return Error("non-ASCII characters in classes are not supported");
        }
        hi = static_cast<uint8_t>(h);
        if (hi < lo) return Error("a range out of order");
      }
      for (int b = lo; b <= hi; ++b) set.set(static_cast<size_t>(b));
    }
    ++pos_;  // ']'
    return negated ? Chars(AsciiComplement(set), true) : Set(set);
  }

  absl::string_view text_;
  size_t pos_ = 0;
};

// Thompson's construction.
class Nfa {
 public:
  struct State {
    std::vector<std::pair<int, int>> edges;  // (byte set index, target)
    std::vector<int> eps;
  };
  static constexpr int kMaxNfaStates = 20000;

  int NewState() {
    states_.emplace_back();
    return static_cast<int>(states_.size()) - 1;
  }

  // Adds `re` between new states; returns (start, accept).
  absl::StatusOr<std::pair<int, int>> Emit(const Re& re) {
    if (states_.size() > static_cast<size_t>(kMaxNfaStates)) {
      return absl::InvalidArgumentError("regex: too large once repetitions are expanded");
    }
    const int s = NewState();
    const int a = NewState();
    switch (re.kind) {
      case Re::kSet:
        sets_.push_back(re.set);
        states_[s].edges.push_back({static_cast<int>(sets_.size()) - 1, a});
        break;
      case Re::kSeq: {
        int at = s;
        for (const Re& kid : re.kids) {
          TESSERA_ASSIGN_OR_RETURN(auto frag, Emit(kid));
          states_[at].eps.push_back(frag.first);
          at = frag.second;
        }
        states_[at].eps.push_back(a);
        break;
      }
      case Re::kAlt:
        for (const Re& kid : re.kids) {
          TESSERA_ASSIGN_OR_RETURN(auto frag, Emit(kid));
          states_[s].eps.push_back(frag.first);
          states_[frag.second].eps.push_back(a);
        }
        break;
      case Re::kRepeat: {
        int at = s;
        for (int i = 0; i < re.min; ++i) {
          TESSERA_ASSIGN_OR_RETURN(auto frag, Emit(re.kids[0]));
          states_[at].eps.push_back(frag.first);
          at = frag.second;
        }
        if (re.max < 0) {
          TESSERA_ASSIGN_OR_RETURN(auto frag, Emit(re.kids[0]));
          states_[at].eps.push_back(frag.first);
          states_[frag.second].eps.push_back(at);
          states_[at].eps.push_back(a);
        } else {
          for (int i = re.min; i < re.max; ++i) {
            TESSERA_ASSIGN_OR_RETURN(auto frag, Emit(re.kids[0]));
            states_[at].eps.push_back(a);  // stop here
            states_[at].eps.push_back(frag.first);
            at = frag.second;
          }
          states_[at].eps.push_back(a);
        }
        break;
      }
    }
    return std::make_pair(s, a);
  }

  // Work done so far, in NFA edges visited: Compile stops past kMaxWork.
  int64_t work = 0;

  void Closure(std::vector<int>& set) {
    std::vector<bool> in(states_.size(), false);
    for (const int s : set) in[static_cast<size_t>(s)] = true;
    for (size_t i = 0; i < set.size(); ++i) {
      work += static_cast<int64_t>(states_[static_cast<size_t>(set[i])].eps.size()) + 1;
      for (const int t : states_[static_cast<size_t>(set[i])].eps) {
        if (!in[static_cast<size_t>(t)]) {
          in[static_cast<size_t>(t)] = true;
          set.push_back(t);
        }
      }
    }
    std::sort(set.begin(), set.end());
  }

  const std::vector<State>& states() const { return states_; }
  const std::vector<ByteSet>& sets() const { return sets_; }

 private:
  std::vector<State> states_;
  std::vector<ByteSet> sets_;
};

// About 0.1 s of subset construction: the most a request's expression may cost a server.
constexpr int64_t kMaxWork = 30'000'000;

}  // namespace

absl::StatusOr<std::shared_ptr<const RegexDfa>> RegexDfa::Compile(absl::string_view pattern,
                                                                  bool search) {
  bool anchored_start = false;
  bool anchored_end = false;
  if (!pattern.empty() && pattern.front() == '^') {
    anchored_start = true;
    pattern.remove_prefix(1);
  }
  if (!pattern.empty() && pattern.back() == '$') {
    size_t backslashes = 0;
    for (size_t i = pattern.size() - 1; i > 0 && pattern[i - 1] == '\\'; --i) ++backslashes;
    if (backslashes % 2 == 0) {
      anchored_end = true;
      pattern.remove_suffix(1);
    }
  }
  TESSERA_ASSIGN_OR_RETURN(Re re, Parser(pattern).Parse());
  if (search) {
    const Re anything = Repeat(Set(ByteSet().set()), 0, -1);
    std::vector<Re> parts;
    if (!anchored_start) parts.push_back(anything);
    parts.push_back(std::move(re));
    if (!anchored_end) parts.push_back(anything);
    re = Seq(std::move(parts));
  }
  Nfa nfa;
  TESSERA_ASSIGN_OR_RETURN(auto frag, nfa.Emit(re));
  const int accept = frag.second;
  // Bytes that every set treats alike share a class.
  std::vector<int> class_of(256, 0);
  std::vector<int> representative;
  {
    std::map<std::vector<bool>, int> classes;
    for (int b = 0; b < 256; ++b) {
      std::vector<bool> signature;
      signature.reserve(nfa.sets().size());
      for (const ByteSet& s : nfa.sets()) signature.push_back(s.test(static_cast<size_t>(b)));
      const auto [it, fresh] = classes.emplace(signature, static_cast<int>(classes.size()));
      if (fresh) representative.push_back(b);
      class_of[static_cast<size_t>(b)] = it->second;
    }
  }
  const auto num_classes = static_cast<int>(representative.size());
  std::map<std::vector<int>, int> ids;
  std::vector<std::vector<int>> sets;
  std::vector<int> class_next;  // [state * num_classes + class]
  std::vector<int> start = {frag.first};
  nfa.Closure(start);
  ids.emplace(start, 0);
  sets.push_back(start);
  for (size_t d = 0; d < sets.size(); ++d) {
    for (int c = 0; c < num_classes; ++c) {
      const auto byte = static_cast<size_t>(representative[static_cast<size_t>(c)]);
      std::vector<int> target;
      if (nfa.work > kMaxWork) {
        return absl::InvalidArgumentError(
            "regex: too costly to compile (nested repetitions); simplify it");
      }
      for (const int s : sets[d]) {
        nfa.work += static_cast<int64_t>(nfa.states()[static_cast<size_t>(s)].edges.size()) + 1;
        for (const auto& [set, to] : nfa.states()[static_cast<size_t>(s)].edges) {
          if (nfa.sets()[static_cast<size_t>(set)].test(byte)) target.push_back(to);
        }
      }
      if (target.empty()) {
        class_next.push_back(kDead);
        continue;
      }
      nfa.Closure(target);
      target.erase(std::unique(target.begin(), target.end()), target.end());
      const auto [it, fresh] = ids.emplace(target, static_cast<int>(sets.size()));
      if (fresh) {
        if (sets.size() >= static_cast<size_t>(kMaxStates)) {
          return absl::InvalidArgumentError(absl::StrCat("regex: needs more than ", kMaxStates,
                                                         " automaton states; simplify it"));
        }
        sets.push_back(target);
      }
      class_next.push_back(it->second);
    }
  }
  const size_t n = sets.size();
  std::vector<bool> accepting(n);
  for (size_t d = 0; d < n; ++d) {
    accepting[d] = std::binary_search(sets[d].begin(), sets[d].end(), accept);
  }
  // Live states: those from which a match can still be reached.
  std::vector<bool> live = accepting;
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t d = 0; d < n; ++d) {
      if (live[d]) continue;
      for (int c = 0; c < num_classes; ++c) {
        const int to = class_next[d * static_cast<size_t>(num_classes) + static_cast<size_t>(c)];
        if (to != kDead && live[static_cast<size_t>(to)]) {
          live[d] = true;
          changed = true;
          break;
        }
      }
    }
  }
  if (!live[0]) return absl::InvalidArgumentError("regex: matches nothing");
  auto dfa = std::shared_ptr<RegexDfa>(new RegexDfa());
  dfa->next_.assign(n * 256, kDead);
  dfa->accepting_ = accepting;
  for (size_t d = 0; d < n; ++d) {
    for (int b = 0; b < 256; ++b) {
      const int to = class_next[d * static_cast<size_t>(num_classes) +
                                static_cast<size_t>(class_of[static_cast<size_t>(b)])];
      dfa->next_[d * 256 + static_cast<size_t>(b)] =
          to != kDead && live[static_cast<size_t>(to)] ? to : kDead;
    }
  }
  return std::shared_ptr<const RegexDfa>(std::move(dfa));
}

}  // namespace tessera::model
