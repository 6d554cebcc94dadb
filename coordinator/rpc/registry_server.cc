#include "coordinator/rpc/registry_server.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/net.h"
#include "common/rpc/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "tessera/v1/replica.grpc.pb.h"

namespace tessera::coordinator {
namespace {

ReplicaInfo FromProto(const v1::ReplicaDescriptor& d) {
  ReplicaInfo info;
  info.name = d.name();
  info.address = d.address();
  info.role = d.role().empty() ? "mixed" : d.role();
  info.model_name = d.model_name();
  info.max_model_len = d.max_model_len();
  info.vocab_size = d.vocab_size();
  info.block_size = d.block_size();
  info.kv_blocks_total = d.kv_blocks_total();
  info.max_num_seqs = d.max_num_seqs();
  info.tensor_parallel_size = d.tensor_parallel_size();
  info.pipeline_parallel_size = d.pipeline_parallel_size();
  info.kv_descriptors.assign(d.kv_descriptors().begin(), d.kv_descriptors().end());
  info.kv_cache_dtype = d.kv_cache_dtype();
  return info;
}

ReplicaLoad FromProto(const v1::ReplicaStats& s) {
  ReplicaLoad load;
  load.num_requests_running = s.num_requests_running();
  load.num_requests_waiting = s.num_requests_waiting();
  load.kv_blocks_total = s.kv_blocks_total();
  load.kv_blocks_free = s.kv_blocks_free();
  load.prompt_tokens_total = s.prompt_tokens_total();
  load.generation_tokens_total = s.generation_tokens_total();
  load.preemptions_total = s.preemptions_total();
  load.prefix_cache_queries_total = s.prefix_cache_queries_total();
  load.prefix_cache_hits_total = s.prefix_cache_hits_total();
  load.requests_in_flight = s.requests_in_flight();
  load.kv_blocks_cached = s.kv_blocks_cached();
  load.kv_blocks_reserved = s.kv_blocks_reserved();
  load.kv_blocks_exporting = s.kv_blocks_exporting();
  load.kv_bytes_sent = s.kv_bytes_sent();
  load.kv_bytes_received = s.kv_bytes_received();
  load.kv_transfers_failed = s.kv_transfers_failed();
  load.kv_writes_refused = s.kv_writes_refused();
  load.kv_checksum_failures = s.kv_checksum_failures();
  load.pipeline_drains_total = s.pipeline_drains_total();
  return load;
}

class RegistryService final : public v1::Registry::Service {
 public:
  explicit RegistryService(Coordinator& coordinator) : coordinator_(coordinator) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    ReplicaInfo info = FromProto(request->replica());
    info.registered_from = HostOf(context->peer());
    auto entry = coordinator_.RegisterReplica(std::move(info));
    if (!entry.ok()) return tessera::rpc::ToGrpcStatus(entry.status());
    response->set_replica_id((*entry)->id());
    response->set_lease_ms(absl::ToInt64Milliseconds(coordinator_.registry().options().lease));
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    std::vector<std::string> kv_peers;
    std::vector<uint64_t> kv_leases;
    response->set_known(coordinator_.Heartbeat(request->replica_id(), FromProto(request->stats()),
                                               &kv_peers, &kv_leases));
    for (std::string& peer : kv_peers) response->add_kv_peers(std::move(peer));
    response->mutable_kv_leases()->Assign(kv_leases.begin(), kv_leases.end());
    return grpc::Status::OK;
  }

  grpc::Status Deregister(grpc::ServerContext*, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse*) override {
    coordinator_.DeregisterReplica(request->replica_id());
    return grpc::Status::OK;
  }

 private:
  Coordinator& coordinator_;
};

}  // namespace

class RegistryServer::Impl {
 public:
  explicit Impl(Coordinator& coordinator) : service_(coordinator) {}
  RegistryService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  bool shut_down_ = false;
};

absl::StatusOr<std::unique_ptr<RegistryServer>> RegistryServer::Create(Coordinator& coordinator,
                                                                       const std::string& address) {
  auto impl = std::make_unique<Impl>(coordinator);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &impl->port_);
  builder.RegisterService(&impl->service_);
  impl->server_ = builder.BuildAndStart();
  if (impl->server_ == nullptr || impl->port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " for the coordinator's registry"));
  }
  return std::unique_ptr<RegistryServer>(new RegistryServer(std::move(impl)));
}

RegistryServer::RegistryServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RegistryServer::~RegistryServer() { Shutdown(absl::Seconds(1)); }

int RegistryServer::port() const { return impl_->port_; }

void RegistryServer::Shutdown(absl::Duration grace) {
  if (impl_->shut_down_) return;
  impl_->shut_down_ = true;
  impl_->server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  impl_->server_->Wait();
}

}  // namespace tessera::coordinator
