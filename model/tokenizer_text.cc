// Text helpers of the tokenizer: UTF-8, the byte-level alphabet, PCRE2 regexes, normalization.
#define PCRE2_CODE_UNIT_WIDTH 8

#include <pcre2.h>
#include <utf8proc.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "model/tokenizer_internal.h"

namespace tessera::model::internal {
namespace {

bool IsContinuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The length of the sequence a lead byte starts, 0 for bytes that cannot start one.
int SequenceLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Whether `second` may follow `lead` (the narrowed ranges that exclude overlong forms,
// surrogates and code points past U+10FFFF).
bool ValidSecondByte(unsigned char lead, unsigned char second) {
  switch (lead) {
    case 0xE0:
      return second >= 0xA0 && second <= 0xBF;
    case 0xED:
      return second >= 0x80 && second <= 0x9F;
    case 0xF0:
      return second >= 0x90 && second <= 0xBF;
    case 0xF4:
      return second >= 0x80 && second <= 0x8F;
    default:
      return IsContinuation(second);
  }
}

// At `pos`: the length of a valid sequence (> 0), or -(length of the maximal invalid subpart),
// or 0 when the bytes up to the end are a valid but incomplete start of a sequence.
int Classify(absl::string_view s, size_t pos) {
  const unsigned char lead = static_cast<unsigned char>(s[pos]);
  const int len = SequenceLength(lead);
  if (len == 1) return 1;
  if (len == 0) return -1;
  const size_t left = s.size() - pos;
  for (int i = 1; i < len; ++i) {
    if (static_cast<size_t>(i) >= left) return 0;
    const unsigned char c = static_cast<unsigned char>(s[pos + i]);
    const bool ok = i == 1 ? ValidSecondByte(lead, c) : IsContinuation(c);
    if (!ok) return -i;
  }
  return len;
}

std::array<char32_t, 256> MakeByteToCodePoint() {
  std::array<char32_t, 256> table{};
  bool direct[256] = {};
  for (int b = '!'; b <= '~'; ++b) direct[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) table[b] = direct[b] ? static_cast<char32_t>(b) : next++;
  return table;
}

// Code points 0..0x143 -> byte + 1 (0: not in the alphabet).
std::array<int16_t, 0x144> MakeCodePointToByte() {
  std::array<int16_t, 0x144> inverse{};
  const std::array<char32_t, 256>& table = ByteToCodePoint();
  for (int b = 0; b < 256; ++b) inverse[table[b]] = static_cast<int16_t>(b + 1);
  return inverse;
}

const pcre2_code* CompileClass(const char* pattern) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  return pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED,
                       PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error, &offset, nullptr);
}

bool MatchesClass(const pcre2_code* code, char32_t cp) {
  std::string s;
  AppendUtf8(cp, s);
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  const int rc = pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0,
                             PCRE2_NO_UTF_CHECK, data, nullptr);
  pcre2_match_data_free(data);
  return rc > 0;
}

// Oniguruma's \s (what `tokenizers` patterns mean) is the White_Space property; PCRE2's \s with
// UCP is \p{Xsp}, which lacks U+0085. Rewrites \s and \S to add it.
std::string RewriteWhitespaceClasses(absl::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += in_class ? "\\s\\x{85}" : "[\\s\\x{85}]";
      } else if (e == 'S' && !in_class) {
        out += "[^\\s\\x{85}]";
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out += c;
  }
  return out;
}

}  // namespace

// ---- UTF-8 -------------------------------------------------------------------------------------

std::optional<size_t> FindInvalidUtf8(absl::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // Fast path over ASCII, eight bytes at a time.
    while (pos + 8 <= text.size()) {
      uint64_t word;
      __builtin_memcpy(&word, text.data() + pos, 8);
      if (word & 0x8080808080808080ull) break;
      pos += 8;
    }
    if (pos >= text.size()) break;
    const int n = Classify(text, pos);
    if (n <= 0) return pos;
    pos += static_cast<size_t>(n);
  }
  return std::nullopt;
}

char32_t DecodeUtf8(absl::string_view text, size_t& pos) {
  const unsigned char c = static_cast<unsigned char>(text[pos]);
  const int len = SequenceLength(c);
  char32_t cp;
  switch (len) {
    case 2:
      cp = c & 0x1F;
      break;
    case 3:
      cp = c & 0x0F;
      break;
    case 4:
      cp = c & 0x07;
      break;
    default:
      ++pos;
      return c;
  }
  for (int i = 1; i < len && pos + i < text.size(); ++i) {
    cp = (cp << 6) | (static_cast<unsigned char>(text[pos + i]) & 0x3F);
  }
  pos += len;
  return cp;
}

void AppendUtf8(char32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

size_t AppendUtf8Lossy(absl::string_view bytes, bool hold_incomplete_tail, std::string& out) {
  static constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
  size_t pos = 0;
  size_t run = 0;  // start of the valid run not yet copied
  while (pos < bytes.size()) {
    if (static_cast<unsigned char>(bytes[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const int n = Classify(bytes, pos);
    if (n > 0) {
      pos += static_cast<size_t>(n);
      continue;
    }
    out.append(bytes.data() + run, pos - run);
    if (n == 0) {  // incomplete tail
      if (hold_incomplete_tail) return pos;
      out.append(kReplacement.data(), kReplacement.size());
      return bytes.size();
    }
    out.append(kReplacement.data(), kReplacement.size());
    pos += static_cast<size_t>(-n);
    run = pos;
  }
  out.append(bytes.data() + run, pos - run);
  return bytes.size();
}

// ---- Byte-level alphabet -----------------------------------------------------------------------

const std::array<char32_t, 256>& ByteToCodePoint() {
  static const std::array<char32_t, 256> table = MakeByteToCodePoint();
  return table;
}

std::optional<std::string> ByteLevelTokenToBytes(absl::string_view token) {
  static const std::array<int16_t, 0x144> inverse = MakeCodePointToByte();
  if (FindInvalidUtf8(token).has_value()) return std::nullopt;
  std::string bytes;
  bytes.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const char32_t cp = DecodeUtf8(token, pos);
    if (cp >= inverse.size() || inverse[cp] == 0) return std::nullopt;
    bytes += static_cast<char>(inverse[cp] - 1);
  }
  return bytes;
}

std::string BytesToByteLevel(absl::string_view bytes) {
  const std::array<char32_t, 256>& table = ByteToCodePoint();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) AppendUtf8(table[static_cast<unsigned char>(c)], out);
  return out;
}

// ---- Unicode classes ---------------------------------------------------------------------------

bool IsRustWordChar(char32_t cp) {
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') ||
           cp == '_';
  }
  static const pcre2_code* code =
      CompileClass("[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]");
  return code != nullptr && MatchesClass(code, cp);
}

bool IsRustWhiteSpace(char32_t cp) {
  switch (cp) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

// ---- Regex -------------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Regex>> Regex::Create(absl::string_view pattern, bool literal) {
  const std::string rewritten = literal ? std::string(pattern) : RewriteWhitespaceClasses(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  uint32_t options = PCRE2_UTF | PCRE2_UCP;
  if (literal) options |= PCRE2_LITERAL;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   options, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat(
        "regex ", pattern, ": ", reinterpret_cast<const char*>(message), " at offset ", offset));
  }
  // JIT makes matching several times faster; without it (unsupported CPU) the interpreter runs.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  std::unique_ptr<Regex> regex(new Regex());
  regex->code_ = code;
  return regex;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

absl::Status Regex::FindAll(absl::string_view text,
                            const std::function<void(size_t, size_t)>& on_match) const {
  const pcre2_code* code = static_cast<const pcre2_code*>(code_);
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code, nullptr);
  if (data == nullptr) return absl::ResourceExhaustedError("regex: out of memory");
  const auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  absl::Status status;
  size_t start = 0;
  while (start < text.size()) {
    int rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK, data, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      // The JIT's stack is small and fixed; the interpreter keeps its backtracking on the heap.
      rc = pcre2_match(code, subject, text.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, data,
                       nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof(message));
      const std::string what =
          absl::StrCat("regex match at byte ", start, ": ", reinterpret_cast<const char*>(message));
      status = rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT ||
                       rc == PCRE2_ERROR_DEPTHLIMIT || rc == PCRE2_ERROR_NOMEMORY
                   ? absl::ResourceExhaustedError(what)
                   : absl::InternalError(what);
      break;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0];
    const size_t end = ovector[1];
    if (end == begin) {  // empty match: step over one character
      size_t next = begin;
      DecodeUtf8(text, next);
      start = next;
      continue;
    }
    on_match(begin, end);
    start = end;
  }
  pcre2_match_data_free(data);
  return status;
}

// ---- Normalization -----------------------------------------------------------------------------

absl::StatusOr<std::string> Normalize(absl::string_view text, NormalizationForm form) {
  bool ascii = true;
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  if (ascii) return std::string(text);  // every form leaves ASCII as it is
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalizationForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalizationForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalizationForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &result,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) {
    return absl::InternalError(absl::StrCat("utf8proc_map: ", utf8proc_errmsg(n)));
  }
  std::string out(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  std::free(result);
  return out;
}

}  // namespace tessera::model::internal
