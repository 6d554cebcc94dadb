#include "tests/kernels/test_backends.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef TESSERA_HAVE_CUDA_BACKEND
#include "kernels/cuda/cuda_backend.h"
#endif

namespace tessera::kernels::testing {

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(absl::string_view name) {
  if (name == "cpu") return CreateCpuBackend(CpuBackendOptions{});
  if (name == "cpu_portable") {
    CpuBackendOptions options;
    options.portable_kernels = true;
    return CreateCpuBackend(options);
  }
  if (name == "cpu_graphs") {
    CpuBackendOptions options;
    options.emulate_graphs = true;
    return CreateCpuBackend(options);
  }
  if (name == "cuda" || name == "cuda_tensor_cores") {
#ifdef TESSERA_HAVE_CUDA_BACKEND
    CudaBackendOptions options;
    if (name == "cuda_tensor_cores") options.attention_kernel = CudaAttentionKernel::kTensorCores;
    return CreateCudaBackend(options);
#else
    return absl::UnavailableError("the cuda backend is not built (TESSERA_WITH_CUDA=OFF)");
#endif
  }
  return absl::NotFoundError(absl::StrCat("unknown backend '", name, "'"));
}

std::vector<std::string> BackendNames() { return {"cpu", "cpu_portable", "cuda"}; }

std::vector<float> RoundTo(DataType dtype, std::vector<float> values) {
  if (dtype == DataType::kF32) return values;
  std::vector<uint16_t> half(values.size());
  ConvertFromF32(values.data(), dtype, half.data(), values.size());
  ConvertToF32(dtype, half.data(), values.data(), values.size());
  return values;
}

double Rounding(DataType dtype) {
  switch (dtype) {
    case DataType::kBF16:
      return 0x1p-8;
    case DataType::kF16:
      return 0x1p-11;
    default:
      return 0.0;
  }
}

std::vector<float> RandomFloats(std::mt19937_64& rng, size_t count, float low, float high) {
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> values(count);
  for (float& v : values) v = dist(rng);
  return values;
}

void BackendTest::SetUp() {
  auto backend = MakeBackend(GetParam());
  if (!backend.ok()) GTEST_SKIP() << "backend " << GetParam() << ": " << backend.status();
  backend_ = std::move(*backend);
  auto stream = backend_->CreateStream();
  ASSERT_TRUE(stream.ok()) << stream.status();
  stream_ = std::move(*stream);
}

MutableTensorView BackendTest::Uninitialized(DataType dtype, Shape shape) {
  const size_t bytes = static_cast<size_t>(NumElements(shape)) * DataTypeSize(dtype);
  auto buffer = backend_->Allocate(bytes);
  TESSERA_CHECK(buffer.ok()) << buffer.status();
  TESSERA_CHECK_OK(backend_->Memset(buffer->data(), 0xff, bytes, *stream_));
  MutableTensorView view = buffer->View(dtype, std::move(shape));
  buffers_.push_back(std::move(*buffer));
  return view;
}

MutableTensorView BackendTest::Upload(const std::vector<float>& values, DataType dtype,
                                      Shape shape) {
  TESSERA_CHECK_EQ(static_cast<int64_t>(values.size()), NumElements(shape));
  MutableTensorView view = Uninitialized(dtype, std::move(shape));
  std::vector<char> host(view.nbytes());
  ConvertFromF32(values.data(), dtype, host.data(), values.size());
  TESSERA_CHECK_OK(backend_->CopyToDevice(host.data(), view.data(), host.size(), *stream_));
  TESSERA_CHECK_OK(stream_->Synchronize());
  return view;
}

MutableTensorView BackendTest::UploadI32(const std::vector<int32_t>& values, Shape shape) {
  TESSERA_CHECK_EQ(static_cast<int64_t>(values.size()), NumElements(shape));
  MutableTensorView view = Uninitialized(DataType::kI32, std::move(shape));
  TESSERA_CHECK_OK(backend_->CopyToDevice(values.data(), view.data(), view.nbytes(), *stream_));
  TESSERA_CHECK_OK(stream_->Synchronize());
  return view;
}

MutableTensorView BackendTest::UploadI64(const std::vector<int64_t>& values, Shape shape) {
  TESSERA_CHECK_EQ(static_cast<int64_t>(values.size()), NumElements(shape));
  MutableTensorView view = Uninitialized(DataType::kI64, std::move(shape));
  TESSERA_CHECK_OK(backend_->CopyToDevice(values.data(), view.data(), view.nbytes(), *stream_));
  TESSERA_CHECK_OK(stream_->Synchronize());
  return view;
}

MutableTensorView BackendTest::SubView(const MutableTensorView& base, int64_t offset, Shape shape,
                                       Shape strides) {
  char* data = static_cast<char*>(base.data()) + offset * static_cast<int64_t>(base.element_size());
  return MutableTensorView(data, base.dtype(), std::move(shape), std::move(strides), base.device());
}

// The view's elements in row-major order, each element_size() bytes.
std::vector<char> BackendTest::DownloadBytes(const TensorView& view) {
  const int64_t elem = static_cast<int64_t>(view.element_size());
  int64_t span = 1;
  for (int i = 0; i < view.rank(); ++i) span += (view.dim(i) - 1) * view.stride(i);
  const int64_t count = view.numel();
  std::vector<char> out(static_cast<size_t>(count * elem));
  if (count == 0) return out;
  std::vector<char> raw(static_cast<size_t>(span * elem));
  TESSERA_CHECK_OK(backend_->CopyToHost(view.data(), raw.data(), raw.size(), *stream_));
  TESSERA_CHECK_OK(stream_->Synchronize());
  std::vector<int64_t> index(static_cast<size_t>(view.rank()), 0);
  for (int64_t n = 0; n < count; ++n) {
    int64_t offset = 0;
    for (int i = 0; i < view.rank(); ++i) offset += index[i] * view.stride(i);
    std::memcpy(&out[n * elem], &raw[offset * elem], static_cast<size_t>(elem));
    for (int i = view.rank() - 1; i >= 0; --i) {
      if (++index[i] < view.dim(i)) break;
      index[i] = 0;
    }
  }
  return out;
}

std::vector<float> BackendTest::Download(const TensorView& view) {
  const std::vector<char> bytes = DownloadBytes(view);
  std::vector<float> values(static_cast<size_t>(view.numel()));
  ConvertToF32(view.dtype(), bytes.data(), values.data(), values.size());
  return values;
}

std::vector<int32_t> BackendTest::DownloadI32(const TensorView& view) {
  TESSERA_CHECK(view.dtype() == DataType::kI32);
  const std::vector<char> bytes = DownloadBytes(view);
  std::vector<int32_t> values(static_cast<size_t>(view.numel()));
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return values;
}

}  // namespace tessera::kernels::testing
