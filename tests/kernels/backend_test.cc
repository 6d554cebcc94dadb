// DeviceBuffer, the CPU backend's memory calls, and the sampling random numbers.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "common/check.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/op_params.h"
#include "kernels/ops.h"
#include "tests/kernels/test_backends.h"

namespace tessera::kernels {
namespace {

TEST(DeviceBufferTest, FreesOnceAfterMoves) {
  int frees = 0;
  std::vector<char> storage(64);
  {
    DeviceBuffer a(storage.data(), storage.size(), Device::Cpu(), [&](void* p) {
      EXPECT_EQ(p, storage.data());
      ++frees;
    });
    DeviceBuffer b(std::move(a));
    EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(a.size(), 0u);
    EXPECT_EQ(b.size(), 64u);
    DeviceBuffer c;
    c = std::move(b);
    EXPECT_EQ(c.data(), storage.data());
    EXPECT_EQ(frees, 0);
  }
  EXPECT_EQ(frees, 1);
}

TEST(DeviceBufferTest, MoveAssignFreesThePreviousMemory) {
  int frees_a = 0, frees_b = 0;
  char x = 0, y = 0;
  DeviceBuffer a(&x, 1, Device::Cpu(), [&](void*) { ++frees_a; });
  DeviceBuffer b(&y, 1, Device::Cpu(), [&](void*) { ++frees_b; });
  a = std::move(b);
  EXPECT_EQ(frees_a, 1);
  EXPECT_EQ(frees_b, 0);
  EXPECT_EQ(a.data(), &y);
}

TEST(DeviceBufferTest, ViewCoversTheLeadingElements) {
  std::vector<float> storage(12);
  const DeviceBuffer buffer(storage.data(), 48, Device::Cpu(), nullptr);
  const MutableTensorView view = buffer.View(DataType::kF32, {2, 5});
  EXPECT_EQ(view.data(), storage.data());
  EXPECT_EQ(view.shape(), (Shape{2, 5}));
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_EQ(view.device(), Device::Cpu());
}

TEST(CpuBackendTest, RejectsNegativeThreadCount) {
  CpuBackendOptions options;
  options.num_threads = -1;
  EXPECT_EQ(CreateCpuBackend(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, AllocatesAlignedMemoryAndCopies) {
  auto backend = CreateCpuBackend({});
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  auto stream = (*backend)->CreateStream();
  ASSERT_TRUE(stream.ok());
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
    auto buffer = (*backend)->Allocate(bytes);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % 256, 0u);
    EXPECT_EQ(buffer->size(), bytes);
  }
  auto a = (*backend)->Allocate(16);
  auto b = (*backend)->Allocate(16);
  ASSERT_TRUE(a.ok() && b.ok());
  const char text[16] = "fifteen chars..";
  char back[16] = {};
  ASSERT_TRUE((*backend)->CopyToDevice(text, a->data(), 16, **stream).ok());
  ASSERT_TRUE((*backend)->CopyOnDevice(a->data(), b->data(), 16, **stream).ok());
  ASSERT_TRUE((*backend)->CopyToHost(b->data(), back, 16, **stream).ok());
  ASSERT_TRUE((*stream)->Synchronize().ok());
  EXPECT_EQ(std::memcmp(text, back, 16), 0);
  ASSERT_TRUE((*backend)->Memset(b->data(), 0, 16, **stream).ok());
  EXPECT_EQ(static_cast<char*>(b->data())[7], 0);
  EXPECT_EQ((*backend)->CopyToHost(nullptr, back, 16, **stream).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, HugeAllocationIsResourceExhausted) {
  auto backend = CreateCpuBackend({});
  ASSERT_TRUE(backend.ok());
  EXPECT_EQ((*backend)->Allocate(size_t{1} << 62).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(SamplingRandomTest, SplitMix64MatchesTheReferenceSequence) {
  // The first two outputs of Vigna's splitmix64 seeded with 0.
  EXPECT_EQ(SplitMix64(0), 0xe220a8397b1dcdafull);
  EXPECT_EQ(SplitMix64(0x9e3779b97f4a7c15ull), 0x6e789e6aa1b965f4ull);
}

TEST(SamplingRandomTest, SampleUniformIsAFixedFunctionOfSeedAndStep) {
  EXPECT_DOUBLE_EQ(SampleUniform(42, 0), 0.30315012456577295);
  EXPECT_DOUBLE_EQ(SampleUniform(42, 1), 0.4949295270895354);
  EXPECT_DOUBLE_EQ(SampleUniform(-1, 7), 0.6627413876392583);
  double sum = 0;
  for (int64_t step = 0; step < 10000; ++step) {
    const double u = SampleUniform(7, step);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 0.5, 0.02);
}

// Memory, copies and streams on every backend (the CPU's own details are checked above).
class BackendMemoryConformance : public testing::BackendTest {};

TEST_P(BackendMemoryConformance, AllocatesAlignedMemoryCopiesAndSets) {
  for (size_t bytes : {size_t{0}, size_t{1}, size_t{1000}, size_t{1} << 20}) {
    auto buffer = backend().Allocate(bytes);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % 256, 0u);
    EXPECT_EQ(buffer->size(), bytes);
    EXPECT_EQ(buffer->device(), backend().device());
  }
  auto a = backend().Allocate(16);
  auto b = backend().Allocate(16);
  ASSERT_TRUE(a.ok() && b.ok());
  const char text[16] = "fifteen chars..";
  char back[16] = {};
  ASSERT_TRUE(backend().CopyToDevice(text, a->data(), 16, stream()).ok());
  ASSERT_TRUE(backend().CopyOnDevice(a->data(), b->data(), 16, stream()).ok());
  ASSERT_TRUE(backend().CopyToHost(b->data(), back, 16, stream()).ok());
  ASSERT_TRUE(stream().Synchronize().ok());
  EXPECT_EQ(std::memcmp(text, back, 16), 0);
  ASSERT_TRUE(backend().Memset(b->data(), 7, 8, stream()).ok());
  ASSERT_TRUE(backend().CopyToHost(b->data(), back, 16, stream()).ok());
  ASSERT_TRUE(stream().Synchronize().ok());
  EXPECT_EQ(back[7], 7);
  EXPECT_EQ(back[8], text[8]);
  EXPECT_EQ(backend().CopyToHost(nullptr, back, 16, stream()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(stream().device(), backend().device());
}

// Staging memory (page-locked on CUDA): zeroed, on the host, and copied to and from the device.
TEST_P(BackendMemoryConformance, AllocatesZeroedHostMemoryForStaging) {
  for (size_t bytes : {size_t{0}, size_t{100}, size_t{3} << 20}) {
    auto host = backend().AllocateHost(bytes);
    ASSERT_TRUE(host.ok()) << host.status();
    EXPECT_EQ(host->size(), bytes);
    EXPECT_EQ(host->device(), Device::Cpu());
    ASSERT_NE(host->data(), nullptr);
    const auto* p = static_cast<const unsigned char*>(host->data());
    EXPECT_TRUE(std::all_of(p, p + bytes, [](unsigned char c) { return c == 0; }));
  }
  auto host = backend().AllocateHost(4096);
  auto back = backend().AllocateHost(4096);
  auto device = backend().Allocate(4096);
  ASSERT_TRUE(host.ok() && back.ok() && device.ok());
  auto* bytes = static_cast<unsigned char*>(host->data());
  for (size_t i = 0; i < 4096; ++i) bytes[i] = static_cast<unsigned char>(i * 7);
  ASSERT_TRUE(backend().CopyToDevice(host->data(), device->data(), 4096, stream()).ok());
  ASSERT_TRUE(backend().CopyToHost(device->data(), back->data(), 4096, stream()).ok());
  ASSERT_TRUE(stream().Synchronize().ok());
  EXPECT_EQ(std::memcmp(host->data(), back->data(), 4096), 0);
  EXPECT_EQ(backend().AllocateHost(size_t{1} << 62).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST_P(BackendMemoryConformance, HugeAllocationIsResourceExhausted) {
  EXPECT_EQ(backend().Allocate(size_t{1} << 62).status().code(),
            absl::StatusCode::kResourceExhausted);
  // The failure leaves the backend usable.
  EXPECT_TRUE(backend().Allocate(1024).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, BackendMemoryConformance,
                         ::testing::ValuesIn(testing::BackendNames()), testing::BackendParamName());

// Graphs (Backend::CaptureGraph) on the backends that record them: the CPU's emulation and CUDA.
class GraphConformance : public testing::BackendTest {};

TEST_P(GraphConformance, ReplaysTheRecordedWorkOverTheMemorysNewContents) {
  ASSERT_TRUE(backend().supports_graphs());
  TESSERA_SEEDED_RNG(rng, 11);
  const int64_t rows = 4, k = 64, n = 48;
  const MutableTensorView x =
      Upload(testing::RandomFloats(rng, rows * k), DataType::kF32, {rows, k});
  const TensorView norm = Upload(testing::RandomFloats(rng, k, 0.5f, 1.5f), DataType::kF32, {k});
  const TensorView weight =
      Upload(testing::RandomFloats(rng, n * k, -0.1f, 0.1f), DataType::kF32, {n, k});
  const MutableTensorView normed = Uninitialized(DataType::kF32, {rows, k});
  const MutableTensorView y = Uninitialized(DataType::kF32, {rows, n});
  const GraphBody body = [&](Stream& s) -> absl::Status {
    absl::Status status = RmsNorm(backend(), {x, {}, norm, normed, 1e-5f}, s);
    if (!status.ok()) return status;
    return Matmul(backend(), {normed, weight, {}, y}, s);
  };
  auto eager = [&] {
    TESSERA_CHECK_OK(body(stream()));
    return Download(y);
  };
  auto poison = [&] {
    TESSERA_CHECK_OK(backend().Memset(y.data(), 0xff, y.nbytes(), stream()));
    TESSERA_CHECK_OK(stream().Synchronize());
  };
  auto replay = [&](Graph& graph) {
    TESSERA_CHECK_OK(graph.Launch(stream()));
    return Download(y);
  };

  const std::vector<float> first = eager();
  poison();
  auto graph = backend().CaptureGraph(stream(), body);
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_TRUE(stream().Synchronize().ok());
  for (const float v : Download(y)) ASSERT_TRUE(std::isnan(v)) << "recording ran the work";
  EXPECT_EQ(replay(**graph), first);

  // New contents in the same memory: the replay computes over them.
  const std::vector<float> other = testing::RandomFloats(rng, rows * k);
  ASSERT_TRUE(backend().CopyToDevice(other.data(), x.data(), x.nbytes(), stream()).ok());
  const std::vector<float> second = eager();
  ASSERT_NE(second, first);
  poison();
  EXPECT_EQ(replay(**graph), second);
  poison();
  EXPECT_EQ(replay(**graph), second) << "a second replay";
}

TEST_P(GraphConformance, AFailedRecordingReturnsItsErrorAndLeavesTheStreamUsable) {
  const GraphBody failing = [](Stream&) {
    return absl::InvalidArgumentError("the body's own error");
  };
  auto failed = backend().CaptureGraph(stream(), failing);
  if (backend().name() == "cuda") {
    EXPECT_EQ(failed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(failed.status().message(), "the body's own error");
  } else {
    // The emulation runs the body only when launched, so its error comes from there.
    ASSERT_TRUE(failed.ok()) << failed.status();
    const absl::Status launched = (*failed)->Launch(stream());
    EXPECT_EQ(launched.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(launched.message(), "the body's own error");
  }
  if (backend().name() == "cuda") {
    // Waiting for a stream that is being recorded is refused by CUDA and ends the recording.
    auto waiting = backend().CaptureGraph(stream(), [](Stream& s) { return s.Synchronize(); });
    EXPECT_FALSE(waiting.ok());
  }
  EXPECT_EQ(backend().CaptureGraph(stream(), GraphBody()).status().code(),
            absl::StatusCode::kInvalidArgument);
  const MutableTensorView y = Uninitialized(DataType::kF32, {16});
  ASSERT_TRUE(backend().Memset(y.data(), 0, y.nbytes(), stream()).ok());
  ASSERT_TRUE(stream().Synchronize().ok());
  EXPECT_EQ(Download(y), std::vector<float>(16, 0.0f));
}

INSTANTIATE_TEST_SUITE_P(Backends, GraphConformance, ::testing::Values("cpu_graphs", "cuda"),
                         testing::BackendParamName());

TEST(CpuBackendTest, RecordsNoGraphsUnlessAskedToEmulateThem) {
  auto backend = CreateCpuBackend({});
  ASSERT_TRUE(backend.ok());
  EXPECT_FALSE((*backend)->supports_graphs());
  auto stream = (*backend)->CreateStream();
  ASSERT_TRUE(stream.ok());
  EXPECT_EQ(
      (*backend)->CaptureGraph(**stream, [](Stream&) { return absl::OkStatus(); }).status().code(),
      absl::StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace tessera::kernels
