#include "parallel/comm/rpc/grpc_store.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>

#include "common/rpc/grpc_status.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "tessera/v1/store.grpc.pb.h"

namespace tessera::parallel {

class GrpcStore::Impl {
 public:
  Impl(std::shared_ptr<grpc::Channel> channel, GrpcStoreOptions options)
      : stub_(tessera::v1::RendezvousStore::NewStub(std::move(channel))), options_(options) {}

  absl::Status Set(absl::string_view key, absl::string_view value) {
    tessera::v1::SetRequest request;
    request.set_key(key.data(), key.size());
    request.set_value(value.data(), value.size());
    tessera::v1::SetResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.set_timeout));
    return tessera::rpc::FromGrpcStatus("RendezvousStore.Set",
                                        stub_->Set(&context, request, &response));
  }

  absl::StatusOr<std::string> Get(absl::string_view key, absl::Duration timeout) {
    tessera::v1::GetRequest request;
    request.set_key(key.data(), key.size());
    request.set_timeout_ms(
        std::max<int64_t>(0, absl::ToInt64Milliseconds(std::max(timeout, absl::ZeroDuration()))));
    tessera::v1::GetResponse response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout + options_.get_slack));
    const grpc::Status status = stub_->Get(&context, request, &response);
    if (!status.ok()) return tessera::rpc::FromGrpcStatus("RendezvousStore.Get", status);
    return std::move(*response.mutable_value());
  }

 private:
  std::unique_ptr<tessera::v1::RendezvousStore::Stub> stub_;
  const GrpcStoreOptions options_;
};

absl::StatusOr<std::unique_ptr<GrpcStore>> GrpcStore::Create(const std::string& target,
                                                             GrpcStoreOptions options) {
  if (target.empty()) return absl::InvalidArgumentError("GrpcStore: empty target");
  grpc::ChannelArguments args;
  // Rendezvous traffic goes to a peer rank or the coordinator, never through an HTTP proxy.
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  return std::unique_ptr<GrpcStore>(
      new GrpcStore(std::make_unique<Impl>(std::move(channel), options)));
}

GrpcStore::GrpcStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GrpcStore::~GrpcStore() = default;

absl::Status GrpcStore::Set(absl::string_view key, absl::string_view value) {
  return impl_->Set(key, value);
}

absl::StatusOr<std::string> GrpcStore::Get(absl::string_view key, absl::Duration timeout) {
  return impl_->Get(key, timeout);
}

}  // namespace tessera::parallel
