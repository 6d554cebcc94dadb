// Topology files: the shipped examples parse; every kind of mistake is refused with a message that
// names the key and the problem; ranks are placed pool by pool; the mpirun command and rankfile.
#include "launch/topology.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "launch/cluster.h"
#include "tests/source_dir.h"

namespace tessera::launch {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kDemo[] = R"(
model: demo
kv_transport: grpc
coordinator:
  host: 127.0.0.1
  http_port: 8000
  grpc_port: 8001
  internal_port: 8002
engine:
  block_size: 16
  max_num_seqs: 32
pools:
  - name: prefill
    role: prefill
    replicas: 2
    tensor_parallel_size: 2
    engine:
      max_num_seqs: 8
      attention_kernel: simt
  - name: decode
    role: decode
    replicas: 1
    pipeline_parallel_size: 2
    pp_layers: auto
)";

TEST(TopologyTest, ParsesPoolsAndLayersTheEngineSettings) {
  absl::StatusOr<Topology> t = ParseTopology(kDemo);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->model, "demo");
  EXPECT_EQ(t->coordinator.internal_port, 8002);
  ASSERT_EQ(t->pools.size(), 2u);
  EXPECT_EQ(t->pools[0].engine.max_num_seqs, 8);   // the pool's own
  EXPECT_EQ(t->pools[1].engine.max_num_seqs, 32);  // the topology's
  EXPECT_EQ(t->pools[1].engine.block_size, 16);
  EXPECT_EQ(t->pools[1].pp_layers, "auto");
  EXPECT_EQ(t->pools[0].engine.attention_kernel, "simt");
  EXPECT_EQ(t->pools[1].engine.attention_kernel, "auto");
  EXPECT_EQ(t->pools[0].pp_layers, "");
  EXPECT_EQ(t->total_ranks(), 2 * 2 + 2);
  EXPECT_EQ(t->total_replicas(), 3);
  EXPECT_TRUE(t->disaggregated());
  // What TopologyToYaml writes reads back the same.
  absl::StatusOr<Topology> again = ParseTopology(TopologyToYaml(*t));
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << TopologyToYaml(*t);
  EXPECT_EQ(TopologyToYaml(*again), TopologyToYaml(*t));
}

TEST(TopologyTest, TheShippedTopologiesAreValid) {
  const std::filesystem::path dir =
      std::filesystem::path(tessera::testing::SourceDir()) / "launch/topologies";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    absl::StatusOr<Topology> t = LoadTopology(entry.path().string());
    EXPECT_TRUE(t.ok()) << entry.path() << ": " << t.status();
    ++n;
  }
  EXPECT_GE(n, 3);
}

// Each mistake, and the words its message must contain.
struct Bad {
  std::string name;
  std::string from;  // replaced in kDemo ...
  std::string to;    // ... by this
  std::vector<std::string> message;
};

// gtest prints a parameter into the test's CTest name: its name, not its bytes.
void PrintTo(const Bad& bad, std::ostream* os) { *os << bad.name; }

class TopologyErrorTest : public ::testing::TestWithParam<Bad> {};

TEST_P(TopologyErrorTest, NamesTheKeyAndTheProblem) {
  const Bad& bad = GetParam();
  const std::string text = absl::StrReplaceAll(kDemo, {{bad.from, bad.to}});
  ASSERT_NE(text, kDemo) << "the replacement did not apply";
  absl::StatusOr<Topology> t = ParseTopology(text, "t.yaml");
  ASSERT_FALSE(t.ok()) << bad.name;
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("t.yaml: "));
  for (const std::string& words : bad.message) {
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(words)) << bad.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Mistakes, TopologyErrorTest,
    ::testing::Values(
        Bad{"not_yaml", "pools:", "pools: [", {"not valid YAML"}},
        Bad{"unknown_top_key",
            "kv_transport: grpc",
            "kv_transport: grpc\nkv_transprot: ucx",
            {"kv_transprot: unknown key"}},
        Bad{"unknown_pool_key",
            "    replicas: 2",
            "    replicas: 2\n    tp: 2",
            {"pools[0].tp: unknown key", "tensor_parallel_size"}},
        Bad{"unknown_engine_key",
            "  max_num_seqs: 32",
            "  max_num_seqs: 32\n  max_seqs: 3",
            {"engine.max_seqs: unknown key"}},
        Bad{"wrong_type", "replicas: 2", "replicas: two", {"pools[0].replicas", "not an integer"}},
        Bad{"empty_pool", "replicas: 2", "replicas: 0", {"pools[0].replicas", "empty pool"}},
        Bad{"devices_vs_tp",
            "    tensor_parallel_size: 2",
            "    tensor_parallel_size: 2\n    devices: [0]",
            {"pools[0].devices", "1 devices for tensor_parallel_size 2"}},
        Bad{"device_twice",
            "    tensor_parallel_size: 2",
            "    tensor_parallel_size: 2\n    devices: [1, 1]",
            {"device 1 is listed twice"}},
        Bad{"zero_tp", "tensor_parallel_size: 2", "tensor_parallel_size: 0", {"must be >= 1"}},
        Bad{"ports_clash",
            "grpc_port: 8001",
            "grpc_port: 8000",
            {"coordinator.grpc_port", "port 8000 is also coordinator.http_port"}},
        Bad{"port_range", "internal_port: 8002", "internal_port: 70000", {"not in [0, 65535]"}},
        Bad{"tool_call_parser",
            "internal_port: 8002",
            "internal_port: 8002\n  tool_call_parser: qwen",
            {"coordinator.tool_call_parser", "'qwen'", "hermes"}},
        Bad{"reasoning_parser",
            "internal_port: 8002",
            "internal_port: 8002\n  reasoning_parser: r1",
            {"coordinator.reasoning_parser", "'r1'", "deepseek_r1"}},
        Bad{"role", "role: decode", "role: decoder", {"pools[1].role", "'decoder'"}},
        Bad{"no_role", "    role: decode\n", "", {"pools[1].role: is required"}},
        Bad{"duplicate_name",
            "name: decode",
            "name: prefill",
            {"pools[1].name", "names another pool"}},
        Bad{"prefill_alone", "role: decode", "role: mixed", {"prefill pool needs a decode pool"}},
        Bad{"block_sizes",
            "    pipeline_parallel_size: 2",
            "    pipeline_parallel_size: 2\n    engine:\n      block_size: 32",
            {"pools[1].engine.block_size", "one block size"}},
        Bad{"bad_dtype",
            "  block_size: 16",
            "  block_size: 16\n  dtype: int8",
            {"dtype", "'int8'"}},
        Bad{"attention_kernel",
            "  block_size: 16",
            "  block_size: 16\n  attention_kernel: flash",
            {"engine.attention_kernel", "'flash' is not auto, simt or tensor-cores"}},
        Bad{"pp_layers_words",
            "pp_layers: auto",
            "pp_layers: balanced",
            {"pools[1].pp_layers", "'balanced' in 'balanced' is not a number of layers >= 1"}},
        Bad{"pp_layers_stages",
            "pp_layers: auto",
            "pp_layers: 1,1,1",
            {"pools[1].pp_layers", "3 stages for pipeline_parallel_size 2"}},
        Bad{"backend",
            "    replicas: 1",
            "    replicas: 1\n    backend: tpu",
            {"pools[1].backend", "'tpu' is not cpu or cuda"}},
        Bad{"kv_dtype_across_backends",
            "    replicas: 1",
            "    replicas: 1\n    backend: cuda",
            {"pools[1].engine.kv_cache_dtype", "the checkpoint's dtype (auto on cuda) here",
             "float32 in pool 'prefill'", "e.g. bfloat16"}},
        // The same backend, the KV cache named differently.
        Bad{"kv_dtype_named_differently",
            "    replicas: 1",
            "    replicas: 1\n    engine:\n      kv_cache_dtype: bfloat16",
            {"pools[1].engine.kv_cache_dtype", "bfloat16 here, float32 in pool 'prefill'"}},
        Bad{"transport",
            "kv_transport: grpc",
            "kv_transport: rdma",
            {"kv_transport", "'rdma' is not grpc or ucx"}},
        Bad{"hosts_both_forms",
            "    replicas: 1",
            "    replicas: 1\n    hosts: [a]\n    replica_hosts: [a]",
            {"pools[1].replica_hosts", "hosts (rank by rank) or replica_hosts", "not both"}},
        Bad{"replica_hosts_count",
            "    replicas: 2",
            "    replicas: 2\n    replica_hosts: [a]",
            {"pools[0].replica_hosts", "1 entries for 2 replicas"}},
        Bad{"replica_hosts_stages",
            "    replicas: 1",
            "    replicas: 1\n    replica_hosts: [[a, b, c]]",
            {"pools[1].replica_hosts[0]", "3 hosts", "one per pipeline stage (2)"}},
        Bad{"replica_hosts_empty_name",
            "    replicas: 1",
            "    replicas: 1\n    replica_hosts: [[a, '']]",
            {"pools[1].replica_hosts[0]", "a host name is empty"}},
        Bad{"replica_hosts_not_list",
            "    replicas: 1",
            "    replicas: 1\n    replica_hosts: a",
            {"pools[1].replica_hosts", "must be a list, one entry per replica"}},
        Bad{"replica_hosts_map",
            "    replicas: 1",
            "    replicas: 1\n    replica_hosts: [{stage: a}]",
            {"pools[1].replica_hosts[0]", "a host name or a list of them"}},
        Bad{"no_model", "model: demo", "", {"model: is required"}},
        Bad{"pools_not_list", "pools:\n", "pools: 3\nx:\n", {"pools"}}),
    [](const auto& info) { return info.param.name; });

TEST(TopologyTest, CoordinatorSettingsAreWhatLaunchPassesTheCoordinator) {
  absl::StatusOr<Topology> t = ParseTopology(kDemo);
  ASSERT_TRUE(t.ok()) << t.status();
  CoordinatorSettings c = CoordinatorSettingsOf(*t);
  EXPECT_EQ(c.model, "demo");
  EXPECT_EQ(c.served_model_name, "demo");  // the model path when none is named, as vLLM
  EXPECT_EQ(c.bind_host, "127.0.0.1");
  EXPECT_EQ(c.http_port, 8000);
  EXPECT_EQ(c.grpc_port, 8001);
  EXPECT_EQ(c.internal_address, "127.0.0.1:8002");  // the cluster is this machine
  EXPECT_EQ(c.max_model_len, 0);
  // Workers elsewhere: the registry binds every interface; the APIs bind bind_host; the
  // coordinator admits what the smallest pool context holds.
  t->coordinator.host = "tessera-coordinator-internal";
  t->coordinator.bind_host = "0.0.0.0";
  t->served_model_name = "tiny";
  t->pools[0].engine.max_model_len = 512;
  t->pools[1].engine.max_model_len = 256;
  c = CoordinatorSettingsOf(*t);
  EXPECT_EQ(c.internal_address, "0.0.0.0:8002");
  EXPECT_EQ(c.bind_host, "0.0.0.0");
  EXPECT_EQ(c.served_model_name, "tiny");
  EXPECT_EQ(c.max_model_len, 256);
  // IPv6 loopback: the registry on it, bracketed.
  t->coordinator.host = "::1";
  EXPECT_EQ(CoordinatorSettingsOf(*t).internal_address, "[::1]:8002");
}

TEST(TopologyTest, AnEmptyPoolListIsRefused) {
  absl::StatusOr<Topology> t = ParseTopology("model: demo\npools: []\n");
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("at least one pool"));
}

TEST(TopologyTest, RanksArePlacedPoolByPoolReplicaByReplica) {
  absl::StatusOr<Topology> t = ParseTopology(kDemo);
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<std::string> names;
  std::vector<int> colors;
  std::vector<int> ranks;
  for (int r = 0; r < t->total_ranks(); ++r) {
    absl::StatusOr<RankPlacement> p = PlaceRank(*t, r);
    ASSERT_TRUE(p.ok()) << p.status();
    names.push_back(p->replica_name);
    colors.push_back(p->replica_index);
    ranks.push_back(p->replica_rank);
  }
  EXPECT_THAT(names, ElementsAre("prefill-0", "prefill-0", "prefill-1", "prefill-1", "decode-0",
                                 "decode-0"));
  EXPECT_THAT(colors, ElementsAre(0, 0, 1, 1, 2, 2));
  EXPECT_THAT(ranks, ElementsAre(0, 1, 0, 1, 0, 1));
  EXPECT_FALSE(PlaceRank(*t, 6).ok());
  EXPECT_FALSE(PlaceRank(*t, -1).ok());
}

TEST(TopologyTest, MpirunRunsEveryRankAndTheSequentialMapperPlacesPoolsOnTheirHosts) {
  absl::StatusOr<Topology> t = ParseTopology(kDemo);
  ASSERT_TRUE(t.ok()) << t.status();
  ClusterOptions options;
  options.hostfile = "hosts.txt";
  options.mpirun_args = {"--mca", "btl", "self,tcp"};
  options.forward_env = {"NCCL_DEBUG"};
  std::string line = absl::StrJoin(
      MpirunCommand(*t, "/bin/tessera", "/w/topology.yaml", "10.0.0.1:8002", options, ""), " ");
  EXPECT_THAT(line, HasSubstr("mpirun -np 6 --bind-to none"));
  EXPECT_THAT(line, HasSubstr("--hostfile hosts.txt --map-by slot"));
  EXPECT_THAT(line, HasSubstr("-x NCCL_DEBUG --mca btl self,tcp /bin/tessera worker --topology "
                              "/w/topology.yaml --coordinator 10.0.0.1:8002"));
  // No pool names hosts: no host sequence.
  absl::StatusOr<std::string> none = HostSequenceFor(*t, options);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, "");
  t->pools[0].hosts = {"a", "b"};
  options.hostfile.clear();
  EXPECT_THAT(std::string(HostSequenceFor(*t, options).status().message()),
              HasSubstr("pools[1].hosts"));
  t->pools[1].hosts = {"c"};
  absl::StatusOr<std::string> file = HostSequenceFor(*t, options);
  ASSERT_TRUE(file.ok()) << file.status();
  // Rank i on line i, whatever the node's core count (a rankfile's slot=N needs N cores).
  EXPECT_EQ(*file, "a\nb\na\nb\nc\nc\n");
  line = absl::StrJoin(
      MpirunCommand(*t, "/bin/tessera", "/w/t.yaml", "10.0.0.1:8002", options, "/w/hosts-by-rank"),
      " ");
  EXPECT_THAT(line, HasSubstr("--hostfile /w/hosts-by-rank --mca rmaps seq"));
  EXPECT_THAT(line, Not(HasSubstr("--map-by")));
  // hosts [a, b] under TP 2 split every TP group across the two: said, with the remedy; [a, a,
  // b, b] keeps them whole (replica 0 on a, replica 1 on b).
  std::vector<std::string> warnings = PlacementWarnings(*t);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_THAT(warnings[0], HasSubstr("pools[0].hosts: replica 0's tensor-parallel group (stage 0) "
                                     "spans a and b"));
  EXPECT_THAT(warnings[0], HasSubstr("list each one tensor_parallel_size (2) times in a row"));
  t->pools[0].hosts = {"a", "a", "b", "b"};
  EXPECT_THAT(PlacementWarnings(*t), ElementsAre());
  // Pools' hosts and a --hostfile both placing the ranks: refused, naming both.
  options.hostfile = "hosts.txt";
  EXPECT_THAT(std::string(HostSequenceFor(*t, options).status().message()),
              HasSubstr("--hostfile hosts.txt: the pools name their hosts"));
}

TEST(TopologyTest, ReplicaHostsPlaceEachReplicaOrEachStageOnOneHost) {
  // Replica 0 of the prefill pool (TP 2) on a; replica 1 on b. The decode replica's stage 0 on c,
  // stage 1 on d.
  absl::StatusOr<Topology> t = ParseTopology(absl::StrReplaceAll(
      kDemo, {{"    replicas: 2", "    replicas: 2\n    replica_hosts: [a, [b]]"},
              {"    pp_layers: auto", "    pp_layers: auto\n    replica_hosts:\n      - [c, d]"}}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->pools[0].replica_hosts,
              ElementsAre(std::vector<std::string>{"a"}, std::vector<std::string>{"b"}));
  EXPECT_THAT(t->pools[1].replica_hosts, ElementsAre(std::vector<std::string>{"c", "d"}));
  absl::StatusOr<std::string> file = HostSequenceFor(*t, ClusterOptions{});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file, "a\na\nb\nb\nc\nd\n");
  // A TP group is never split this way: no warning.
  EXPECT_THAT(PlacementWarnings(*t), ElementsAre());
  // TopologyToYaml writes both forms back (launch passes the workers that file).
  absl::StatusOr<Topology> again = ParseTopology(TopologyToYaml(*t));
  ASSERT_TRUE(again.ok()) << again.status() << "\n" << TopologyToYaml(*t);
  EXPECT_EQ(again->pools[0].replica_hosts, t->pools[0].replica_hosts);
  EXPECT_EQ(again->pools[1].replica_hosts, t->pools[1].replica_hosts);
  // One pool with replica_hosts and one with rank-by-rank hosts place together.
  t->pools[1].replica_hosts.clear();
  t->pools[1].hosts = {"e", "f"};
  file = HostSequenceFor(*t, ClusterOptions{});
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(*file, "a\na\nb\nb\ne\nf\n");
}

}  // namespace
}  // namespace tessera::launch
