#include "model/config.h"

#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace tessera::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Real Hugging Face configs (trimmed of keys tessera ignores only where noted).
constexpr char kLlama31_8B[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

constexpr char kLlama32_1B[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "head_dim": 64,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 16,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 32.0,
    "high_freq_factor": 4.0,
    "low_freq_factor": 1.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

constexpr char kMistral7B[] = R"({
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": true,
  "vocab_size": 32000
})";

constexpr char kQwen25_05B[] = R"({
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

constexpr char kQwen3_06B[] = R"({
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
})";

// A small config with every required key; tests replace parts of it.
constexpr char kSmall[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "vocab_size": 128,
  "hidden_size": 64,
  "intermediate_size": 96,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2
})";

ModelConfig ParseOrDie(absl::string_view text) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : ModelConfig{};
}

absl::Status ParseError(absl::string_view text) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text, "/models/x/config.json");
  EXPECT_FALSE(config.ok());
  return config.status();
}

std::string WithKey(absl::string_view text, absl::string_view key_and_value) {
  return absl::StrReplaceAll(
      text, {{"\"vocab_size\": 128,", absl::StrCat(key_and_value, ",\n  \"vocab_size\": 128,")}});
}

TEST(ConfigTest, ParsesLlama31With8BShapesAndLlama3Scaling) {
  const ModelConfig c = ParseOrDie(kLlama31_8B);
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.num_hidden_layers, 32);
  EXPECT_EQ(c.num_attention_heads, 32);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_size(), 4096);
  EXPECT_EQ(c.kv_size(), 1024);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_THAT(c.eos_token_ids, ElementsAre(128001));
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.torch_dtype, DataType::kBF16);
}

TEST(ConfigTest, ParsesLlama32TiedWithEosList) {
  const ModelConfig c = ParseOrDie(kLlama32_1B);
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_hidden_layers, 16);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ConfigTest, ParsesMistralWithSlidingWindow) {
  const ModelConfig c = ParseOrDie(kMistral7B);
  EXPECT_EQ(c.architecture, Architecture::kMistral);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_key_value_heads, 8);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_THAT(c.eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c.bos_token_id, 1);
}

TEST(ConfigTest, MistralNullSlidingWindowMeansNone) {
  const std::string text =
      absl::StrReplaceAll(kMistral7B, {{"\"sliding_window\": 4096", "\"sliding_window\": null"}});
  EXPECT_FALSE(ParseOrDie(text).sliding_window.has_value());
}

TEST(ConfigTest, ParsesQwen25WithBiasesAndUnusedSlidingWindow) {
  const ModelConfig c = ParseOrDie(kQwen25_05B);
  EXPECT_EQ(c.architecture, Architecture::kQwen2);
  EXPECT_EQ(c.hidden_size, 896);
  EXPECT_EQ(c.num_attention_heads, 14);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.sliding_window.has_value());  // use_sliding_window: false
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
}

TEST(ConfigTest, QwenSlidingWindowOnlyWhenEnabled) {
  const std::string text = absl::StrReplaceAll(
      kQwen25_05B, {{"\"use_sliding_window\": false", "\"use_sliding_window\": true"}});
  EXPECT_EQ(ParseOrDie(text).sliding_window, 32768);
}

TEST(ConfigTest, ParsesQwen3WithQkNormAndExplicitHeadDim) {
  const ModelConfig c = ParseOrDie(kQwen3_06B);
  EXPECT_EQ(c.architecture, Architecture::kQwen3);
  EXPECT_EQ(c.hidden_size, 1024);
  EXPECT_EQ(c.num_attention_heads, 16);
  EXPECT_EQ(c.head_dim, 128);  // not hidden / heads = 64
  EXPECT_EQ(c.q_size(), 2048);
  EXPECT_EQ(c.kv_size(), 1024);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // an integer in the JSON
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_THAT(c.eos_token_ids, ElementsAre(151645));
}

TEST(ConfigTest, ArchitectureFallsBackToModelType) {
  const std::string text = absl::StrReplaceAll(
      kSmall, {{"\"architectures\": [\"LlamaForCausalLM\"]", "\"model_type\": \"qwen3\""}});
  EXPECT_EQ(ParseOrDie(text).architecture, Architecture::kQwen3);
}

TEST(ConfigTest, AppliesDefaults) {
  const std::string text = absl::StrReplaceAll(kSmall, {{",\n  \"num_key_value_heads\": 2", ""}});
  const ModelConfig c = ParseOrDie(text);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_FALSE(c.bos_token_id.has_value());
  EXPECT_EQ(c.torch_dtype, DataType::kF32);
}

TEST(ConfigTest, NullHeadDimMeansDefault) {
  EXPECT_EQ(ParseOrDie(WithKey(kSmall, "\"head_dim\": null")).head_dim, 16);
}

TEST(ConfigTest, ReadsRopeParametersOfTransformersV5) {
  const std::string text = WithKey(kSmall, R"("rope_parameters": {"rope_type": "llama3",
      "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, "dtype": "float16")");
  const ModelConfig c = ParseOrDie(text);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.torch_dtype, DataType::kF16);
}

TEST(ConfigTest, ReadsDefaultRopeParameters) {
  const ModelConfig c = ParseOrDie(
      WithKey(kSmall, R"("rope_parameters": {"rope_type": "default", "rope_theta": 1e6})"));
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kNone);
}

TEST(ConfigTest, ReadsLinearScalingWithOldTypeKey) {
  const ModelConfig c =
      ParseOrDie(WithKey(kSmall, R"("rope_scaling": {"type": "linear", "factor": 4})"));
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
}

TEST(ConfigTest, GenerationConfigEosIsMergedWithoutDuplicates) {
  ModelConfig c = ParseOrDie(kLlama31_8B);
  ASSERT_TRUE(MergeGenerationConfig(
                  R"({"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
                      "do_sample": true, "temperature": 0.6, "top_p": 0.9})",
                  "generation_config.json", c)
                  .ok());
  EXPECT_THAT(c.eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(c.bos_token_id, 128000);
}

TEST(ConfigTest, LoadModelConfigReadsGenerationConfig) {
  const std::string dir = absl::StrCat(testing::TempDir(), "/config_test_load");
  ASSERT_EQ(system(absl::StrCat("mkdir -p '", dir, "'").c_str()), 0);
  std::ofstream(dir + "/config.json") << kQwen3_06B;
  std::ofstream(dir + "/generation_config.json")
      << R"({"eos_token_id": [151645, 151643], "temperature": 0.6, "top_k": 20, "top_p": 0.95})";
  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645, 151643));
  absl::StatusOr<GenerationDefaults> defaults = LoadGenerationDefaults(dir);
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->temperature, 0.6);
  EXPECT_EQ(defaults->top_k, 20);
  EXPECT_EQ(defaults->top_p, 0.95);
}

TEST(ConfigTest, LoadModelConfigOfMissingDirectoryIsNotFound) {
  absl::StatusOr<ModelConfig> c = LoadModelConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("/nonexistent/model/config.json"));
}

class ConfigRoundTripTest : public testing::TestWithParam<const char*> {};

TEST_P(ConfigRoundTripTest, ModelConfigToJsonReadsBackIdentically) {
  const ModelConfig original = ParseOrDie(GetParam());
  const std::string text = ModelConfigToJson(original);
  absl::StatusOr<ModelConfig> again = ParseModelConfig(text, "written config.json");
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << text;
  EXPECT_TRUE(*again == original) << text;
  EXPECT_THAT(text, HasSubstr("\"model_type\""));
  EXPECT_THAT(text, HasSubstr(std::string(ArchitectureName(original.architecture))));
}

INSTANTIATE_TEST_SUITE_P(RealConfigs, ConfigRoundTripTest,
                         testing::Values(kLlama31_8B, kLlama32_1B, kMistral7B, kQwen25_05B,
                                         kQwen3_06B));

TEST(ConfigTest, RoundTripKeepsLinearScalingSlidingWindowAndNoTokens) {
  ModelConfig c = ParseOrDie(kQwen25_05B);
  c.rope_scaling.type = RopeScaling::Type::kLinear;
  c.rope_scaling.factor = 2.5;
  c.sliding_window = 1024;
  c.eos_token_ids.clear();
  c.bos_token_id.reset();
  c.torch_dtype = DataType::kF32;
  absl::StatusOr<ModelConfig> again = ParseModelConfig(ModelConfigToJson(c), "x");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(*again == c) << ModelConfigToJson(c);
}

TEST(ConfigTest, Llama3ScalingIsWrittenWithRopeType) {
  const std::string text = ModelConfigToJson(ParseOrDie(kLlama32_1B));
  EXPECT_THAT(text, HasSubstr("\"rope_scaling\""));
  EXPECT_THAT(text, HasSubstr("\"rope_type\": \"llama3\""));
  EXPECT_THAT(text, HasSubstr("\"original_max_position_embeddings\": 8192"));
}

// ---- One test per malformed input, showing its message -------------------------------------

TEST(ConfigErrorTest, InvalidJsonNamesFileAndPosition) {
  const absl::Status s = ParseError("{\"hidden_size\": 64,\n  \"vocab_size\": }");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("/models/x/config.json: invalid JSON"));
  EXPECT_THAT(s.message(), HasSubstr("line 2, column 17"));
}

TEST(ConfigErrorTest, UnknownArchitectureIsNamedWithTheSupportedOnes) {
  const absl::Status s =
      ParseError(absl::StrReplaceAll(kSmall, {{"LlamaForCausalLM", "GPT2LMHeadModel"}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("/models/x/config.json"));
  EXPECT_THAT(s.message(), HasSubstr("\"GPT2LMHeadModel\""));
  EXPECT_THAT(
      s.message(),
      HasSubstr("LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"));
}

TEST(ConfigErrorTest, UnknownModelTypeIsNamed) {
  const absl::Status s = ParseError(absl::StrReplaceAll(
      kSmall, {{"\"architectures\": [\"LlamaForCausalLM\"]", "\"model_type\": \"gemma\""}}));
  EXPECT_THAT(s.message(), HasSubstr("\"gemma\""));
  EXPECT_THAT(s.message(), HasSubstr("llama, mistral, qwen2, qwen3"));
}

TEST(ConfigErrorTest, WrongTypedKeyNamesKeyAndExpectedType) {
  const absl::Status s =
      ParseError(absl::StrReplaceAll(kSmall, {{"\"hidden_size\": 64", "\"hidden_size\": \"64\""}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      s.message(),
      HasSubstr("/models/x/config.json: \"hidden_size\" must be an integer, got a string \"64\""));
}

TEST(ConfigErrorTest, WrongTypedNestedKeyIsDotted) {
  const absl::Status s =
      ParseError(WithKey(kSmall, R"("rope_scaling": {"rope_type": "linear", "factor": "2"})"));
  EXPECT_THAT(s.message(), HasSubstr("\"rope_scaling.factor\" must be a number"));
}

TEST(ConfigErrorTest, HeadsNotDivisibleByKvHeads) {
  const absl::Status s = ParseError(
      absl::StrReplaceAll(kSmall, {{"\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"}}));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      s.message(),
      HasSubstr("\"num_attention_heads\" (4) must be divisible by \"num_key_value_heads\" (3)"));
}

TEST(ConfigErrorTest, HiddenNotDivisibleByHeadsWithoutHeadDim) {
  const absl::Status s =
      ParseError(absl::StrReplaceAll(kSmall, {{"\"hidden_size\": 64", "\"hidden_size\": 66"}}));
  EXPECT_THAT(s.message(),
              HasSubstr("\"hidden_size\" (66) must be divisible by \"num_attention_heads\" (4)"));
}

TEST(ConfigErrorTest, NonPositiveSize) {
  const absl::Status s = ParseError(
      absl::StrReplaceAll(kSmall, {{"\"num_hidden_layers\": 2", "\"num_hidden_layers\": 0"}}));
  EXPECT_THAT(s.message(), HasSubstr("\"num_hidden_layers\" must be positive, got 0"));
}

TEST(ConfigErrorTest, MissingRequiredKey) {
  const absl::Status s = ParseError(absl::StrReplaceAll(kSmall, {{"\"vocab_size\": 128,", ""}}));
  EXPECT_THAT(s.message(), HasSubstr("\"vocab_size\" is required but missing"));
}

TEST(ConfigErrorTest, UnknownRopeTypeNamesKeyAndValue) {
  const absl::Status s =
      ParseError(WithKey(kSmall, R"("rope_scaling": {"rope_type": "yarn", "factor": 4.0})"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("\"rope_scaling.rope_type\" has unsupported value \"yarn\""));
}

TEST(ConfigErrorTest, Llama3ScalingWithoutItsKeys) {
  const absl::Status s =
      ParseError(WithKey(kSmall, R"("rope_scaling": {"rope_type": "llama3", "factor": 8.0})"));
  EXPECT_THAT(s.message(), HasSubstr("\"rope_scaling.low_freq_factor\" is required but missing"));
}

TEST(ConfigErrorTest, NonFloatTorchDtype) {
  const absl::Status s = ParseError(WithKey(kSmall, R"("torch_dtype": "int8")"));
  EXPECT_THAT(s.message(), HasSubstr("\"torch_dtype\" must be a floating-point type"));
}

TEST(ConfigErrorTest, EosOfWrongType) {
  const absl::Status s = ParseError(WithKey(kSmall, R"("eos_token_id": [1, "2"])"));
  EXPECT_THAT(s.message(), HasSubstr("\"eos_token_id\" must be an integer or a list of integers"));
}

TEST(ConfigErrorTest, TopLevelNotAnObject) {
  const absl::Status s = ParseError("[1, 2]");
  EXPECT_THAT(s.message(),
              HasSubstr("/models/x/config.json: must hold a JSON object, got an array"));
}

TEST(ConfigErrorTest, QuantizedCheckpointIsRejectedByName) {
  const absl::Status s =
      ParseError(WithKey(kSmall, R"("quantization_config": {"quant_method": "awq"})"));
  EXPECT_THAT(s.message(), HasSubstr("\"quantization_config\""));
}

}  // namespace
}  // namespace tessera::model
