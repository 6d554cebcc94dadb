// The kernel benchmark's bookkeeping on the CPU backend at a tiny shape: every op runs, the bytes
// and FLOPs each case is held to are the ones its op must move and do, caps skip cases with the
// reason, bad options and failing ops are named, and the JSON carries it all. Times are only
// checked to be positive (a benchmark never asserts on speed).
#include "kernels/bench/kernel_bench.h"

#include <algorithm>
#include <map>
#include <string>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"

namespace tessera::kernels::bench {
namespace {

KernelBenchOptions TinyOptions() {
  KernelBenchOptions o;
  o.shape = {/*hidden=*/64,   /*q_heads=*/4,       /*kv_heads=*/2,
             /*head_dim=*/16, /*intermediate=*/96,
             /*vocab=*/300};
  o.dtype = DataType::kBF16;
  o.activation_dtype = DataType::kF32;
  o.batch_sizes = {2, 32};
  o.contexts = {40, 4096};
  o.prefill_tokens = {24};
  o.copy_bytes = size_t{4} << 20;
  o.gemm_size = 128;
  o.rotate_bytes = size_t{1} << 20;
  o.min_seconds = 0.0;
  o.repeats = 1;
  return o;
}

class KernelBenchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateCpuBackend({});
    ASSERT_TRUE(backend.ok()) << backend.status();
    backend_ = std::move(*backend);
  }
  absl::StatusOr<KernelBenchReport> Run(const KernelBenchOptions& o) {
    auto peaks = MeasurePeaks(*backend_, o);
    if (!peaks.ok()) return peaks.status();
    return RunKernelBench(*backend_, o, *peaks);
  }
  std::unique_ptr<Backend> backend_;
};

const KernelResult* Find(const KernelBenchReport& report, const std::string& op,
                         const std::string& shape) {
  for (const KernelResult& r : report.results) {
    if (r.op == op && r.shape == shape) return &r;
  }
  return nullptr;
}

TEST_F(KernelBenchTest, EveryOpRunsAndCountsWhatItMustMoveAndDo) {
  const KernelBenchOptions o = TinyOptions();
  std::vector<KernelResult> heard;
  auto peaks = MeasurePeaks(*backend_, o);
  ASSERT_TRUE(peaks.ok()) << peaks.status();
  EXPECT_GT(peaks->copy_bytes_per_second, 0);
  EXPECT_GT(peaks->gemm_flops_per_second, 0);
  auto report =
      RunKernelBench(*backend_, o, *peaks, [&](const KernelResult& r) { heard.push_back(r); });
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->backend, "cpu");
  EXPECT_NE(report->device.find("threads"), std::string::npos) << report->device;
  EXPECT_TRUE(report->skipped.empty());
  EXPECT_EQ(heard.size(), report->results.size());

  std::map<std::string, int> per_op;
  for (const KernelResult& r : report->results) {
    ++per_op[r.op];
    EXPECT_GT(r.seconds, 0) << r.op << " " << r.shape;
    EXPECT_GT(r.bytes, 0) << r.op << " " << r.shape;
    EXPECT_NEAR(r.bandwidth_ratio, r.bytes / r.seconds / peaks->copy_bytes_per_second, 1e-12);
  }
  for (const std::string& op : KernelOpNames()) EXPECT_GT(per_op[op], 0) << op;
  // Per-row ops at each decode batch and prefill size; matmul for 5 weights each; attention on
  // the decode grid and each prefill size; sampling at each decode batch.
  EXPECT_EQ(per_op["add_rms_norm"], 3);
  EXPECT_EQ(per_op["matmul"], 15);
  EXPECT_EQ(per_op["decode_attention"], 4);
  EXPECT_EQ(per_op["prefill_attention"], 1);
  EXPECT_EQ(per_op["sample_top_p"], 2);

  // add_rms_norm: input and residual read, residual and output written (f32), weight (bf16).
  const KernelResult* norm = Find(*report, "add_rms_norm", "tokens=2 hidden=64");
  ASSERT_NE(norm, nullptr);
  EXPECT_DOUBLE_EQ(norm->bytes, 4.0 * 2 * 64 * 4 + 64 * 2);
  EXPECT_EQ(norm->target.kind, Target::Kind::kBandwidth);
  EXPECT_DOUBLE_EQ(norm->target.ratio, 0.8);

  // gate_up: 2 * m * n * k FLOPs; the bf16 weight, the f32 input and output.
  const KernelResult* gate_up = Find(*report, "matmul", "gate_up m=32 n=192 k=64");
  ASSERT_NE(gate_up, nullptr);
  EXPECT_DOUBLE_EQ(gate_up->flops, 2.0 * 32 * 192 * 64);
  EXPECT_DOUBLE_EQ(gate_up->bytes, 192.0 * 64 * 2 + 32.0 * 64 * 4 + 32.0 * 192 * 4);
  ASSERT_NE(Find(*report, "matmul", "qkv m=2 n=128 k=64"), nullptr);  // (4 + 2 * 2) * 16

  // Decode attention: every sequence reads its whole context's K and V; 4 * q_heads * head_dim
  // FLOPs per (query, key) pair. The target applies from batch 32 and context 4096.
  const KernelResult* decode = Find(*report, "decode_attention", "batch=32 context=4096");
  ASSERT_NE(decode, nullptr);
  const double kv = 2.0 * 32 * 4096 * 2 * 16 * 2;
  const double q_out = 2.0 * 32 * 4 * 16 * 4;
  const double tables = (32.0 * 256 + 2 * 32 + 1) * 4;
  EXPECT_DOUBLE_EQ(decode->bytes, kv + q_out + tables);
  EXPECT_DOUBLE_EQ(decode->flops, 4.0 * 32 * 4096 * 4 * 16);
  EXPECT_EQ(decode->target.kind, Target::Kind::kBandwidth);
  EXPECT_EQ(Find(*report, "decode_attention", "batch=2 context=4096")->target.kind,
            Target::Kind::kNone);

  // Penalties touch the listed logits only (read and written, with id and count) and the bans.
  const KernelResult* penalties = Find(*report, "apply_penalties", "batch=2 tokens=300 vocab=300");
  ASSERT_NE(penalties, nullptr);
  EXPECT_DOUBLE_EQ(penalties->bytes, 2.0 * (300 * 16 + 3 * 8));

  // Prefill attention is causal: row i attends i + 1 keys.
  const KernelResult* prefill = Find(*report, "prefill_attention", "tokens=24 causal");
  ASSERT_NE(prefill, nullptr);
  EXPECT_DOUBLE_EQ(prefill->flops, 4.0 * (24.0 * 25.0 / 2.0) * 4 * 16);
  EXPECT_EQ(prefill->target.kind, Target::Kind::kNone);  // the target is set at 4k tokens
}

TEST_F(KernelBenchTest, OnlyTheChosenOpsRun) {
  KernelBenchOptions o = TinyOptions();
  o.ops = {"rope", "sample_greedy"};
  auto report = Run(o);
  ASSERT_TRUE(report.ok()) << report.status();
  for (const KernelResult& r : report->results) {
    EXPECT_TRUE(r.op == "rope" || r.op == "sample_greedy") << r.op;
  }
  EXPECT_EQ(report->results.size(), 5u);
}

TEST_F(KernelBenchTest, CapsSkipCasesWithTheReason) {
  KernelBenchOptions o = TinyOptions();
  o.ops = {"decode_attention"};
  o.max_case_bytes = size_t{1} << 20;  // batch 32 at context 4096 needs far more
  auto report = Run(o);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_FALSE(report->skipped.empty());
  for (const SkippedCase& s : report->skipped) {
    EXPECT_EQ(s.op, "decode_attention");
    EXPECT_NE(s.reason.find("more than the cap"), std::string::npos) << s.reason;
  }
  EXPECT_EQ(report->results.size() + report->skipped.size(), 4u);
  EXPECT_EQ(Find(*report, "decode_attention", "batch=32 context=4096"), nullptr);

  o = TinyOptions();
  o.ops = {"matmul"};
  o.max_case_seconds = 1e-12;
  report = Run(o);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_TRUE(report->results.empty());
  ASSERT_EQ(report->skipped.size(), 15u);
  EXPECT_NE(report->skipped[0].reason.find("at the measured peaks"), std::string::npos);
}

TEST_F(KernelBenchTest, BadOptionsAreNamed) {
  KernelBenchOptions o = TinyOptions();
  o.ops = {"softmax"};
  absl::Status status = ValidateKernelBenchOptions(o);
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("unknown op 'softmax'"), std::string::npos) << status;

  o = TinyOptions();
  o.shape.kv_heads = 3;
  status = Run(o).status();
  EXPECT_TRUE(absl::IsInvalidArgument(status));
  EXPECT_NE(status.message().find("multiple of KV heads"), std::string::npos) << status;

  o = TinyOptions();
  o.contexts = {0};
  EXPECT_TRUE(absl::IsInvalidArgument(ValidateKernelBenchOptions(o)));

  Peaks none;
  EXPECT_TRUE(absl::IsInvalidArgument(RunKernelBench(*backend_, TinyOptions(), none).status()));
}

TEST_F(KernelBenchTest, AFailingOpIsNamedWithItsCase) {
  // The CPU backend computes activations in f32 only: bf16 activations fail in the first op.
  KernelBenchOptions o = TinyOptions();
  o.ops = {"add_rms_norm"};
  auto peaks = MeasurePeaks(*backend_, o);  // f32 activations
  ASSERT_TRUE(peaks.ok());
  o.activation_dtype = DataType::kBF16;
  const absl::Status status = RunKernelBench(*backend_, o, *peaks).status();
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("add_rms_norm tokens=2 hidden=64: "), std::string::npos)
      << status;
}

TEST_F(KernelBenchTest, TheJsonCarriesTheReport) {
  KernelBenchOptions o = TinyOptions();
  o.ops = {"add_rms_norm", "decode_attention"};
  o.max_case_bytes = size_t{1} << 20;
  auto report = Run(o);
  ASSERT_TRUE(report.ok()) << report.status();
  const nlohmann::json j = nlohmann::json::parse(ReportToJson(*report));
  EXPECT_EQ(j["backend"], "cpu");
  EXPECT_EQ(j["dtype"], "bf16");
  EXPECT_EQ(j["activation_dtype"], "f32");
  EXPECT_EQ(j["shape"]["vocab"], 300);
  EXPECT_GT(j["peaks"]["copy_bytes_per_second"].get<double>(), 0);
  ASSERT_EQ(j["results"].size(), report->results.size());
  ASSERT_EQ(j["skipped"].size(), report->skipped.size());
  const auto& first = j["results"][0];
  EXPECT_EQ(first["op"], "add_rms_norm");
  EXPECT_EQ(first["target"]["of"], "copy");
  EXPECT_EQ(first["target"]["met"].get<bool>(), report->results[0].meets_target());
  const std::string peaks = FormatPeaks(report->peaks);
  EXPECT_EQ(peaks.rfind("peak copy: ", 0), 0u) << peaks;
  EXPECT_NE(peaks.find("\npeak GEMM: "), std::string::npos) << peaks;
  ASSERT_FALSE(report->skipped.empty());
  const std::string skipped = FormatSkippedLine(report->skipped[0]);
  EXPECT_EQ(skipped.rfind("decode_attention ", 0), 0u) << skipped;
  EXPECT_NE(skipped.find("skipped: needs"), std::string::npos) << skipped;
}

}  // namespace
}  // namespace tessera::kernels::bench
