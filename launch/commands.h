// The subcommands of the `tessera` binary. Each Register* adds its subcommand and flags to `app`
// and returns the function to run when it was chosen; the function returns the exit code and
// prints errors itself.
#pragma once

#include <functional>

#include "CLI/CLI.hpp"

namespace tessera::launch {

using Command = std::function<int()>;

Command RegisterMakeModel(CLI::App& app);
Command RegisterGenerate(CLI::App& app);
Command RegisterBenchEngine(CLI::App& app);
Command RegisterWorker(CLI::App& app);
Command RegisterCoordinator(CLI::App& app);
Command RegisterServe(CLI::App& app);
Command RegisterLaunch(CLI::App& app);
Command RegisterBench(CLI::App& app);

}  // namespace tessera::launch
