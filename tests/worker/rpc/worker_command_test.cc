// `tessera worker` end to end: the binary (a random-weight preset model) registers with a fake
// Registry in this process, serves Generate on the address it registered, heartbeats, and on
// SIGTERM deregisters, drains and exits 0; without a coordinator it exits 1 naming the address.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tessera/v1/replica.grpc.pb.h"
#include "tests/worker/rpc/fake_registry.h"

extern char** environ;

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;
using testing::FakeRegistry;
using ::testing::HasSubstr;
using testing::StartRegistry;

constexpr absl::Duration kWait = absl::Seconds(60);

// The tessera binary as a child process with its stdout and stderr on pipes.
class Worker {
 public:
  explicit Worker(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {TESSERA_BINARY, "worker"};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int out[2], err[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(err, O_CLOEXEC), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    EXPECT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~Worker() {
    if (pid_ > 0 && !exit_code_.has_value()) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }

  // The next line of stdout; nullopt at EOF or after `timeout`.
  std::optional<std::string> ReadLine(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (true) {
      if (const size_t eol = stdout_.find('\n'); eol != std::string::npos) {
        std::string line = stdout_.substr(0, eol);
        stdout_.erase(0, eol + 1);
        return line;
      }
      const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left <= 0) return std::nullopt;
      pollfd fd = {out_, POLLIN, 0};
      if (poll(&fd, 1, static_cast<int>(left)) <= 0) continue;
      char buffer[4096];
      const ssize_t n = read(out_, buffer, sizeof(buffer));
      if (n <= 0) return std::nullopt;
      stdout_.append(buffer, static_cast<size_t>(n));
    }
  }

  // The exit code once the process ended (-1 for a signal); nullopt after `timeout`.
  std::optional<int> Wait(absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    while (!exit_code_.has_value()) {
      int status = 0;
      const pid_t done = waitpid(pid_, &status, WNOHANG);
      if (done == pid_) {
        exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      } else if (absl::Now() > deadline) {
        return std::nullopt;
      } else {
        pollfd fd = {err_, POLLIN, 0};  // collect stderr meanwhile (bounds the poll, too)
        if (poll(&fd, 1, 20) > 0) DrainStderr();
      }
    }
    DrainStderr();
    return exit_code_;
  }

  void Signal(int signo) { kill(pid_, signo); }
  const std::string& stderr_text() const { return stderr_; }

 private:
  void DrainStderr() {
    char buffer[4096];
    const int flags = fcntl(err_, F_GETFL);
    fcntl(err_, F_SETFL, flags | O_NONBLOCK);
    ssize_t n;
    while ((n = read(err_, buffer, sizeof(buffer))) > 0) stderr_.append(buffer, n);
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  std::string stdout_;
  std::string stderr_;
  std::optional<int> exit_code_;
};

std::vector<std::string> SmallEngine() {
  return {"--model",   "tiny", "--max-model-len", "64", "--max-num-seqs", "4",
          "--threads", "1",    "--num-kv-blocks", "32", "--block-size",   "16"};
}

// Starts a worker with `extra` flags, checks what it registered, runs a request through it, then
// stops it with SIGTERM.
void ServeAndDrain(const std::vector<std::string>& extra, int32_t tp) {
  auto registry = StartRegistry(0, "lease-", /*lease_ms=*/300);
  ASSERT_NE(registry, nullptr);
  std::vector<std::string> flags = SmallEngine();
  for (const std::string& f :
       {std::string("--coordinator"), registry->address(), std::string("--replica-name"),
        std::string("w0"), std::string("--served-model-name"), std::string("tiny-test"),
        std::string("--drain-timeout"), std::string("5")}) {
    flags.push_back(f);
  }
  flags.insert(flags.end(), extra.begin(), extra.end());
  Worker worker(flags);
  const std::optional<std::string> line = worker.ReadLine(kWait);
  ASSERT_TRUE(line.has_value()) << worker.Wait(absl::Seconds(1)).value_or(-2) << "\n"
                                << worker.stderr_text();
  const std::vector<v1::ReplicaDescriptor> registered = registry->service->registered();
  ASSERT_EQ(registered.size(), 1u);
  const v1::ReplicaDescriptor& d = registered[0];
  EXPECT_EQ(*line, absl::StrCat("tessera worker: replica w0 serving on ", d.address(),
                                " (registered with ", registry->address(), ")"));
  EXPECT_EQ(d.name(), "w0");
  EXPECT_EQ(d.role(), "mixed");
  EXPECT_EQ(d.model_name(), "tiny-test");
  EXPECT_EQ(d.vocab_size(), 512);
  EXPECT_EQ(d.max_model_len(), 64);
  EXPECT_EQ(d.block_size(), 16);
  EXPECT_EQ(d.kv_blocks_total(), 32);
  EXPECT_EQ(d.max_num_seqs(), 4);
  EXPECT_EQ(d.tensor_parallel_size(), tp);
  EXPECT_THAT(d.address(), ::testing::StartsWith("127.0.0.1:"));

  auto stub =
      v1::Replica::NewStub(grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
  v1::GenerateRequest request;
  request.set_request_id("cmpl-1");
  for (int32_t t : {1, 20, 30, 40}) request.add_prompt_token_ids(t);
  request.mutable_sampling()->set_top_p(1.0f);
  request.mutable_sampling()->set_repetition_penalty(1.0f);
  request.mutable_sampling()->set_max_tokens(4);
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + kWait));
  auto reader = stub->Generate(&context, request);
  std::vector<v1::GenerateResponse> responses;
  v1::GenerateResponse response;
  while (reader->Read(&response)) responses.push_back(response);
  ASSERT_TRUE(reader->Finish().ok());
  ASSERT_EQ(responses.size(), 4u);
  EXPECT_EQ(responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);

  ASSERT_TRUE(registry->service->Await([](FakeRegistry& r) {
    return !r.heartbeats_.empty() && r.heartbeats_.back().stats().generation_tokens_total() >= 3;
  }));
  worker.Signal(SIGTERM);
  const std::optional<int> code = worker.Wait(kWait);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << worker.stderr_text();
  EXPECT_EQ(registry->service->deregistered(), std::vector<std::string>{"lease-1"});
}

TEST(WorkerCommandTest, RegistersServesAndDrainsOnSigterm) { ServeAndDrain({}, 1); }

TEST(WorkerCommandTest, ServesATensorParallelReplica) {
  ServeAndDrain({"--tensor-parallel-size", "2", "--comm", "inproc"}, 2);
}

TEST(WorkerCommandTest, ExitsWithAClearErrorWhenTheCoordinatorNeverAnswers) {
  const int port = testing::FreePort();
  ASSERT_GT(port, 0);
  std::vector<std::string> flags = SmallEngine();
  const std::string coordinator = absl::StrCat("127.0.0.1:", port);
  for (const std::string& f : {std::string("--coordinator"), coordinator,
                               std::string("--register-timeout"), std::string("0.5")}) {
    flags.push_back(f);
  }
  Worker worker(flags);
  const std::optional<int> code = worker.Wait(kWait);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 1);
  EXPECT_THAT(worker.stderr_text(),
              HasSubstr(absl::StrCat("could not register with the coordinator at ", coordinator)));
}

}  // namespace
}  // namespace tessera::worker::rpc
