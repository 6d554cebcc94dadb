// RunOnGroup for the NCCL test executable: one thread per visible GPU (at most 4), each with its
// own CUDA stream and device memory; the tested communicator gets its unique id over an in-process
// host group (CreateNcclCommunicatorOver), the control one through an InMemoryStore. Skips
// (kUnavailable) without a GPU.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "parallel/comm/inproc/in_memory_store.h"
#include "parallel/comm/inproc/in_process_communicator.h"
#include "parallel/comm/nccl/nccl_communicator.h"
#include "tests/parallel/comm/comm_test_harness.h"

namespace tessera::parallel::testing {
namespace {

class CudaStream final : public Stream {
 public:
  explicit CudaStream(int device) : device_(device) { cudaStreamCreate(&stream_); }
  ~CudaStream() override { cudaStreamDestroy(stream_); }
  Device device() const override { return Device::Cuda(device_); }
  absl::Status Synchronize() override {
    const cudaError_t error = cudaStreamSynchronize(stream_);
    if (error != cudaSuccess) {
      return absl::InternalError(absl::StrCat("cudaStreamSynchronize: ", cudaGetErrorName(error)));
    }
    return absl::OkStatus();
  }
  void* native_handle() const override { return stream_; }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
};

class CudaTestDevice final : public TestDevice {
 public:
  explicit CudaTestDevice(int device) : device_(device), stream_(device) {}
  ~CudaTestDevice() override {
    for (void* block : blocks_) cudaFree(block);
  }
  Device device() const override { return Device::Cuda(device_); }
  Stream& stream() override { return stream_; }
  void* Allocate(size_t bytes) override {
    void* block = nullptr;
    cudaMalloc(&block, bytes == 0 ? 1 : bytes);
    blocks_.push_back(block);
    return block;
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    cudaStreamSynchronize(static_cast<cudaStream_t>(stream_.native_handle()));
    cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost);
  }

 private:
  int device_;
  CudaStream stream_;
  std::vector<void*> blocks_;
};

std::atomic<int> g_group_counter{0};

}  // namespace

absl::Status RunOnGroup(absl::string_view backend, const GroupOptions& options,
                        const std::function<void(RankContext&)>& body) {
  if (backend != "nccl") {
    return absl::UnavailableError(
        absl::StrCat("backend '", backend, "' runs in its own test executable"));
  }
  const int ranks = std::min(4, NcclDeviceCount());
  if (ranks < 1) return absl::UnavailableError("no CUDA device");
  if (options.min_size > ranks) {
    return absl::UnavailableError(absl::StrCat("needs ", options.min_size, " GPUs"));
  }
  InMemoryStore store;
  // The communicator under test is made over a host group, as a GPU replica's TP/PP groups are
  // (CreateNcclCommunicatorOver); the control one through a store.
  auto host = CreateInProcessGroup(ranks, options.timeout);
  if (!host.ok()) return host.status();
  const int group = g_group_counter.fetch_add(1);
  absl::Mutex mu;
  absl::Status setup;
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      NcclCommunicatorOptions comm_options;
      comm_options.timeout = options.timeout;
      auto comm = CreateNcclCommunicatorOver(*(*host)[r], r, comm_options);
      auto control = CreateNcclCommunicator(store, absl::StrCat("test/", group, "/control"), r,
                                            ranks, r, NcclCommunicatorOptions{absl::Seconds(60)});
      if (!comm.ok() || !control.ok()) {
        absl::MutexLock lock(&mu);
        setup.Update(comm.ok() ? control.status() : comm.status());
        return;
      }
      CudaTestDevice device(r);
      RankContext context{**comm, **control, device};
      body(context);
    });
  }
  for (std::thread& thread : threads) thread.join();
  return setup;
}

}  // namespace tessera::parallel::testing
