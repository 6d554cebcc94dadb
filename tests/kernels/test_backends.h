// Helpers of the kernels tests: backends by name, so every conformance suite runs on every
// backend (INSTANTIATE_TEST_SUITE_P over BackendNames(), GTEST_SKIP where one is unavailable),
// and device tensors filled from host values.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/stream.h"
#include "common/tensor.h"
#include "kernels/backend.h"

namespace tessera::kernels::testing {

// "cpu" (AVX2 loops where the CPU has them), "cpu_portable" (portable loops), "cuda".
// Not in BackendNames(): "cpu_graphs", "cpu" with CpuBackendOptions::emulate_graphs;
// "cuda_tensor_cores", "cuda" taking the tensor-core attention tile for decode batches too.
// kUnavailable for a backend this build or machine cannot provide, kNotFound for other names.
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(absl::string_view name);
std::vector<std::string> BackendNames();
// Names instances by backend ("Backends/MatmulConformance.MatchesReference/cuda"), so that
// --gtest_filter='*/cuda' selects one backend.
struct BackendParamName {
  std::string operator()(const ::testing::TestParamInfo<std::string>& info) const {
    return info.param;
  }
};

// f32 values rounded as storing them in `dtype` would (f32: unchanged).
std::vector<float> RoundTo(DataType dtype, std::vector<float> values);
// Relative size of one rounding to `dtype` (half an ulp, doubled for slack); 0 for f32.
double Rounding(DataType dtype);
std::vector<float> RandomFloats(std::mt19937_64& rng, size_t count, float low = -1.0f,
                                float high = 1.0f);

// A conformance test over one backend: owns the backend, a stream and every buffer it makes.
class BackendTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override;

  Backend& backend() { return *backend_; }
  Stream& stream() { return *stream_; }

  // A new device buffer holding `values` converted to `dtype` (f32, f16 or bf16), contiguous.
  MutableTensorView Upload(const std::vector<float>& values, DataType dtype, Shape shape);
  MutableTensorView UploadI32(const std::vector<int32_t>& values, Shape shape);
  MutableTensorView UploadI64(const std::vector<int64_t>& values, Shape shape);
  // A new contiguous device buffer, every byte 0xff (NaN for floats: unwritten outputs show).
  MutableTensorView Uninitialized(DataType dtype, Shape shape);
  // The elements of a (possibly strided) view, converted to f32, in row-major order.
  std::vector<float> Download(const TensorView& view);
  std::vector<int32_t> DownloadI32(const TensorView& view);

  // A strided view into `base` (a contiguous device tensor): `offset` elements in, with `shape`
  // and `strides` in elements.
  static MutableTensorView SubView(const MutableTensorView& base, int64_t offset, Shape shape,
                                   Shape strides);

 private:
  std::vector<char> DownloadBytes(const TensorView& view);

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Stream> stream_;
  std::vector<DeviceBuffer> buffers_;
};

// Prints the seed of a randomised test when it fails.
#define TESSERA_SEEDED_RNG(rng, seed)                      \
  SCOPED_TRACE(::testing::Message() << "seed " << (seed)); \
  std::mt19937_64 rng(seed)

}  // namespace tessera::kernels::testing
