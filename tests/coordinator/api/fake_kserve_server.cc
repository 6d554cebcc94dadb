// KServeServer over FakeFrontend, for client tests in other processes (tritonclient,
// perf_analyzer). Prints "PORT <n>" on stdout once serving, then serves until stdin closes or
// SIGTERM/SIGINT arrives.
//
//   fake_kserve_server [--address=127.0.0.1:0] [--token_delay_ms=N]
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "coordinator/api/kserve_server.h"
#include "tests/coordinator/fake_frontend.h"

int main(int argc, char** argv) {
  tessera::coordinator::KServeServerOptions options;
  int token_delay_ms = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (absl::StartsWith(arg, "--address=")) {
      options.address = arg.substr(10);
    } else if (absl::StartsWith(arg, "--token_delay_ms=") &&
               absl::SimpleAtoi(arg.substr(17), &token_delay_ms) && token_delay_ms >= 0) {
    } else {
      std::fprintf(stderr, "usage: %s [--address=HOST:PORT] [--token_delay_ms=N]\n", argv[0]);
      return 2;
    }
  }
  // Every thread (gRPC's included) inherits this mask; the main thread takes the signals.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  tessera::coordinator::testing::FakeFrontend frontend;
  frontend.token_delay = absl::Milliseconds(token_delay_ms);
  auto server = tessera::coordinator::KServeServer::Create(frontend, options);
  if (!server.ok()) {
    std::fprintf(stderr, "fake_kserve_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %d\n", (*server)->port());
  std::fflush(stdout);

  // Closing stdin stops the server, as a signal does.
  std::thread([] {
    char buffer[256];
    while (read(STDIN_FILENO, buffer, sizeof(buffer)) > 0) {
    }
    kill(getpid(), SIGTERM);
  }).detach();
  int received = 0;
  sigwait(&signals, &received);
  (*server)->Shutdown(absl::Now() + absl::Seconds(2));
  std::fprintf(stderr, "fake_kserve_server: stopped (signal %d); %d requests generated\n", received,
               frontend.generated.load());
  return 0;
}
