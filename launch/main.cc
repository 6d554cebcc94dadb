// tessera: one binary, one subcommand per role (see docs/architecture.md).
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "launch/commands.h"

namespace {
// vLLM spells some flags with one dash and several letters (-tp 2, -pp 2), which CLI11 does not
// accept; they are rewritten to their long forms before parsing.
std::vector<std::string> NormalizeArgs(int argc, char** argv) {
  const std::pair<const char*, const char*> aliases[] = {{"-tp", "--tensor-parallel-size"},
                                                         {"-pp", "--pipeline-parallel-size"}};
  std::vector<std::string> args(argv, argv + argc);
  for (std::string& arg : args) {
    for (const auto& [short_name, long_name] : aliases) {
      const std::string s = short_name;
      if (arg == s) {
        arg = long_name;
      } else if (arg.rfind(s + "=", 0) == 0) {
        arg = std::string(long_name) + arg.substr(s.size());
      }
    }
  }
  return args;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tessera: serve large language models on a cluster of GPUs (or CPUs)"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "debug, info, warning or error")->capture_default_str();

  std::vector<std::pair<CLI::App*, tessera::launch::Command>> commands;
  auto add = [&](tessera::launch::Command (*reg)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    tessera::launch::Command run = reg(app);
    commands.emplace_back(app.get_subcommands({})[before], std::move(run));
  };
  add(&tessera::launch::RegisterMakeModel);
  add(&tessera::launch::RegisterGenerate);
  add(&tessera::launch::RegisterBenchEngine);
  add(&tessera::launch::RegisterBenchKernels);
  add(&tessera::launch::RegisterWorker);
  add(&tessera::launch::RegisterCoordinator);
  add(&tessera::launch::RegisterServe);
  add(&tessera::launch::RegisterLaunch);
  add(&tessera::launch::RegisterBench);

  try {
    std::vector<std::string> args = NormalizeArgs(argc, argv);
    std::vector<char*> pointers;
    pointers.reserve(args.size());
    for (std::string& a : args) pointers.push_back(a.data());
    app.parse(static_cast<int>(pointers.size()), pointers.data());
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0. Every usage error (an unknown flag, a value outside its set or
    // range, a missing argument) exits 2, as argparse's do (vLLM's, torchrun's), whatever code
    // CLI11 gives its kind of error. Errors found after parsing exit 1.
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto level = tessera::ParseLogLevel(log_level);
  if (!level.ok()) {
    std::fprintf(stderr, "error: --log-level: %s\n", std::string(level.status().message()).c_str());
    return 2;
  }
  tessera::SetMinLogLevel(*level);
  try {
    for (auto& [sub, run] : commands) {
      if (sub->parsed()) return run();
    }
  } catch (const std::exception& e) {  // third-party code (CLI11, the standard library)
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 2;
}
