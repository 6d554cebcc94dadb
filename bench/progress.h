// Progress of a bench on a terminal: a bar redrawn in place when the stream is a TTY, otherwise a
// plain line every `line_interval` (logs and CI stay readable). Driven by RunBench's thread only;
// not thread-safe. Writes to `out`, which it does not own.
#pragma once

#include <cstdio>
#include <optional>

#include "absl/time/time.h"
#include "bench/bench.h"

namespace tessera::bench {

class TerminalProgress final : public ProgressSink {
 public:
  // `tty`: whether `out` is a terminal (isatty(fileno(out)) at the call site).
  TerminalProgress(std::FILE* out, bool tty, absl::Duration line_interval = absl::Seconds(5));

  void OnRunStart(size_t index, size_t count, std::optional<double> rate,
                  int64_t requests) override;
  void OnProgress(int64_t done, int64_t failed, int64_t total, double elapsed_s) override;
  void OnRunEnd(const RunResult& run) override;

 private:
  std::FILE* out_;
  bool tty_;
  absl::Duration line_interval_;
  double last_line_s_ = -1;
  int64_t last_done_ = -1;
};

}  // namespace tessera::bench
