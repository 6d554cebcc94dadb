#include <cstring>
#include <memory>
#include <vector>

#include "tests/parallel/comm/comm_test_harness.h"

namespace tessera::parallel::testing {
namespace {

class CpuTestDevice final : public TestDevice {
 public:
  Device device() const override { return Device::Cpu(); }
  Stream& stream() override { return stream_; }
  void* Allocate(size_t bytes) override {
    blocks_.push_back(std::make_unique<char[]>(bytes == 0 ? 1 : bytes));
    return blocks_.back().get();
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }

 private:
  CpuStream stream_;
  std::vector<std::unique_ptr<char[]>> blocks_;
};

}  // namespace

std::unique_ptr<TestDevice> MakeCpuTestDevice() { return std::make_unique<CpuTestDevice>(); }

}  // namespace tessera::parallel::testing
