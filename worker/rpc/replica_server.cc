#include "worker/rpc/replica_server.h"

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace tessera::worker::rpc {
namespace {
constexpr char kServiceName[] = "tessera.v1.Replica";
}  // namespace

class ReplicaServer::Impl {
 public:
  Impl(std::unique_ptr<ReplicaService> service, std::unique_ptr<grpc::Server> server, int port)
      : service_(std::move(service)), server_(std::move(server)), port_(port) {}
  ~Impl() { Shutdown(absl::Now() + absl::Seconds(1)); }

  int port() const { return port_; }
  ReplicaService& service() { return *service_; }

  void SetServing(bool serving) {
    if (grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService()) {
      health->SetServingStatus(serving);
      health->SetServingStatus(kServiceName, serving);
    }
  }

  int32_t Drain(absl::Duration timeout) {
    SetServing(false);
    return service_->DrainFor(timeout);
  }

  void Shutdown(absl::Time deadline) {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    SetServing(false);
    server_->Shutdown(absl::ToChronoTime(deadline));
    server_->Wait();
  }

 private:
  std::unique_ptr<ReplicaService> service_;  // outlives server_ (destroyed after it)
  std::unique_ptr<grpc::Server> server_;
  const int port_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

absl::StatusOr<std::unique_ptr<ReplicaServer>> ReplicaServer::Create(
    Engine& engine, const ReplicaServerOptions& options) {
  auto service = std::make_unique<ReplicaService>(engine, options.service);
  // Process-wide in gRPC: every server built from now on gets the default health service.
  grpc::EnableDefaultHealthCheckService(true);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service.get());
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("ReplicaServer: cannot listen on '", options.address, "'"));
  }
  auto impl = std::make_unique<Impl>(std::move(service), std::move(server), port);
  impl->SetServing(true);
  return std::unique_ptr<ReplicaServer>(new ReplicaServer(std::move(impl)));
}

ReplicaServer::ReplicaServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ReplicaServer::~ReplicaServer() = default;

int ReplicaServer::port() const { return impl_->port(); }
int32_t ReplicaServer::Drain(absl::Duration timeout) { return impl_->Drain(timeout); }
void ReplicaServer::Shutdown(absl::Time deadline) { impl_->Shutdown(deadline); }
ReplicaService& ReplicaServer::service() { return impl_->service(); }

}  // namespace tessera::worker::rpc
