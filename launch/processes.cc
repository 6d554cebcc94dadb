#include "launch/processes.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace tessera::launch {
namespace {

std::string Describe(const std::string& name, int status) {
  if (WIFEXITED(status)) return absl::StrCat(name, " exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat(name, " was killed by signal ", WTERMSIG(status), " (",
                        strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat(name, " ended (status ", status, ")");
}

}  // namespace

ProcessGroup::~ProcessGroup() { TerminateAll(absl::Seconds(5)); }

absl::Status ProcessGroup::Spawn(const std::string& name, const std::vector<std::string>& argv) {
  std::printf("[%s] $ %s\n", name.c_str(), absl::StrJoin(argv, " ").c_str());
  std::fflush(stdout);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork for ", name, ": ", strerror(errno)));
  if (pid == 0) {
    // The child: its own process group, default signal handling, then the program.
    setpgid(0, 0);
    // Die with the parent, even when it is killed without a chance to stop us.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1) _exit(1);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_UNBLOCK, &all, nullptr);
    signal(SIGPIPE, SIG_DFL);
    execvp(args[0], args.data());  // a bare name (mpirun) is looked up on PATH
    std::fprintf(stderr, "[%s] cannot run %s: %s\n", name.c_str(), args[0], strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);
  children_.push_back(Child{name, pid});
  return absl::OkStatus();
}

std::optional<ProcessGroup::Exited> ProcessGroup::PollExited() {
  for (auto it = children_.begin(); it != children_.end(); ++it) {
    int status = 0;
    if (waitpid(it->pid, &status, WNOHANG) == it->pid) {
      Exited exited{it->name, Describe(it->name, status)};
      children_.erase(it);
      return exited;
    }
  }
  return std::nullopt;
}

bool ProcessGroup::Terminate(const std::string& name, absl::Duration grace) {
  for (auto it = children_.begin(); it != children_.end(); ++it) {
    if (it->name != name) continue;
    const pid_t pid = it->pid;
    children_.erase(it);
    kill(pid, SIGTERM);
    const absl::Time give_up = absl::Now() + grace;
    int status = 0;
    while (absl::Now() < give_up) {
      if (waitpid(pid, &status, WNOHANG) == pid) {
        const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!clean) std::fprintf(stderr, "%s\n", Describe(name, status).c_str());
        return clean;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    std::fprintf(stderr, "%s did not stop within %s of SIGTERM: killed\n", name.c_str(),
                 absl::FormatDuration(grace).c_str());
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return false;
  }
  return true;
}

void ProcessGroup::TerminateAll(absl::Duration grace) {
  while (!children_.empty()) Terminate(children_.back().name, grace);
}

std::string SelfExecutable() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "tessera";
  return std::string(buf, static_cast<size_t>(n));
}

}  // namespace tessera::launch
