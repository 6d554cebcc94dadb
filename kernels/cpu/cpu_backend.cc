#include "kernels/cpu/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include <cblas.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "kernels/cpu/cpu_internal.h"

namespace tessera::kernels {
namespace cpu {
namespace {

constexpr size_t kAlignment = 256;

OpTable CpuOpTable() {
  OpTable table;
  table.embedding = &CpuEmbedding;
  table.rms_norm = &CpuRmsNorm;
  table.matmul = &CpuMatmul;
  table.rope = &CpuRope;
  table.swiglu = &CpuSwiglu;
  table.kv_write = &CpuKvWrite;
  table.paged_attention = &CpuPagedAttention;
  table.sample = &CpuSample;
  table.apply_penalties = &CpuApplyPenalties;
  return table;
}

absl::Status CheckCopy(absl::string_view call, const void* a, const void* b, size_t bytes) {
  if (bytes != 0 && (a == nullptr || b == nullptr)) {
    return absl::InvalidArgumentError(
        absl::StrCat("CpuBackend::", call, ": null pointer for ", bytes, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

CpuBackend::CpuBackend(int num_threads, const SimdKernels& simd, bool emulate_graphs)
    : Backend(CpuOpTable()),
      num_threads_(num_threads),
      simd_(simd),
      emulate_graphs_(emulate_graphs) {}

absl::StatusOr<DeviceBuffer> CpuBackend::Allocate(size_t bytes) {
  // aligned_alloc wants a multiple of the alignment; a zero-byte buffer still gets a pointer.
  const size_t rounded =
      std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
  if (rounded < bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CpuBackend::Allocate: ", bytes, " bytes is too large"));
  }
  void* data = std::aligned_alloc(kAlignment, rounded);
  if (data == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CpuBackend::Allocate: aligned_alloc of ", bytes, " bytes failed"));
  }
  return DeviceBuffer(data, bytes, Device::Cpu(), [](void* p) { std::free(p); });
}

absl::StatusOr<DeviceBuffer> CpuBackend::AllocateHost(size_t bytes) {
  absl::StatusOr<DeviceBuffer> buffer = Allocate(bytes);
  if (buffer.ok() && bytes != 0) std::memset(buffer->data(), 0, bytes);
  return buffer;
}

absl::Status CpuBackend::CopyToDevice(const void* host, void* device, size_t bytes, Stream&) {
  if (absl::Status s = CheckCopy("CopyToDevice", host, device, bytes); !s.ok()) return s;
  if (bytes != 0) std::memmove(device, host, bytes);
  return absl::OkStatus();
}

absl::Status CpuBackend::CopyToHost(const void* device, void* host, size_t bytes, Stream&) {
  if (absl::Status s = CheckCopy("CopyToHost", device, host, bytes); !s.ok()) return s;
  if (bytes != 0) std::memmove(host, device, bytes);
  return absl::OkStatus();
}

absl::Status CpuBackend::CopyOnDevice(const void* src, void* dst, size_t bytes, Stream&) {
  if (absl::Status s = CheckCopy("CopyOnDevice", src, dst, bytes); !s.ok()) return s;
  // Large copies that do not overlap go in slices, one per thread: one core alone cannot draw
  // the memory bandwidth the backend's other ops (and the kernel benchmark's copy peak) see.
  constexpr size_t kSlice = size_t{4} << 20;
  const auto* from = static_cast<const char*>(src);
  auto* to = static_cast<char*>(dst);
  const bool overlap = from < to + bytes && to < from + bytes;
  if (num_threads_ <= 1 || bytes < 2 * kSlice || overlap) {
    if (bytes != 0) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
  const auto slices = static_cast<int64_t>((bytes + kSlice - 1) / kSlice);
#pragma omp parallel for num_threads(num_threads_) schedule(static)
  for (int64_t i = 0; i < slices; ++i) {
    const size_t begin = static_cast<size_t>(i) * kSlice;
    std::memcpy(to + begin, from + begin, std::min(kSlice, bytes - begin));
  }
  return absl::OkStatus();
}

absl::Status CpuBackend::Memset(void* device, int value, size_t bytes, Stream&) {
  if (absl::Status s = CheckCopy("Memset", device, device, bytes); !s.ok()) return s;
  if (bytes != 0) std::memset(device, value, bytes);
  return absl::OkStatus();
}

std::string CpuBackend::Describe() const {
  // The model name as Linux reports it; "unknown CPU" elsewhere.
  std::string model = "unknown CPU";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (absl::StartsWith(line, "model name")) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos)
        model = std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      break;
    }
  }
  return absl::StrCat(model, ", ", num_threads_, " threads, ",
                      &simd_ == &PortableKernels() ? "portable" : "avx2", " kernels");
}

absl::StatusOr<std::unique_ptr<Stream>> CpuBackend::CreateStream() {
  return std::unique_ptr<Stream>(std::make_unique<CpuStream>());
}

namespace {

// CpuBackendOptions::emulate_graphs: a replay is the recorded body called again.
class ReplayedGraph final : public Graph {
 public:
  explicit ReplayedGraph(GraphBody body) : body_(std::move(body)) {}
  absl::Status Launch(Stream& stream) override { return body_(stream); }

 private:
  GraphBody body_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Graph>> CpuBackend::CaptureGraph(Stream& stream,
                                                                const GraphBody& body) {
  if (!emulate_graphs_) return Backend::CaptureGraph(stream, body);
  if (!body) return absl::InvalidArgumentError("CpuBackend::CaptureGraph: empty body");
  return std::unique_ptr<Graph>(std::make_unique<ReplayedGraph>(body));
}

}  // namespace cpu

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const CpuBackendOptions& options) {
  if (options.num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateCpuBackend: num_threads expected >= 0 (0 = OpenMP default), got ",
                     options.num_threads));
  }
  const int threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  const cpu::SimdKernels* simd = options.portable_kernels ? nullptr : cpu::Avx2Kernels();
  if (simd == nullptr) simd = &cpu::PortableKernels();
  openblas_set_num_threads(1);
  return std::unique_ptr<Backend>(
      std::make_unique<cpu::CpuBackend>(threads, *simd, options.emulate_graphs));
}

}  // namespace tessera::kernels
