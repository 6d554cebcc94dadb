#include "launch/signals.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace tessera::launch {
namespace {

int g_pipe[2] = {-1, -1};
std::atomic<int> g_received{0};

void OnSignal(int sig) {
  if (g_received.fetch_add(1) > 0) _exit(128 + sig);  // the second one: stop now
  const unsigned char byte = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = write(g_pipe[1], &byte, 1);
}

}  // namespace

void InstallTerminationHandlers() {
  signal(SIGPIPE, SIG_IGN);
  if (g_pipe[0] >= 0) return;
  if (pipe2(g_pipe, O_CLOEXEC | O_NONBLOCK) != 0) return;
  struct sigaction action = {};
  action.sa_handler = &OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

std::optional<int> WaitForTerminationSignal(absl::Duration timeout) {
  if (g_pipe[0] < 0) return std::nullopt;
  pollfd fd = {g_pipe[0], POLLIN, 0};
  const int ms = static_cast<int>(absl::ToInt64Milliseconds(timeout));
  if (poll(&fd, 1, ms) <= 0) return std::nullopt;
  unsigned char byte = 0;
  if (read(g_pipe[0], &byte, 1) != 1) return std::nullopt;
  g_received = 1;  // handled: a further signal during shutdown still ends the process
  return static_cast<int>(byte);
}

}  // namespace tessera::launch
