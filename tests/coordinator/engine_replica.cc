#include "tests/coordinator/engine_replica.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/rpc/kv_convert.h"

namespace tessera::coordinator::testing {
namespace {

worker::ExecutorLimits Limits(int32_t max_num_seqs) {
  worker::ExecutorLimits l;
  l.num_blocks = 512;
  l.block_size = 4;
  l.max_blocks_per_seq = 64;
  l.max_num_tokens = 256;
  l.max_num_seqs = max_num_seqs;
  return l;
}

class EngineCall final : public ReplicaCall {
 public:
  EngineCall(worker::Engine& engine, std::shared_ptr<worker::ResponseStream> stream)
      : engine_(engine), stream_(std::move(stream)) {}
  ~EngineCall() override { engine_.Cancel(stream_->request_id()); }

  absl::StatusOr<ReplicaEvent> Next(absl::Duration timeout) override {
    absl::StatusOr<worker::TokenEvent> event = stream_->Next(timeout);
    if (!event.ok()) return event.status();
    ReplicaEvent out;
    if (event->token_id >= 0) {
      out.token_ids.push_back(event->token_id);
      out.logprobs.push_back(event->logprob);
      out.top_logprobs.push_back(event->top_logprobs);
    }
    out.finished = event->finish_reason.has_value();
    out.finish_reason = event->finish_reason;
    out.status = event->status;
    out.num_cached_tokens = event->num_cached_tokens;
    out.kv_handoff = event->kv_handoff;
    if (event->kv_handoff) out.kv_checksums = worker::rpc::ChecksumsToBytes(event->kv_checksums);
    if (event->timings.has_value()) {
      const worker::RequestTimings& t = *event->timings;
      out.timings =
          RequestTimings{t.queue_seconds, t.prefill_seconds, t.decode_seconds, t.kv_send_seconds};
    }
    return out;
  }
  void Cancel() override { engine_.Cancel(stream_->request_id()); }

 private:
  worker::Engine& engine_;
  std::shared_ptr<worker::ResponseStream> stream_;
};

}  // namespace

class EngineReplica::Client final : public ReplicaClient {
 public:
  explicit Client(EngineReplica& replica) : replica_(replica) {}
  absl::StatusOr<std::unique_ptr<ReplicaCall>> Generate(ReplicaRequest request) override {
    {
      absl::MutexLock lock(&replica_.mu_);
      replica_.generate_calls_++;
      if (!replica_.refuse_.ok()) return replica_.refuse_;
    }
    absl::StatusOr<worker::Request> r = ToWorker(std::move(request));
    if (!r.ok()) return r.status();
    auto stream = replica_.engine_->Submit(*std::move(r));
    if (!stream.ok()) return stream.status();
    return std::unique_ptr<ReplicaCall>(new EngineCall(*replica_.engine_, std::move(*stream)));
  }

  absl::StatusOr<KvReservation> ReserveKv(const ReplicaRequest& request) override {
    {
      absl::MutexLock lock(&replica_.mu_);
      if (!replica_.refuse_.ok()) return replica_.refuse_;
    }
    absl::StatusOr<worker::Request> r = ToWorker(request);
    if (!r.ok()) return r.status();
    absl::StatusOr<worker::KvDestination> d = replica_.engine_->ReserveKv(*r);
    if (!d.ok()) return d.status();
    return KvReservation{d->token, d->num_cached_tokens,
                         worker::rpc::ToProto(*d).SerializeAsString()};
  }

  absl::Status ReleaseKv(uint64_t token) override {
    replica_.engine_->ReleaseKv(token);
    return absl::OkStatus();
  }

 private:
  // As worker/rpc does it: the opaque KV fields parsed back.
  static absl::StatusOr<worker::Request> ToWorker(ReplicaRequest request) {
    worker::Request r;
    r.prompt = std::move(request.prompt);
    r.sampling = std::move(request.sampling);
    r.cache_salt = std::move(request.cache_salt);
    if (request.deadline != absl::InfiniteFuture()) r.timeout = request.deadline - absl::Now();
    if (!request.kv_destination.empty()) {
      absl::StatusOr<worker::KvDestination> d =
          worker::rpc::KvDestinationFromBytes(request.kv_destination);
      if (!d.ok()) return d.status();
      r.kv_destination = *std::move(d);
    }
    if (request.kv_import.has_value()) {
      auto sums = worker::rpc::ChecksumsFromBytes(request.kv_import->checksums);
      if (!sums.ok()) return sums.status();
      r.kv_import = worker::Request::KvImport{request.kv_import->token,
                                              request.kv_import->first_token, *std::move(sums)};
    }
    return r;
  }

  EngineReplica& replica_;
};

EngineReplica::EngineReplica(std::string name, int32_t vocab_size, int32_t eos_token_id,
                             int32_t max_num_seqs, int32_t sample_below)
    : name_(std::move(name)),
      vocab_size_(vocab_size),
      limits_(Limits(max_num_seqs)),
      executor_(limits_, sample_below > 0 ? sample_below : vocab_size) {
  config_.vocab_size = vocab_size;
  config_.eos_token_ids = {eos_token_id};
  StartEngine(max_num_seqs);
}

EngineReplica::EngineReplica(std::string name, int32_t vocab_size, int32_t eos_token_id,
                             std::string role, std::shared_ptr<kvtransfer::InProcessFabric> fabric,
                             int32_t max_num_seqs, int32_t sample_below)
    : name_(std::move(name)),
      role_(std::move(role)),
      vocab_size_(vocab_size),
      limits_(Limits(max_num_seqs)),
      executor_(limits_, sample_below > 0 ? sample_below : vocab_size) {
  config_.vocab_size = vocab_size;
  config_.eos_token_ids = {eos_token_id};
  auto backend = kernels::CreateCpuBackend({});
  TESSERA_CHECK(backend.ok());
  backend_ = std::move(*backend);
  worker::KvCacheConfig kv;
  kv.num_layers = 2;
  kv.num_blocks = limits_.num_blocks;
  kv.block_size = limits_.block_size;
  kv.kv_heads = 1;
  kv.head_dim = 4;
  auto cache = worker::KvCache::Create(kv, *backend_);
  TESSERA_CHECK(cache.ok());
  cache_ = std::move(*cache);
  // Layer 0 keeps the fake executor's slots (token in K, position in V), so they travel with the
  // KV: 1 head × head_dim 4 floats per slot.
  executor_.StoreSlotsIn(static_cast<int32_t*>(cache_->key(0).data()),
                         static_cast<int32_t*>(cache_->value(0).data()), kv.head_dim);
  kvtransfer::TransportOptions t;
  t.name = name_;
  auto inner = kvtransfer::InProcessTransport::Create(std::move(fabric), t);
  TESSERA_CHECK(inner.ok());
  auto transport = kvtransfer::FaultInjectingTransport::Create(std::move(*inner));
  TESSERA_CHECK(transport.ok());
  transport_ = std::move(*transport);
  auto port = worker::KvPort::Create(*cache_, *transport_);
  TESSERA_CHECK(port.ok());
  port_ = std::move(*port);
  StartEngine(max_num_seqs);
}

void EngineReplica::StartEngine(int32_t max_num_seqs, absl::Duration kv_reservation_lease) {
  max_num_seqs_ = max_num_seqs;
  worker::EngineOptions options;
  options.kv_port = port_.get();
  options.kv_reservation_lease = kv_reservation_lease;
  options.scheduler.max_model_len = 200;
  options.scheduler.max_num_seqs = max_num_seqs;
  options.scheduler.max_num_batched_tokens = 64;
  options.idle_wait = absl::Milliseconds(5);
  auto engine = worker::Engine::Create(executor_, config_, options);
  TESSERA_CHECK(engine.ok());
  engine_ = std::move(*engine);
}

void EngineReplica::RestartEngine(absl::Duration kv_reservation_lease) {
  engine_->Shutdown(absl::ZeroDuration()).IgnoreError();
  engine_.reset();
  StartEngine(max_num_seqs_, kv_reservation_lease);
}

EngineReplica::~EngineReplica() { engine_->Shutdown(absl::ZeroDuration()).IgnoreError(); }

ReplicaInfo EngineReplica::info(const std::string& model_name) const {
  ReplicaInfo info;
  info.name = name_;
  info.address = absl::StrCat("inproc://", name_);
  info.role = role_;
  if (port_ != nullptr) info.kv_descriptors = {port_->layout().descriptor};
  info.model_name = model_name;
  info.max_model_len = 200;
  info.vocab_size = vocab_size_;
  info.block_size = limits_.block_size;
  info.kv_blocks_total = limits_.num_blocks;
  info.max_num_seqs = limits_.max_num_seqs;
  return info;
}

ReplicaLoad EngineReplica::load() const {
  const worker::EngineCounters c = engine_->counters();
  ReplicaLoad load;
  load.num_requests_running = static_cast<int32_t>(c.num_running);
  load.num_requests_waiting = static_cast<int32_t>(c.num_waiting);
  load.kv_blocks_total = c.kv_blocks_total;
  load.kv_blocks_free = c.kv_blocks_free;
  load.preemptions_total = c.preemptions;
  load.prefix_cache_queries_total = c.prefix_cache_queries;
  load.prefix_cache_hits_total = c.prefix_cache_hits;
  load.requests_in_flight = c.requests_in_flight;
  load.kv_blocks_cached = c.kv_blocks_cached;
  load.kv_blocks_reserved = c.kv_blocks_reserved;
  load.kv_blocks_exporting = c.kv_blocks_exporting;
  load.pipeline_drains_total = c.pipeline_drains;
  if (port_ != nullptr) {
    const worker::KvPortCounters kv = port_->counters();
    load.kv_bytes_sent = kv.bytes_sent;
    load.kv_bytes_received = kv.bytes_received;
    load.kv_checksum_failures = kv.checksum_failures;
  }
  return load;
}

std::unique_ptr<ReplicaClient> EngineReplica::MakeClient() {
  return std::make_unique<Client>(*this);
}

void EngineReplica::set_refuse(absl::Status status) {
  absl::MutexLock lock(&mu_);
  refuse_ = std::move(status);
}

int EngineReplica::generate_calls() const {
  absl::MutexLock lock(&mu_);
  return generate_calls_;
}

void EngineReplicaConnector::Add(const std::string& address, EngineReplica* replica) {
  absl::MutexLock lock(&mu_);
  replicas_[address] = replica;
}

absl::StatusOr<std::unique_ptr<ReplicaClient>> EngineReplicaConnector::Connect(
    const ReplicaInfo& info) {
  absl::MutexLock lock(&mu_);
  auto it = replicas_.find(info.address);
  if (it == replicas_.end()) {
    return absl::UnavailableError(absl::StrCat("no test replica at ", info.address));
  }
  return it->second->MakeClient();
}

}  // namespace tessera::coordinator::testing
