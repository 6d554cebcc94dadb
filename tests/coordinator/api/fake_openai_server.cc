// The OpenAI HTTP server over a FakeFrontend, for tests with real clients (openai_client_test.py).
// Prints "PORT <n>" on stdout once it serves, then serves until stdin closes or SIGTERM/SIGINT.
// Flags: --port N (default 0: any free port), --token-delay-ms N (default 0).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "absl/time/time.h"
#include "coordinator/api/openai_http.h"
#include "tests/coordinator/fake_frontend.h"

int main(int argc, char** argv) {
  int port = 0;
  int token_delay_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--port") == 0) {
      port = std::atoi(argv[i + 1]);
    } else if (std::strcmp(argv[i], "--token-delay-ms") == 0) {
      token_delay_ms = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }

  // Every thread started from here on inherits the mask; main waits for the signals below.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  tessera::coordinator::testing::FakeFrontend frontend;
  frontend.token_delay = absl::Milliseconds(token_delay_ms);
  tessera::coordinator::api::OpenAiHttpOptions options;
  options.port = port;
  auto server = tessera::coordinator::api::OpenAiHttpServer::Create(frontend, options);
  if (!server.ok()) {
    std::fprintf(stderr, "fake_openai_server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %d\n", (*server)->port());
  std::fflush(stdout);

  // stdin closing (the parent went away) ends the server like SIGTERM does.
  std::thread stdin_watch([] {
    char buffer[256];
    while (read(STDIN_FILENO, buffer, sizeof(buffer)) > 0) {
    }
    kill(getpid(), SIGTERM);
  });
  stdin_watch.detach();

  int received = 0;
  sigwait(&signals, &received);
  (*server)->Shutdown();
  return 0;
}
