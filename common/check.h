// TESSERA_CHECK: for broken invariants only (bugs in tessera itself). Never use it for
// conditions that input, configuration or the environment can cause: return a Status instead.
// On failure it logs the condition, file, line and streamed message, then aborts.
#pragma once

#include <sstream>
#include <string>

namespace tessera::internal {

class CheckFailure {
 public:
  CheckFailure(const char* condition, const char* file, int line);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Turns `stream << x` into void so it can sit in a ternary.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace tessera::internal

#define TESSERA_CHECK(condition)                 \
  (condition) ? (void)0                          \
              : ::tessera::internal::Voidify() & \
                    ::tessera::internal::CheckFailure(#condition, __FILE__, __LINE__).stream()

#define TESSERA_CHECK_EQ(a, b) TESSERA_CHECK((a) == (b)) << "(" << (a) << " vs " << (b) << ") "
#define TESSERA_CHECK_LT(a, b) TESSERA_CHECK((a) < (b)) << "(" << (a) << " vs " << (b) << ") "
#define TESSERA_CHECK_LE(a, b) TESSERA_CHECK((a) <= (b)) << "(" << (a) << " vs " << (b) << ") "
#define TESSERA_CHECK_OK(expr)                                        \
  do {                                                                \
    const ::absl::Status tessera_check_status = (expr);               \
    TESSERA_CHECK(tessera_check_status.ok()) << tessera_check_status; \
  } while (false)
