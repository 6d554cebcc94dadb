#include "launch/topology.h"

#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/net.h"
#include "common/status_macros.h"
#include "coordinator/api/reasoning.h"
#include "coordinator/api/tool_calls.h"
#include "yaml-cpp/yaml.h"

namespace tessera::launch {
namespace {

// Reads one YAML mapping, remembering the keys it was asked for so that Finish can name the
// unknown ones. The first error wins; later reads are no-ops.
class MapReader {
 public:
  MapReader(const YAML::Node& node, std::string path, absl::Status* error)
      : node_(node), path_(std::move(path)), error_(*error) {
    if (error_.ok() && !node_.IsMap()) Fail(path_, "must be a mapping");
  }

  const std::string& path() const { return path_; }
  std::string Key(const std::string& key) const {
    return path_.empty() ? key : absl::StrCat(path_, ".", key);
  }
  bool Has(const std::string& key) const {
    return error_.ok() && node_.IsMap() && node_[key].IsDefined() && !node_[key].IsNull();
  }
  YAML::Node Get(const std::string& key) {
    known_.insert(key);
    return Has(key) ? node_[key] : YAML::Node();
  }

  template <typename T>
  void Read(const std::string& key, T& out) {
    YAML::Node n = Get(key);
    if (!n.IsDefined() || n.IsNull() || !error_.ok()) return;
    if (!n.IsScalar()) {
      Fail(Key(key), "must be a single value");
      return;
    }
    try {
      out = n.as<T>();
    } catch (const YAML::Exception&) {
      Fail(Key(key), absl::StrCat("'", n.Scalar(), "' is not ", Kind<T>()));
    }
  }
  template <typename T>
  void ReadList(const std::string& key, std::vector<T>& out) {
    YAML::Node n = Get(key);
    if (!n.IsDefined() || n.IsNull() || !error_.ok()) return;
    if (!n.IsSequence()) {
      Fail(Key(key), "must be a list");
      return;
    }
    out.clear();
    for (size_t i = 0; i < n.size(); ++i) {
      try {
        out.push_back(n[i].as<T>());
      } catch (const YAML::Exception&) {
        Fail(absl::StrCat(Key(key), "[", i, "]"), absl::StrCat("is not ", Kind<T>()));
        return;
      }
    }
  }

  // Unknown keys are errors: a typo must not silently fall back to a default.
  void Finish() {
    if (!error_.ok() || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>("");
      if (!known_.contains(key)) {
        std::vector<std::string> known(known_.begin(), known_.end());
        Fail(Key(key), absl::StrCat("unknown key (known here: ", absl::StrJoin(known, ", "), ")"));
        return;
      }
    }
  }

  void Fail(const std::string& where, const std::string& what) {
    if (error_.ok()) {
      error_ =
          absl::InvalidArgumentError(absl::StrCat(where.empty() ? "topology" : where, ": ", what));
    }
  }

 private:
  template <typename T>
  static const char* Kind() {
    if constexpr (std::is_same_v<T, std::string>) return "a string";
    if constexpr (std::is_same_v<T, bool>) return "true or false";
    if constexpr (std::is_integral_v<T>) return "an integer";
    return "a number";
  }

  YAML::Node node_;
  const std::string path_;
  absl::Status& error_;
  std::set<std::string> known_;
};

// pools[i].replica_hosts: a list with, for each replica, a host name or a list of them.
void ReadReplicaHosts(const YAML::Node& n, const std::string& where,
                      std::vector<std::vector<std::string>>& out, absl::Status* error) {
  const auto fail = [&](const std::string& at, const std::string& what) {
    *error = absl::InvalidArgumentError(absl::StrCat(at, ": ", what));
  };
  if (!n.IsSequence()) return fail(where, "must be a list, one entry per replica");
  out.clear();
  for (size_t r = 0; r < n.size(); ++r) {
    const std::string at = absl::StrCat(where, "[", r, "]");
    std::vector<std::string> stages;
    if (n[r].IsScalar()) {
      stages.push_back(n[r].Scalar());
    } else if (n[r].IsSequence()) {
      for (size_t s = 0; s < n[r].size(); ++s) {
        if (!n[r][s].IsScalar()) {
          return fail(absl::StrCat(at, "[", s, "]"), "is not a host name");
        }
        stages.push_back(n[r][s].Scalar());
      }
    } else {
      return fail(at, "must be a host name or a list of them, one per pipeline stage");
    }
    out.push_back(std::move(stages));
  }
}

void ReadEngine(MapReader& r, EngineFlags& e) {
  r.Read("dtype", e.dtype);
  r.Read("kv_cache_dtype", e.kv_cache_dtype);
  r.Read("block_size", e.block_size);
  r.Read("max_model_len", e.max_model_len);
  r.Read("max_num_seqs", e.max_num_seqs);
  r.Read("max_num_batched_tokens", e.max_num_batched_tokens);
  r.Read("num_kv_blocks", e.num_kv_blocks);
  r.Read("kv_cache_gib", e.kv_cache_gib);
  r.Read("threads", e.threads);
  r.Read("enable_prefix_caching", e.enable_prefix_caching);
  r.Read("enable_chunked_prefill", e.enable_chunked_prefill);
  r.Read("enforce_eager", e.enforce_eager);
  r.Read("attention_kernel", e.attention_kernel);
  r.Read("scheduling_policy", e.scheduling_policy);
  r.Finish();
}

// What a pool's workers store their KV cache in, as far as the topology tells: auto follows the
// activations, f32 on the CPU and on a GPU the weights' type (the checkpoint's own when the pool's
// dtype is auto too; ComputeEngineLimits). A check before anything starts; the coordinator checks
// the types the workers resolved when they register (ReplicaInfo::kv_cache_dtype).
std::string KvDtypeOf(const TopologyPool& p) {
  const EngineFlags& e = p.engine;
  if (e.kv_cache_dtype != "auto") return e.kv_cache_dtype;
  if (p.backend == "cpu" || e.dtype == "float32") return "float32";
  return e.dtype == "auto" ? "the checkpoint's dtype (auto on cuda)" : e.dtype;
}

absl::Status Invalid(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

}  // namespace

absl::Status ValidateEngineSettings(const EngineFlags& e, const std::string& where) {
  for (const std::string* d : {&e.dtype, &e.kv_cache_dtype}) {
    if (*d != "auto" && *d != "float32" && *d != "bfloat16" && *d != "float16") {
      return Invalid(absl::StrCat(where, d == &e.dtype ? ".dtype" : ".kv_cache_dtype"),
                     absl::StrCat("'", *d, "' is not auto, float32, bfloat16 or float16"));
    }
  }
  if (e.block_size <= 0 || e.block_size > 1024) {
    return Invalid(where + ".block_size", absl::StrCat("must be in [1, 1024], got ", e.block_size));
  }
  const std::pair<const char*, int64_t> positive[] = {
      {"max_num_seqs", e.max_num_seqs}, {"max_num_batched_tokens", e.max_num_batched_tokens}};
  for (const auto& [key, value] : positive) {
    if (value <= 0)
      return Invalid(absl::StrCat(where, ".", key), absl::StrCat("must be >= 1, got ", value));
  }
  const std::pair<const char*, int64_t> non_negative[] = {{"max_model_len", e.max_model_len},
                                                          {"num_kv_blocks", e.num_kv_blocks},
                                                          {"threads", e.threads}};
  for (const auto& [key, value] : non_negative) {
    if (value < 0)
      return Invalid(absl::StrCat(where, ".", key), absl::StrCat("must be >= 0, got ", value));
  }
  if (!(e.kv_cache_gib > 0)) {
    return Invalid(where + ".kv_cache_gib", absl::StrCat("must be > 0, got ", e.kv_cache_gib));
  }
  if (absl::Status s = ValidateAttentionKernel(e.attention_kernel); !s.ok()) {
    return Invalid(where + ".attention_kernel", std::string(s.message()));
  }
  if (e.scheduling_policy != "fcfs" && e.scheduling_policy != "priority") {
    return Invalid(where + ".scheduling_policy",
                   absl::StrCat("'", e.scheduling_policy, "' is not fcfs or priority"));
  }
  return absl::OkStatus();
}

const std::string& TopologyPool::HostOfRank(int rank) const {
  static const std::string kNone;
  if (!hosts.empty()) return hosts[static_cast<size_t>(rank) % hosts.size()];
  if (replica_hosts.empty()) return kNone;
  const int per_replica = ranks_per_replica();
  const std::vector<std::string>& stages =
      replica_hosts[static_cast<size_t>(rank / per_replica) % replica_hosts.size()];
  const int stage = rank % per_replica / tensor_parallel_size;
  return stages.size() == 1 ? stages[0] : stages[static_cast<size_t>(stage) % stages.size()];
}

int Topology::total_ranks() const {
  int n = 0;
  for (const TopologyPool& p : pools) n += p.replicas * p.ranks_per_replica();
  return n;
}

int Topology::total_replicas() const {
  int n = 0;
  for (const TopologyPool& p : pools) n += p.replicas;
  return n;
}

bool Topology::disaggregated() const {
  bool prefill = false;
  bool decode = false;
  for (const TopologyPool& p : pools) {
    prefill |= p.role == "prefill";
    decode |= p.role == "decode";
  }
  return prefill && decode;
}

absl::Status ValidateTopology(const Topology& t) {
  if (t.model.empty()) return Invalid("model", "is required (a model directory, or demo)");
  if (t.kv_transport != "grpc" && t.kv_transport != "ucx") {
    return Invalid("kv_transport", absl::StrCat("'", t.kv_transport, "' is not grpc or ucx"));
  }
  const TopologyCoordinator& c = t.coordinator;
  if (c.host.empty()) return Invalid("coordinator.host", "must not be empty");
  const std::pair<const char*, int> ports[] = {
      {"http_port", c.http_port}, {"grpc_port", c.grpc_port}, {"internal_port", c.internal_port}};
  for (size_t i = 0; i < 3; ++i) {
    const auto& [key, port] = ports[i];
    if (port < 0 || port > 65535) {
      return Invalid(absl::StrCat("coordinator.", key),
                     absl::StrCat("port ", port, " is not in [0, 65535]"));
    }
    for (size_t j = 0; j < i; ++j) {
      if (port != 0 && port == ports[j].second) {
        return Invalid(absl::StrCat("coordinator.", key),
                       absl::StrCat("port ", port, " is also coordinator.", ports[j].first));
      }
    }
  }
  if (c.max_queued_requests < 0) {
    return Invalid("coordinator.max_queued_requests", "must be >= 0");
  }
  if (!(c.lease_timeout_s > 0)) return Invalid("coordinator.lease_timeout_s", "must be > 0");
  if (c.drain_timeout_s < 0) return Invalid("coordinator.drain_timeout_s", "must be >= 0");
  if (c.tool_call_parser != "auto" && c.tool_call_parser != "none" &&
      (c.tool_call_parser.empty() || !coordinator::api::IsToolCallParser(c.tool_call_parser))) {
    return Invalid("coordinator.tool_call_parser",
                   absl::StrCat("'", c.tool_call_parser, "' is not one of auto, none, ",
                                coordinator::api::kToolCallParsers));
  }
  if (c.reasoning_parser != "auto" && c.reasoning_parser != "none" &&
      (c.reasoning_parser.empty() || !coordinator::api::IsReasoningParser(c.reasoning_parser))) {
    return Invalid("coordinator.reasoning_parser",
                   absl::StrCat("'", c.reasoning_parser, "' is not one of auto, none, ",
                                coordinator::api::kReasoningParsers));
  }
  if (t.pools.empty()) return Invalid("pools", "at least one pool is needed");
  std::set<std::string> names;
  for (size_t i = 0; i < t.pools.size(); ++i) {
    const TopologyPool& p = t.pools[i];
    const std::string where = absl::StrCat("pools[", i, "]");
    if (p.role != "prefill" && p.role != "decode" && p.role != "mixed") {
      return Invalid(where + ".role",
                     absl::StrCat("'", p.role, "' is not prefill, decode or mixed"));
    }
    if (!names.insert(p.name).second) {
      return Invalid(where + ".name", absl::StrCat("'", p.name, "' names another pool too"));
    }
    if (p.replicas < 1) {
      return Invalid(where + ".replicas",
                     absl::StrCat("an empty pool (", p.replicas, " replicas)"));
    }
    if (p.tensor_parallel_size < 1 || p.pipeline_parallel_size < 1) {
      return Invalid(where,
                     absl::StrCat("tensor_parallel_size and pipeline_parallel_size must be "
                                  ">= 1, got ",
                                  p.tensor_parallel_size, " and ", p.pipeline_parallel_size));
    }
    if (!p.pp_layers.empty() && p.pp_layers != "auto") {
      // The sum is checked against the model by the workers (--check included).
      absl::StatusOr<std::vector<int64_t>> layers = ParseLayerList(p.pp_layers);
      if (!layers.ok())
        return Invalid(where + ".pp_layers", std::string(layers.status().message()));
      if (static_cast<int>(layers->size()) != p.pipeline_parallel_size) {
        return Invalid(where + ".pp_layers",
                       absl::StrCat(layers->size(), " stages for pipeline_parallel_size ",
                                    p.pipeline_parallel_size));
      }
    }
    if (p.backend != "cpu" && p.backend != "cuda") {
      return Invalid(where + ".backend", absl::StrCat("'", p.backend, "' is not cpu or cuda"));
    }
    if (!p.devices.empty() && static_cast<int>(p.devices.size()) != p.ranks_per_replica()) {
      return Invalid(where + ".devices",
                     absl::StrCat(p.devices.size(), " devices for tensor_parallel_size ",
                                  p.tensor_parallel_size, " x pipeline_parallel_size ",
                                  p.pipeline_parallel_size, " = ", p.ranks_per_replica(),
                                  " ranks per replica"));
    }
    std::set<int> seen;
    for (int d : p.devices) {
      if (d < 0) return Invalid(where + ".devices", absl::StrCat("device ", d, " is negative"));
      if (!seen.insert(d).second) {
        return Invalid(where + ".devices", absl::StrCat("device ", d, " is listed twice"));
      }
    }
    for (const std::string& h : p.hosts) {
      if (h.empty()) return Invalid(where + ".hosts", "a host name is empty");
    }
    if (!p.hosts.empty() && !p.replica_hosts.empty()) {
      return Invalid(where + ".replica_hosts",
                     "give hosts (rank by rank) or replica_hosts (replica by replica), not both");
    }
    if (!p.replica_hosts.empty() && static_cast<int>(p.replica_hosts.size()) != p.replicas) {
      return Invalid(where + ".replica_hosts",
                     absl::StrCat(p.replica_hosts.size(), " entries for ", p.replicas,
                                  " replicas: give one entry per replica"));
    }
    for (size_t r = 0; r < p.replica_hosts.size(); ++r) {
      const std::vector<std::string>& stages = p.replica_hosts[r];
      const std::string at = absl::StrCat(where, ".replica_hosts[", r, "]");
      if (stages.size() != 1 && static_cast<int>(stages.size()) != p.pipeline_parallel_size) {
        return Invalid(at, absl::StrCat(stages.size(),
                                        " hosts: give one host for the whole "
                                        "replica or one per pipeline stage (",
                                        p.pipeline_parallel_size, ")"));
      }
      for (const std::string& h : stages) {
        if (h.empty()) return Invalid(at, "a host name is empty");
      }
    }
    TESSERA_RETURN_IF_ERROR(ValidateEngineSettings(p.engine, where + ".engine"));
    if (p.engine.block_size != t.pools[0].engine.block_size) {
      return Invalid(where + ".engine.block_size",
                     absl::StrCat(p.engine.block_size, " differs from pools[0]'s ",
                                  t.pools[0].engine.block_size,
                                  ": KV moves between pools block by block, so every pool uses "
                                  "one block size"));
    }
  }
  // Prefill and decode pools exchange KV blocks, which must be of one type on both sides.
  const TopologyPool* reference = nullptr;
  for (size_t i = 0; i < t.pools.size(); ++i) {
    const TopologyPool& p = t.pools[i];
    if (p.role != "prefill" && p.role != "decode") continue;
    if (reference == nullptr) {
      reference = &p;
    } else if (KvDtypeOf(p) != KvDtypeOf(*reference)) {
      return Invalid(absl::StrCat("pools[", i, "].engine.kv_cache_dtype"),
                     absl::StrCat(KvDtypeOf(p), " here, ", KvDtypeOf(*reference), " in pool '",
                                  reference->name,
                                  "': prefill and decode pools exchange KV blocks "
                                  "of one type; name it in both, e.g. bfloat16"));
    }
  }
  bool prefill = false;
  bool decode = false;
  for (const TopologyPool& p : t.pools) {
    prefill |= p.role == "prefill";
    decode |= p.role == "decode";
  }
  if (prefill != decode) {
    return Invalid("pools", prefill ? "a prefill pool needs a decode pool to hand requests to"
                                    : "a decode pool needs a prefill pool to receive KV from");
  }
  return absl::OkStatus();
}

absl::StatusOr<Topology> ParseTopology(const std::string& yaml, const std::string& source) {
  const std::string prefix = source.empty() ? "" : source + ": ";
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, "not valid YAML: ", e.what()));
  }
  Topology t;
  absl::Status error;
  MapReader top(root, "", &error);
  top.Read("model", t.model);
  top.Read("served_model_name", t.served_model_name);
  top.Read("kv_transport", t.kv_transport);
  if (YAML::Node c = top.Get("coordinator"); c.IsDefined() && !c.IsNull() && error.ok()) {
    MapReader r(c, "coordinator", &error);
    r.Read("host", t.coordinator.host);
    r.Read("bind_host", t.coordinator.bind_host);
    r.Read("http_port", t.coordinator.http_port);
    r.Read("grpc_port", t.coordinator.grpc_port);
    r.Read("internal_port", t.coordinator.internal_port);
    r.Read("max_queued_requests", t.coordinator.max_queued_requests);
    r.Read("lease_timeout_s", t.coordinator.lease_timeout_s);
    r.Read("drain_timeout_s", t.coordinator.drain_timeout_s);
    r.Read("tool_call_parser", t.coordinator.tool_call_parser);
    r.Read("reasoning_parser", t.coordinator.reasoning_parser);
    r.Finish();
  }
  EngineFlags defaults;
  if (YAML::Node e = top.Get("engine"); e.IsDefined() && !e.IsNull() && error.ok()) {
    MapReader r(e, "engine", &error);
    ReadEngine(r, defaults);
  }
  YAML::Node pools = top.Get("pools");
  top.Finish();
  if (error.ok() && !pools.IsNull() && !pools.IsSequence()) {
    error = Invalid("pools", "must be a list of pools");
  }
  for (size_t i = 0; error.ok() && pools.IsSequence() && i < pools.size(); ++i) {
    TopologyPool p;
    p.engine = defaults;
    MapReader r(pools[i], absl::StrCat("pools[", i, "]"), &error);
    r.Read("name", p.name);
    r.Read("role", p.role);
    r.Read("replicas", p.replicas);
    r.Read("tensor_parallel_size", p.tensor_parallel_size);
    r.Read("pipeline_parallel_size", p.pipeline_parallel_size);
    r.Read("pp_layers", p.pp_layers);
    r.Read("backend", p.backend);
    r.ReadList("devices", p.devices);
    r.ReadList("hosts", p.hosts);
    if (YAML::Node h = r.Get("replica_hosts"); h.IsDefined() && !h.IsNull() && error.ok()) {
      ReadReplicaHosts(h, r.Key("replica_hosts"), p.replica_hosts, &error);
    }
    if (YAML::Node e = r.Get("engine"); e.IsDefined() && !e.IsNull() && error.ok()) {
      MapReader er(e, r.Key("engine"), &error);
      ReadEngine(er, p.engine);
    }
    r.Finish();
    if (!error.ok()) break;
    if (p.role.empty()) {
      error = Invalid(r.Key("role"), "is required (prefill, decode or mixed)");
      break;
    }
    if (p.name.empty()) p.name = p.role;
    t.pools.push_back(std::move(p));
  }
  if (error.ok()) error = ValidateTopology(t);
  if (!error.ok()) return absl::InvalidArgumentError(absl::StrCat(prefix, error.message()));
  return t;
}

CoordinatorSettings CoordinatorSettingsOf(const Topology& t) {
  const TopologyCoordinator& c = t.coordinator;
  CoordinatorSettings s;
  s.model = t.model;
  s.served_model_name = t.served_model_name.empty() ? t.model : t.served_model_name;
  s.bind_host = c.bind_host.empty() ? c.host : c.bind_host;
  s.http_port = c.http_port;
  s.grpc_port = c.grpc_port;
  // Workers on other hosts must reach the internal port: bind it on every interface unless the
  // cluster is this machine.
  s.internal_address = HostPort(ListenHostFor(c.host), c.internal_port);
  s.max_queued_requests = c.max_queued_requests;
  s.lease_timeout_s = c.lease_timeout_s;
  s.drain_timeout_s = c.drain_timeout_s;
  s.tool_call_parser = c.tool_call_parser;
  s.reasoning_parser = c.reasoning_parser;
  for (const TopologyPool& p : t.pools) {
    if (p.engine.max_model_len > 0 &&
        (s.max_model_len == 0 || p.engine.max_model_len < s.max_model_len)) {
      s.max_model_len = p.engine.max_model_len;
    }
  }
  return s;
}

absl::StatusOr<Topology> LoadTopology(const std::string& path) {
  std::ifstream f(path);
  if (!f) return absl::NotFoundError(absl::StrCat("cannot read the topology file ", path));
  std::stringstream text;
  text << f.rdbuf();
  return ParseTopology(text.str(), path);
}

absl::StatusOr<RankPlacement> PlaceRank(const Topology& t, int rank) {
  if (rank < 0 || rank >= t.total_ranks()) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside the topology's ", t.total_ranks(), " ranks"));
  }
  RankPlacement p;
  int first = 0;
  for (size_t i = 0; i < t.pools.size(); ++i) {
    const int per = t.pools[i].ranks_per_replica();
    const int ranks = t.pools[i].replicas * per;
    if (rank < first + ranks) {
      p.pool = static_cast<int>(i);
      p.replica = (rank - first) / per;
      p.replica_rank = (rank - first) % per;
      p.replica_index += p.replica;
      p.replica_name = absl::StrCat(t.pools[i].name, "-", p.replica);
      return p;
    }
    first += ranks;
    p.replica_index += t.pools[i].replicas;
  }
  return absl::InternalError("unreachable");
}

std::string TopologyToYaml(const Topology& t) {
  YAML::Emitter out;
  auto engine = [&out](const EngineFlags& e) {
    out << YAML::BeginMap;
    out << YAML::Key << "dtype" << YAML::Value << e.dtype;
    out << YAML::Key << "kv_cache_dtype" << YAML::Value << e.kv_cache_dtype;
    out << YAML::Key << "block_size" << YAML::Value << e.block_size;
    out << YAML::Key << "max_model_len" << YAML::Value << e.max_model_len;
    out << YAML::Key << "max_num_seqs" << YAML::Value << e.max_num_seqs;
    out << YAML::Key << "max_num_batched_tokens" << YAML::Value << e.max_num_batched_tokens;
    out << YAML::Key << "num_kv_blocks" << YAML::Value << e.num_kv_blocks;
    out << YAML::Key << "kv_cache_gib" << YAML::Value << e.kv_cache_gib;
    out << YAML::Key << "threads" << YAML::Value << e.threads;
    out << YAML::Key << "enable_prefix_caching" << YAML::Value << e.enable_prefix_caching;
    out << YAML::Key << "enable_chunked_prefill" << YAML::Value << e.enable_chunked_prefill;
    out << YAML::Key << "enforce_eager" << YAML::Value << e.enforce_eager;
    out << YAML::Key << "attention_kernel" << YAML::Value << e.attention_kernel;
    out << YAML::Key << "scheduling_policy" << YAML::Value << e.scheduling_policy;
    out << YAML::EndMap;
  };
  out << YAML::BeginMap;
  out << YAML::Key << "model" << YAML::Value << t.model;
  if (!t.served_model_name.empty()) {
    out << YAML::Key << "served_model_name" << YAML::Value << t.served_model_name;
  }
  out << YAML::Key << "kv_transport" << YAML::Value << t.kv_transport;
  const TopologyCoordinator& c = t.coordinator;
  out << YAML::Key << "coordinator" << YAML::Value << YAML::BeginMap;
  out << YAML::Key << "host" << YAML::Value << c.host;
  if (!c.bind_host.empty()) out << YAML::Key << "bind_host" << YAML::Value << c.bind_host;
  out << YAML::Key << "http_port" << YAML::Value << c.http_port;
  out << YAML::Key << "grpc_port" << YAML::Value << c.grpc_port;
  out << YAML::Key << "internal_port" << YAML::Value << c.internal_port;
  out << YAML::Key << "max_queued_requests" << YAML::Value << c.max_queued_requests;
  out << YAML::Key << "lease_timeout_s" << YAML::Value << c.lease_timeout_s;
  out << YAML::Key << "drain_timeout_s" << YAML::Value << c.drain_timeout_s;
  out << YAML::Key << "tool_call_parser" << YAML::Value << c.tool_call_parser;
  out << YAML::Key << "reasoning_parser" << YAML::Value << c.reasoning_parser;
  out << YAML::EndMap;
  out << YAML::Key << "pools" << YAML::Value << YAML::BeginSeq;
  for (const TopologyPool& p : t.pools) {
    out << YAML::BeginMap;
    out << YAML::Key << "name" << YAML::Value << p.name;
    out << YAML::Key << "role" << YAML::Value << p.role;
    out << YAML::Key << "replicas" << YAML::Value << p.replicas;
    out << YAML::Key << "tensor_parallel_size" << YAML::Value << p.tensor_parallel_size;
    out << YAML::Key << "pipeline_parallel_size" << YAML::Value << p.pipeline_parallel_size;
    if (!p.pp_layers.empty()) out << YAML::Key << "pp_layers" << YAML::Value << p.pp_layers;
    out << YAML::Key << "backend" << YAML::Value << p.backend;
    if (!p.devices.empty()) out << YAML::Key << "devices" << YAML::Value << YAML::Flow << p.devices;
    if (!p.hosts.empty()) out << YAML::Key << "hosts" << YAML::Value << YAML::Flow << p.hosts;
    if (!p.replica_hosts.empty()) {
      out << YAML::Key << "replica_hosts" << YAML::Value << YAML::BeginSeq;
      for (const std::vector<std::string>& stages : p.replica_hosts) {
        if (stages.size() == 1) {
          out << stages[0];
        } else {
          out << YAML::Flow << stages;
        }
      }
      out << YAML::EndSeq;
    }
    out << YAML::Key << "engine" << YAML::Value;
    engine(p.engine);
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace tessera::launch
