// tessera: one binary, one subcommand per role (see docs/architecture.md).
#include <cstdio>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/logging.h"
#include "launch/commands.h"

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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
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
