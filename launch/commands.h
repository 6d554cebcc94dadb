// The subcommands of the `tessera` binary. Each Register* adds its subcommand and flags to `app`
// and returns the function to run when it was chosen; the function returns the exit code and
// prints errors itself.
#pragma once

#include <cstdio>
#include <functional>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"

namespace tessera::launch {

using Command = std::function<int()>;

// The Command that runs `run` and turns its status into the exit code, printing
// "error: NAME: STATUS" on failure.
template <typename Run>
Command ExitCodeOf(const char* name, Run run) {
  return [name, run = std::move(run)]() {
    const absl::Status status = run();
    if (status.ok()) return 0;
    std::fprintf(stderr, "error: %s: %s\n", name, status.ToString().c_str());
    return 1;
  };
}

Command RegisterMakeModel(CLI::App& app);
Command RegisterGenerate(CLI::App& app);
Command RegisterBenchEngine(CLI::App& app);
Command RegisterBenchKernels(CLI::App& app);
Command RegisterWorker(CLI::App& app);
Command RegisterCoordinator(CLI::App& app);
Command RegisterServe(CLI::App& app);
Command RegisterLaunch(CLI::App& app);
Command RegisterBench(CLI::App& app);

}  // namespace tessera::launch
