// `tessera bench`: the cluster benchmark, a client of the public APIs (bench/bench_flags.h).
#include <cstdio>
#include <memory>

#include "absl/status/status.h"
#include "bench/bench_flags.h"
#include "launch/commands.h"

namespace tessera::launch {

Command RegisterBench(CLI::App& app) {
  auto flags = std::make_shared<bench::BenchFlags>();
  CLI::App* sub = app.add_subcommand(
      "bench", "Benchmark a running cluster through its public APIs, as `vllm bench serve`");
  bench::AddBenchFlags(*sub, *flags);
  return ExitCodeOf("bench", [flags] { return bench::RunBenchCommand(*flags); });
}

}  // namespace tessera::launch
