// Child processes of `tessera serve` (and later `tessera launch`): spawned with the exact
// command printed, each in its own process group (so a terminal's Ctrl-C reaches only the parent,
// which then shuts the children down in order), watched for unexpected exits, and terminated
// with SIGTERM then, after a grace period, SIGKILL. Not thread-safe: one owner thread.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace tessera::launch {

class ProcessGroup {
 public:
  ProcessGroup() = default;
  ~ProcessGroup();  // TerminateAll(5 s)
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  // Starts argv[0] (a path, or a name looked up on PATH) with argv; prints "[name] $ command" to
  // stdout first. kInternal when fork fails; an exec failure shows up as the child exiting with
  // status 127.
  absl::Status Spawn(const std::string& name, const std::vector<std::string>& argv);
  // A child that has exited since the last call: its name and what happened ("worker-0 exited
  // with status 1", "... was killed by signal 9"), or nullopt. The child is forgotten.
  struct Exited {
    std::string name;
    std::string what;
  };
  std::optional<Exited> PollExited();
  size_t size() const { return children_.size(); }
  // SIGTERM to `name`, then waits up to `grace` for it to exit before SIGKILL. True when it exited
  // within the grace period with status 0.
  bool Terminate(const std::string& name, absl::Duration grace);
  // Terminate on every child, last spawned first.
  void TerminateAll(absl::Duration grace);
  bool empty() const { return children_.empty(); }

 private:
  struct Child {
    std::string name;
    pid_t pid;
  };
  std::vector<Child> children_;
};

// The path of the running executable (/proc/self/exe), to spawn other subcommands.
std::string SelfExecutable();

}  // namespace tessera::launch
