// Encode and decode throughput of the tokenizer on a few MB of text (label perf: printed, never
// asserted). Uses the committed Llama 3 style fixture tokenizer, and the real Llama 3
// tokenizer.json when TESSERA_LLAMA3_TOKENIZER_JSON names one.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "model/tokenizer.h"
#include "tests/source_dir.h"

namespace tessera::model {
namespace {

// About 4 MB: the GPL's text (English prose) and some code, CJK and emoji, repeated.
std::string SampleText() {
  std::string base;
  std::ifstream license("/usr/share/common-licenses/GPL-3");
  if (license.good()) {
    std::stringstream buffer;
    buffer << license.rdbuf();
    base = buffer.str();
  } else {
    for (int i = 0; i < 500; ++i) {
      base += "The quick brown fox jumps over the lazy dog, and 1234 numbers follow. ";
    }
  }
  base +=
      "def f(x):\n    return x ** 2  # square\n\n"
      "\xE4\xBB\x8A\xE5\xA4\xA9\xE5\xA4\xA9\xE6\xB0\x94\xE5\xBE\x88\xE5\xA5\xBD "
      "\xF0\x9F\x99\x82\n";
  std::string text;
  while (text.size() < (4u << 20)) text += base;
  return text;
}

void Measure(const std::string& name, const Tokenizer& tokenizer) {
  const std::string text = SampleText();
  const double mb = static_cast<double>(text.size()) / 1e6;
  // Cold: a fresh word cache; warm: the cache holds every word.
  for (const char* pass : {"cold", "warm"}) {
    const auto start = std::chrono::steady_clock::now();
    auto ids = tokenizer.Encode(text, false);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(ids.ok()) << ids.status();
    std::printf("[perf] %s encode (%s cache): %.1f MB in %.3f s = %.1f MB/s, %zu tokens\n",
                name.c_str(), pass, mb, seconds, mb / seconds, ids->size());
    if (std::string(pass) == "warm") {
      const auto decode_start = std::chrono::steady_clock::now();
      auto decoded = tokenizer.Decode(*ids, false);
      const double decode_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - decode_start).count();
      ASSERT_TRUE(decoded.ok());
      EXPECT_EQ(*decoded, text);
      std::printf("[perf] %s decode: %.1f MB/s\n", name.c_str(), mb / decode_seconds);
    }
  }
}

TEST(TokenizerPerfTest, EncodeThroughputLlama3Style) {
  auto tokenizer = Tokenizer::FromFile(absl::StrCat(
      tessera::testing::SourceDir(), "/tests/reference/tokenizers/llama3/tokenizer.json"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  Measure("llama3-style fixture (1.5k vocab)", **tokenizer);
}

TEST(TokenizerPerfTest, EncodeThroughputRealLlama3) {
  const char* path = std::getenv("TESSERA_LLAMA3_TOKENIZER_JSON");
  if (path == nullptr) GTEST_SKIP() << "set TESSERA_LLAMA3_TOKENIZER_JSON to a tokenizer.json";
  auto tokenizer = Tokenizer::FromFile(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  Measure("Llama 3 (128k vocab)", **tokenizer);
}

}  // namespace
}  // namespace tessera::model
