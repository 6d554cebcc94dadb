// Termination signals for the long-running subcommands (serve, coordinator): SIGINT and SIGTERM
// are caught by a handler that only writes the signal number to a pipe, and taken from the pipe
// by WaitForTerminationSignal, so shutdown runs on the main thread with no async-signal-safety
// constraints. (Blocking the signals and using sigwait is not enough: OpenBLAS starts threads
// before main, and the kernel may deliver the signal to one of them.) A second signal while the
// first is being handled ends the process at once.
#pragma once

#include <optional>

#include "absl/time/time.h"

namespace tessera::launch {

// Installs the handlers (and ignores SIGPIPE: a client that goes away mid-write must not kill the
// process). Call once, early.
void InstallTerminationHandlers();
// The signal that arrived (SIGINT or SIGTERM), or nullopt when `timeout` passed first.
std::optional<int> WaitForTerminationSignal(absl::Duration timeout);

}  // namespace tessera::launch
