#include "coordinator/api/kserve_server.h"

#include <limits>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/net.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"

namespace tessera::coordinator {

class KServeServer::Impl {
 public:
  Impl(Frontend& frontend, std::unique_ptr<KServeService> service,
       std::unique_ptr<grpc::Server> server, std::string host, int port)
      : frontend_(frontend),
        service_(std::move(service)),
        server_(std::move(server)),
        host_(std::move(host)),
        port_(port) {}
  ~Impl() { Shutdown(absl::Now() + absl::Seconds(1)); }

  int port() const { return port_; }
  std::string target() const { return HostPort(host_, port_); }

  void SetServing(bool serving) {
    grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
    if (health == nullptr) return;
    health->SetServingStatus(serving);  // every service, "" included
    health->SetServingStatus("inference.GRPCInferenceService", serving);
  }
  void RefreshHealth() { SetServing(frontend_.Ready()); }

  void Shutdown(absl::Time deadline) {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    SetServing(false);
    server_->Shutdown(absl::ToChronoTime(deadline));
    server_->Wait();
  }

 private:
  Frontend& frontend_;
  std::unique_ptr<KServeService> service_;  // outlives server_'s handlers (destroyed after it)
  std::unique_ptr<grpc::Server> server_;
  const std::string host_;
  const int port_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

absl::StatusOr<std::unique_ptr<KServeServer>> KServeServer::Create(
    Frontend& frontend, const KServeServerOptions& options) {
  if (options.max_message_bytes <= 0 ||
      options.max_message_bytes > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KServeServer: max_message_bytes must be in [1, 2^31), got ", options.max_message_bytes));
  }
  if (options.service.max_requests_per_stream < 1) {
    return absl::InvalidArgumentError("KServeServer: max_requests_per_stream must be >= 1");
  }
  const size_t colon = options.address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("KServeServer: address '", options.address, "' is not host:port"));
  }
  // Both are process-wide switches of gRPC's builder; they only add services to servers built
  // after them, and every KServeServer wants both.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  auto service = std::make_unique<KServeService>(frontend, options.service);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.address, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("KServeServer: cannot listen on '", options.address, "'"));
  }
  auto impl = std::make_unique<Impl>(frontend, std::move(service), std::move(server),
                                     options.address.substr(0, colon), port);
  impl->RefreshHealth();
  return std::unique_ptr<KServeServer>(new KServeServer(std::move(impl)));
}

KServeServer::KServeServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KServeServer::~KServeServer() = default;

int KServeServer::port() const { return impl_->port(); }
std::string KServeServer::target() const { return impl_->target(); }
void KServeServer::RefreshHealth() { impl_->RefreshHealth(); }
void KServeServer::SetServing(bool serving) { impl_->SetServing(serving); }
void KServeServer::Shutdown(absl::Time deadline) { impl_->Shutdown(deadline); }

}  // namespace tessera::coordinator
