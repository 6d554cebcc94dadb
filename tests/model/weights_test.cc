#include "model/weights.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "model/safetensors.h"
#include "tests/source_dir.h"

namespace tessera::model {
namespace {

using ::testing::HasSubstr;

ModelConfig SmallConfig(Architecture arch = Architecture::kLlama) {
  ModelConfig config;
  config.architecture = arch;
  config.vocab_size = 64;
  config.hidden_size = 32;
  config.intermediate_size = 48;
  config.num_hidden_layers = 2;
  config.num_attention_heads = 4;
  config.num_key_value_heads = 2;
  config.head_dim = 8;
  config.attention_bias = arch == Architecture::kQwen2;
  config.qk_norm = arch == Architecture::kQwen3;
  return config;
}

const TensorSpec* FindSpec(const std::vector<TensorSpec>& specs, absl::string_view name) {
  for (const TensorSpec& spec : specs) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

TEST(WeightsTest, LlamaSpecsHaveHuggingFaceNamesAndShapes) {
  const std::vector<TensorSpec> specs = LlamaTensorSpecs(SmallConfig());
  ASSERT_EQ(specs.size(), 1 + 2 * 9 + 2u);
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.front().shape, (Shape{64, 32}));
  EXPECT_EQ(specs.back().name, "lm_head.weight");
  const TensorSpec* k = FindSpec(specs, "model.layers.1.self_attn.k_proj.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->shape, (Shape{16, 32}));
  const TensorSpec* o = FindSpec(specs, "model.layers.0.self_attn.o_proj.weight");
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->shape, (Shape{32, 32}));
  const TensorSpec* down = FindSpec(specs, "model.layers.0.mlp.down_proj.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->shape, (Shape{32, 48}));
  EXPECT_NE(FindSpec(specs, "model.norm.weight"), nullptr);
  EXPECT_EQ(FindSpec(specs, "model.layers.0.self_attn.q_proj.bias"), nullptr);
}

TEST(WeightsTest, TiedEmbeddingsHaveNoLmHead) {
  ModelConfig config = SmallConfig();
  config.tie_word_embeddings = true;
  EXPECT_EQ(FindSpec(LlamaTensorSpecs(config), "lm_head.weight"), nullptr);
}

TEST(WeightsTest, Qwen2HasBiasesAndQwen3HasQkNorms) {
  const std::vector<TensorSpec> qwen2 = LlamaTensorSpecs(SmallConfig(Architecture::kQwen2));
  const TensorSpec* bias = FindSpec(qwen2, "model.layers.0.self_attn.v_proj.bias");
  ASSERT_NE(bias, nullptr);
  EXPECT_EQ(bias->shape, (Shape{16}));
  const std::vector<TensorSpec> qwen3 = LlamaTensorSpecs(SmallConfig(Architecture::kQwen3));
  const TensorSpec* q_norm = FindSpec(qwen3, "model.layers.1.self_attn.q_norm.weight");
  ASSERT_NE(q_norm, nullptr);
  EXPECT_EQ(q_norm->shape, (Shape{8}));
  EXPECT_NE(FindSpec(qwen3, "model.layers.1.self_attn.k_norm.weight"), nullptr);
  EXPECT_EQ(FindSpec(qwen3, "model.layers.0.self_attn.q_proj.bias"), nullptr);
}

TEST(WeightsTest, RandomWeightsAreValidAndDeterministic) {
  const ModelConfig config = SmallConfig(Architecture::kQwen3);
  auto a = MakeRandomWeights(config, DataType::kBF16, /*seed=*/7);
  auto b = MakeRandomWeights(config, DataType::kBF16, /*seed=*/7);
  auto c = MakeRandomWeights(config, DataType::kBF16, /*seed=*/8);
  ASSERT_TRUE(ValidateWeights(config, *a).ok()) << ValidateWeights(config, *a);
  EXPECT_EQ(a->Names().size(), LlamaTensorSpecs(config).size());
  bool differs = false;
  for (const std::string& name : a->Names()) {
    const TensorView va = *a->Get(name);
    const TensorView vb = *b->Get(name);
    const TensorView vc = *c->Get(name);
    EXPECT_EQ(va.dtype(), DataType::kBF16);
    EXPECT_EQ(std::memcmp(va.data(), vb.data(), va.nbytes()), 0) << name;
    differs = differs || std::memcmp(va.data(), vc.data(), va.nbytes()) != 0;
  }
  EXPECT_TRUE(differs);
}

TEST(WeightsTest, RandomWeightsHaveTheRequestedDistribution) {
  ModelConfig config = SmallConfig();
  config.vocab_size = 4096;
  auto weights = MakeRandomWeights(config, DataType::kF32, /*seed=*/1, /*init_std=*/0.5f);
  const TensorView embed = *weights->Get("model.embed_tokens.weight");
  const float* e = embed.data_as<float>();
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < embed.numel(); ++i) {
    sum += e[i];
    sum_sq += double(e[i]) * e[i];
  }
  const double mean = sum / embed.numel();
  const double std = std::sqrt(sum_sq / embed.numel() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.01);
  EXPECT_NEAR(std, 0.5, 0.01);
  const TensorView norm = *weights->Get("model.norm.weight");
  double norm_mean = 0;
  for (int64_t i = 0; i < norm.numel(); ++i) norm_mean += norm.data_as<float>()[i];
  EXPECT_NEAR(norm_mean / norm.numel(), 1.0, 0.3);
}

TEST(WeightsTest, RandomWeightsInF16MatchF32Rounded) {
  const ModelConfig config = SmallConfig();
  auto f32 = MakeRandomWeights(config, DataType::kF32, 3);
  auto f16 = MakeRandomWeights(config, DataType::kF16, 3);
  const TensorView a = *f32->Get("model.layers.0.mlp.up_proj.weight");
  const TensorView b = *f16->Get("model.layers.0.mlp.up_proj.weight");
  for (int64_t i = 0; i < a.numel(); ++i) {
    ASSERT_EQ(F32ToF16(a.data_as<float>()[i]), b.data_as<uint16_t>()[i]) << i;
  }
}

TEST(WeightsTest, InMemoryWeightsAddReplacesAndCopies) {
  InMemoryWeights weights("test weights");
  const float one[2] = {1, 2};
  const float two[3] = {3, 4, 5};
  weights.Add("x", DataType::kF32, {2}, one);
  weights.Add("x", DataType::kF32, {3}, two);
  EXPECT_EQ(weights.Names().size(), 1u);
  const TensorView x = *weights.Get("x");
  EXPECT_EQ(x.shape(), (Shape{3}));
  EXPECT_EQ(x.data_as<float>()[2], 5.0f);
  EXPECT_NE(x.data(), static_cast<const void*>(two));
}

TEST(WeightsTest, RandomWeightsWrittenAsSafetensorsValidate) {
  const ModelConfig config = SmallConfig(Architecture::kQwen2);
  auto weights = MakeRandomWeights(config, DataType::kBF16, 5);
  std::vector<std::pair<std::string, TensorView>> tensors;
  for (const std::string& name : weights->Names()) tensors.emplace_back(name, *weights->Get(name));
  const std::string dir = ::testing::TempDir() + "/weights_test_random_checkpoint";
  std::filesystem::create_directories(dir);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_TRUE(ValidateWeights(config, **checkpoint).ok()) << ValidateWeights(config, **checkpoint);
  const TensorView a = *weights->Get("model.layers.1.self_attn.q_proj.bias");
  const TensorView b = *(*checkpoint)->Get("model.layers.1.self_attn.q_proj.bias");
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0);
}

// The checkpoints transformers wrote for the numerical-truth fixtures (tests/reference/).
TEST(WeightsTest, TransformersFixturesLoadAndValidate) {
  const std::filesystem::path root =
      std::filesystem::path(tessera::testing::SourceDir()) / "tests" / "reference" / "fixtures";
  std::error_code error;
  if (!std::filesystem::is_directory(root, error)) GTEST_SKIP() << "no fixtures in " << root;
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(root, error)) {
    if (!std::filesystem::exists(entry.path() / "config.json")) continue;
    SCOPED_TRACE(entry.path().string());
    absl::StatusOr<ModelConfig> config = LoadModelConfig(entry.path().string());
    ASSERT_TRUE(config.ok()) << config.status();
    auto checkpoint = SafetensorsCheckpoint::Open(entry.path().string());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    EXPECT_TRUE(ValidateWeights(*config, **checkpoint).ok())
        << ValidateWeights(*config, **checkpoint);
    ++checked;
  }
  if (checked == 0) GTEST_SKIP() << "no fixtures in " << root;
}

// ---- One test per malformed input, showing its message -------------------------------------

TEST(WeightsErrorTest, MissingTensorNamesTensorAndSource) {
  const ModelConfig config = SmallConfig();
  InMemoryWeights weights("/models/x");
  for (const TensorSpec& spec : LlamaTensorSpecs(config)) {
    if (spec.name == "model.layers.1.mlp.gate_proj.weight") continue;
    weights.AddUninitialized(spec.name, DataType::kF32, spec.shape);
  }
  const absl::Status s = ValidateWeights(config, weights);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(),
              HasSubstr("/models/x: missing tensor \"model.layers.1.mlp.gate_proj.weight\""));
}

TEST(WeightsErrorTest, ShapeNotMatchingConfig) {
  const ModelConfig config = SmallConfig();
  auto weights = MakeRandomWeights(config, DataType::kF32, 1);
  weights->AddUninitialized("model.layers.0.self_attn.k_proj.weight", DataType::kF32, {32, 32});
  const absl::Status s = ValidateWeights(config, *weights);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("tensor \"model.layers.0.self_attn.k_proj.weight\" has shape "
                                     "[32, 32], expected [16, 32]"));
  EXPECT_THAT(s.message(), HasSubstr("random weights"));
}

TEST(WeightsErrorTest, NonFloatDtype) {
  const ModelConfig config = SmallConfig();
  auto weights = MakeRandomWeights(config, DataType::kF32, 1);
  weights->AddUninitialized("model.norm.weight", DataType::kI32, {32});
  const absl::Status s = ValidateWeights(config, *weights);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor \"model.norm.weight\" has dtype i32, expected f32, f16 or bf16"));
}

TEST(WeightsErrorTest, SeveralProblemsAreCounted) {
  const ModelConfig config = SmallConfig();
  InMemoryWeights empty("empty");
  const absl::Status s = ValidateWeights(config, empty);
  EXPECT_THAT(s.message(), HasSubstr("missing tensor \"model.embed_tokens.weight\""));
  EXPECT_THAT(s.message(), HasSubstr("(and 20 more problems with the weights)"));
}

}  // namespace
}  // namespace tessera::model
