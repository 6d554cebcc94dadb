// Leveled logging to stderr: `TESSERA_LOG(INFO) << "loaded " << n << " tensors";`
// Thread-safe: each message is written with one call. The minimum level defaults to kInfo and is
// set once at start-up by launch/ (flag --log-level); library code never reads the environment.
#pragma once

#include <sstream>
#include "absl/strings/string_view.h"
#include "common/check.h"

#include "absl/status/statusor.h"

namespace tessera {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();
// Accepts debug, info, warning, error (any case).
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);

namespace internal {
class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};
}  // namespace internal
}  // namespace tessera

#define TESSERA_LOG_LEVEL_DEBUG ::tessera::LogLevel::kDebug
#define TESSERA_LOG_LEVEL_INFO ::tessera::LogLevel::kInfo
#define TESSERA_LOG_LEVEL_WARNING ::tessera::LogLevel::kWarning
#define TESSERA_LOG_LEVEL_ERROR ::tessera::LogLevel::kError

// Safe inside an unbraced if/else: the whole statement is one expression.
#define TESSERA_LOG(level)                                                                 \
  !(TESSERA_LOG_LEVEL_##level >= ::tessera::MinLogLevel())                                 \
      ? (void)0                                                                            \
      : ::tessera::internal::Voidify() &                                                   \
            ::tessera::internal::LogMessage(TESSERA_LOG_LEVEL_##level, __FILE__, __LINE__) \
                .stream()
