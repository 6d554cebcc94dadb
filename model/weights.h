// Where a model's tensors come from: a checkpoint on disk (model/safetensors.h) or memory
// (random weights for benchmarks and tests). Views stay valid for the lifetime of the source.
// Const methods are safe to call from several threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"
#include "model/config.h"

namespace tessera::model {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The tensor called `name` (a host view). kNotFound naming the tensor and the source if absent.
  virtual absl::StatusOr<TensorView> Get(absl::string_view name) const = 0;
  virtual std::vector<std::string> Names() const = 0;
  // Where the tensors come from, for messages ("/models/x", "random weights").
  virtual std::string Describe() const = 0;
};

// A tensor a Llama-family model needs, with the shape its config implies.
struct TensorSpec {
  std::string name;
  Shape shape;
};

// Every tensor the model of `config` reads, in a stable order (embedding, layers, norm, head).
std::vector<TensorSpec> LlamaTensorSpecs(const ModelConfig& config);

// Checks that `source` has every tensor of LlamaTensorSpecs with the right shape and a floating
// dtype (f32, f16 or bf16). Errors name the tensor, the source and what is wrong.
absl::Status ValidateWeights(const ModelConfig& config, const WeightSource& source);

// Tensors owned in memory.
class InMemoryWeights final : public WeightSource {
 public:
  explicit InMemoryWeights(std::string description) : description_(std::move(description)) {}
  // Adds (or replaces) a tensor holding a copy of `data` (nbytes = numel * dtype size).
  void Add(std::string name, DataType dtype, Shape shape, const void* data);
  // Adds a tensor of the given shape and returns its memory for the caller to fill.
  void* AddUninitialized(std::string name, DataType dtype, Shape shape);

  absl::StatusOr<TensorView> Get(absl::string_view name) const override;
  std::vector<std::string> Names() const override;
  std::string Describe() const override { return description_; }

 private:
  struct Entry {
    std::string name;
    DataType dtype;
    Shape shape;
    std::unique_ptr<char[]> data;
  };
  std::string description_;
  std::vector<Entry> entries_;
};

// Deterministic random weights for `config` (same seed, same bytes on every machine): linear
// weights ~ N(0, init_std) (Box-Muller over SplitMix64), norm weights ~ 1 + N(0, init_std),
// biases ~ N(0, init_std), stored as `dtype` (f32, f16 or bf16; other dtypes are a bug). Each
// tensor has its own stream, seeded from `seed` and the FNV-1a hash of its name, so a tensor's
// values do not depend on the others. About 10 ns per parameter on one core.
std::unique_ptr<InMemoryWeights> MakeRandomWeights(const ModelConfig& config, DataType dtype,
                                                   uint64_t seed, float init_std = 0.02f);

}  // namespace tessera::model
