#include "bench/progress.h"

#include "bench/report.h"

namespace tessera::bench {

TerminalProgress::TerminalProgress(std::FILE* out, bool tty, absl::Duration line_interval)
    : out_(out), tty_(tty), line_interval_(line_interval) {}

void TerminalProgress::OnRunStart(size_t index, size_t count, std::optional<double> rate,
                                  int64_t requests) {
  last_line_s_ = -1;
  last_done_ = -1;
  std::fprintf(out_, "run %zu/%zu: %lld requests at rate %s\n", index + 1, count,
               static_cast<long long>(requests), RateLabel(rate).c_str());
  std::fflush(out_);
}

void TerminalProgress::OnProgress(int64_t done, int64_t failed, int64_t total, double elapsed_s) {
  const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1;
  if (tty_) {
    constexpr int kBar = 40;
    const int filled = static_cast<int>(fraction * kBar);
    char bar[kBar + 1];
    for (int i = 0; i < kBar; ++i) bar[i] = i < filled ? '#' : '.';
    bar[kBar] = '\0';
    std::fprintf(out_, "\r%3d%% |%s| %lld/%lld [%.1fs]", static_cast<int>(fraction * 100), bar,
                 static_cast<long long>(done), static_cast<long long>(total), elapsed_s);
    if (failed > 0) std::fprintf(out_, " %lld failed", static_cast<long long>(failed));
    std::fflush(out_);
    return;
  }
  const bool finished = done >= total;
  if (done == last_done_ && !finished) return;
  if (!finished && last_line_s_ >= 0 &&
      elapsed_s - last_line_s_ < absl::ToDoubleSeconds(line_interval_)) {
    return;
  }
  if (finished && last_done_ == done) return;  // already printed
  last_line_s_ = elapsed_s;
  last_done_ = done;
  std::fprintf(out_, "  %lld/%lld done (%lld failed) after %.1f s\n", static_cast<long long>(done),
               static_cast<long long>(total), static_cast<long long>(failed), elapsed_s);
  std::fflush(out_);
}

void TerminalProgress::OnRunEnd(const RunResult& run) {
  if (tty_) std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace tessera::bench
