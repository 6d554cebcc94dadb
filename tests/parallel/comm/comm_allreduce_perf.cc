// All-reduce bandwidth of the CPU communicators, reported as nccl-tests does:
//   algbw = bytes / time, busbw = algbw * 2 (n - 1) / n
// next to a single-thread memcpy of the same size measured in the same run (the peer figure;
// absolute numbers mean little on a shared CPU). f32 sum, out of place, 4 KiB .. 256 MiB.
//
//   comm_allreduce_perf                          # inproc, 4 threads
//   comm_allreduce_perf --gloo                   # gloo, 4 threads over loopback TCP
//   mpirun -np 4 comm_allreduce_perf             # mpi, one rank per process
// Prints, never asserts on time.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "common/stream.h"
#include "parallel/comm/communicator.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#ifdef TESSERA_PERF_WITH_MPI
#include "parallel/comm/mpi/mpi_runtime.h"
#endif
#ifdef TESSERA_PERF_WITH_GLOO
#include "parallel/comm/gloo/gloo_communicator.h"
#include "parallel/comm/inproc/in_memory_store.h"
#endif

namespace tessera::parallel {
namespace {

constexpr int64_t kMinBytes = int64_t{4} << 10;
constexpr int64_t kMaxBytes = int64_t{256} << 20;

int Iterations(int64_t bytes) {
  return static_cast<int>(std::clamp<int64_t>((int64_t{256} << 20) / bytes, 2, 200));
}

// Runs the sweep on one rank; returns the seconds per iteration of each size (rank-local).
std::vector<double> Sweep(Communicator& comm) {
  CpuStream stream;
  std::vector<double> seconds;
  std::vector<float> send(kMaxBytes / sizeof(float), 1.0f);
  std::vector<float> recv(kMaxBytes / sizeof(float), 0.0f);
  for (int64_t bytes = kMinBytes; bytes <= kMaxBytes; bytes *= 4) {
    const int64_t count = bytes / static_cast<int64_t>(sizeof(float));
    TensorView s(send.data(), DataType::kF32, {count});
    MutableTensorView r(recv.data(), DataType::kF32, {count});
    const int iterations = Iterations(bytes);
    bool ok = comm.AllReduce(s, r, ReduceOp::kSum, stream).ok();  // warm-up
    ok = ok && comm.Barrier(stream).ok();
    const absl::Time start = absl::Now();
    for (int i = 0; ok && i < iterations; ++i) {
      ok = comm.AllReduce(s, r, ReduceOp::kSum, stream).ok();
    }
    const double elapsed = absl::ToDoubleSeconds(absl::Now() - start) / iterations;
    if (!ok) {
      std::fprintf(stderr, "rank %d: all-reduce failed: %s\n", comm.rank(),
                   comm.CheckAsyncError().ToString().c_str());
      break;
    }
    seconds.push_back(elapsed);
  }
  return seconds;
}

// Single-thread memcpy of `bytes` between warm buffers, repeated for at least 50 ms.
double MemcpySeconds(int64_t bytes) {
  std::vector<char> a(bytes, 1);
  std::vector<char> b(bytes, 0);
  std::memcpy(b.data(), a.data(), bytes);
  int64_t iterations = 0;
  const absl::Time start = absl::Now();
  absl::Duration elapsed;
  // Read the clock once per batch of about 1 MiB, so small copies are not timing the clock.
  const int64_t batch = std::max<int64_t>(1, (int64_t{1} << 20) / bytes);
  do {
    for (int64_t i = 0; i < batch; ++i, ++iterations) {
      std::memcpy(b.data(), a.data(), bytes);
      a[iterations % bytes] = b[(iterations + 1) % bytes];  // keep the copies observable
    }
    elapsed = absl::Now() - start;
  } while (elapsed < absl::Milliseconds(50) || iterations < 2);
  return absl::ToDoubleSeconds(elapsed) / static_cast<double>(iterations);
}

void PrintTable(const char* backend, int ranks, const std::vector<double>& seconds) {
  std::printf("\nall-reduce f32 sum, backend %s, %d ranks (busbw = algbw * 2(n-1)/n)\n", backend,
              ranks);
  std::printf("%12s %12s %12s %12s %14s %10s\n", "bytes", "time_us", "algbw_GB/s", "busbw_GB/s",
              "memcpy_GB/s", "busbw/cpy");
  int64_t bytes = kMinBytes;
  for (double t : seconds) {
    const double algbw = static_cast<double>(bytes) / t / 1e9;
    const double busbw = algbw * 2.0 * (ranks - 1) / ranks;
    const double copy = static_cast<double>(bytes) / MemcpySeconds(bytes) / 1e9;
    std::printf("%12lld %12.1f %12.3f %12.3f %14.3f %10.2f\n", static_cast<long long>(bytes),
                t * 1e6, algbw, busbw, copy, busbw / copy);
    bytes *= 4;
  }
  std::fflush(stdout);
}

int RunInProcess(bool gloo) {
  constexpr int kRanks = 4;
  std::vector<std::unique_ptr<Communicator>> group(kRanks);
  if (gloo) {
#ifdef TESSERA_PERF_WITH_GLOO
    // Each rank its own communicator and TCP device, as separate processes would have.
    auto store = std::make_shared<InMemoryStore>();
    std::vector<absl::Status> made(kRanks);
    std::vector<std::thread> threads;
    threads.reserve(kRanks);
    for (int r = 0; r < kRanks; ++r) {
      threads.emplace_back([&, r] {
        auto comm = GlooCommunicator::Create(store, r, kRanks, {absl::Seconds(120)});
        made[r] = comm.status();
        if (comm.ok()) group[r] = std::move(*comm);
      });
    }
    for (std::thread& t : threads) t.join();
    for (const absl::Status& status : made) {
      if (!status.ok()) {
        std::fprintf(stderr, "%s\n", status.ToString().c_str());
        return 1;
      }
    }
#else
    std::fprintf(stderr, "this build has no Gloo (TESSERA_WITH_GLOO=OFF)\n");
    return 1;
#endif
  } else {
    auto inproc = CreateInProcessGroup(kRanks, absl::Seconds(120));
    if (!inproc.ok()) {
      std::fprintf(stderr, "%s\n", inproc.status().ToString().c_str());
      return 1;
    }
    group = std::move(*inproc);
  }
  std::vector<std::vector<double>> results(kRanks);
  std::vector<std::thread> threads;
  threads.reserve(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] { results[r] = Sweep(*group[r]); });
  }
  for (std::thread& t : threads) t.join();
  // The slowest rank defines the collective's time.
  std::vector<double> worst = results[0];
  for (const auto& rank : results) {
    for (size_t i = 0; i < std::min(worst.size(), rank.size()); ++i) {
      worst[i] = std::max(worst[i], rank[i]);
    }
  }
  PrintTable(gloo ? "gloo" : "inproc", kRanks, worst);
  return 0;
}

}  // namespace
}  // namespace tessera::parallel

int main(int argc, char** argv) {
  const bool gloo = argc > 1 && std::strcmp(argv[1], "--gloo") == 0;
  if (gloo) return tessera::parallel::RunInProcess(/*gloo=*/true);
#ifdef TESSERA_PERF_WITH_MPI
  auto runtime = tessera::parallel::MpiRuntime::Init();
  if (!runtime.ok()) {
    std::fprintf(stderr, "%s\n", runtime.status().ToString().c_str());
    return 1;
  }
  if ((*runtime)->world_size() > 1) {
    auto world = (*runtime)->CreateWorld({absl::Seconds(120)});
    if (!world.ok()) {
      std::fprintf(stderr, "%s\n", world.status().ToString().c_str());
      return 1;
    }
    const std::vector<double> seconds = tessera::parallel::Sweep(**world);
    // Rank 0 reports the slowest rank's time per size.
    std::vector<double> worst(seconds.size());
    MPI_Reduce(seconds.data(), worst.data(), static_cast<int>(seconds.size()), MPI_DOUBLE, MPI_MAX,
               0, (*world)->native_handle());
    if ((*world)->rank() == 0) tessera::parallel::PrintTable("mpi", (*world)->size(), worst);
    return 0;
  }
#endif
  return tessera::parallel::RunInProcess(/*gloo=*/false);
}
