#include "worker/rpc/registration.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/rpc/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tessera::worker::rpc {
namespace {

namespace v1 = ::tessera::v1;

bool Retryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kResourceExhausted:
      return true;
    default:
      return false;
  }
}

int ClampMs(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 3600 * 1000));
}

// Shortest heartbeat period, whatever the lease.
constexpr absl::Duration kMinInterval = absl::Milliseconds(10);

}  // namespace

absl::StatusOr<std::unique_ptr<RegistrationClient>> RegistrationClient::Create(
    v1::ReplicaDescriptor descriptor, StatsCallback stats, RegistrationOptions options) {
  if (options.coordinator.empty()) {
    return absl::InvalidArgumentError("RegistrationClient: no coordinator address");
  }
  if (options.initial_backoff <= absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff ||
      options.rpc_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "RegistrationClient: backoffs and rpc_timeout must be positive, max_backoff >= "
        "initial_backoff");
  }
  std::unique_ptr<RegistrationClient> client(
      new RegistrationClient(std::move(descriptor), std::move(stats), std::move(options)));
  const RegistrationOptions& o = client->options_;
  const absl::Time deadline = absl::Now() + o.register_timeout;
  absl::Duration backoff = o.initial_backoff;
  bool logged = false;
  while (true) {
    const absl::Status status = client->RegisterOnce();
    if (status.ok()) break;
    if (!Retryable(status)) return status;
    if (absl::Now() + backoff > deadline) {
      return absl::UnavailableError(absl::StrCat(
          "could not register with the coordinator at ", o.coordinator, " within ",
          absl::FormatDuration(o.register_timeout), "; last error: ", status.message()));
    }
    if (!logged) {
      TESSERA_LOG(INFO) << "waiting for the coordinator at " << o.coordinator
                        << " (retrying for up to " << absl::FormatDuration(o.register_timeout)
                        << "): " << status.message();
      logged = true;
    }
    absl::SleepFor(backoff);
    backoff = std::min(backoff * 2, o.max_backoff);
  }
  {
    absl::MutexLock lock(&client->mu_);
    TESSERA_LOG(INFO) << "registered replica '" << client->descriptor_.name()
                      << "' with the coordinator at " << o.coordinator << " as "
                      << client->replica_id_;
    client->state_ = State::kRegistered;
  }
  client->thread_ = std::thread([c = client.get()] { c->Run(); });
  return client;
}

RegistrationClient::RegistrationClient(v1::ReplicaDescriptor descriptor, StatsCallback stats,
                                       RegistrationOptions options)
    : descriptor_(std::move(descriptor)), stats_(std::move(stats)), options_(std::move(options)) {
  grpc::ChannelArguments args;
  // The coordinator is reached directly, never through an HTTP proxy; reconnect attempts are
  // bounded by our own backoff so that a coordinator that comes up is found quickly.
  args.SetInt(GRPC_ARG_ENABLE_HTTP_PROXY, 0);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, ClampMs(options_.initial_backoff));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, ClampMs(options_.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, ClampMs(options_.max_backoff));
  stub_ = v1::Registry::NewStub(
      grpc::CreateCustomChannel(options_.coordinator, grpc::InsecureChannelCredentials(), args));
}

RegistrationClient::~RegistrationClient() { Stop(); }

absl::Status RegistrationClient::RegisterOnce() {
  v1::RegisterRequest request;
  *request.mutable_replica() = descriptor_;
  v1::RegisterResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("RegistrationClient stopped");
    in_flight_ = &context;
  }
  const grpc::Status status = stub_->Register(&context, request, &response);
  absl::MutexLock lock(&mu_);
  in_flight_ = nullptr;
  if (!status.ok()) return tessera::rpc::FromGrpcStatus("Registry.Register", status);
  if (response.replica_id().empty()) {
    return absl::UnavailableError("Registry.Register: the coordinator returned no replica_id");
  }
  replica_id_ = response.replica_id();
  lease_ = absl::Milliseconds(response.lease_ms());
  ++registrations_;
  return absl::OkStatus();
}

absl::StatusOr<bool> RegistrationClient::HeartbeatOnce(const std::string& replica_id) {
  v1::HeartbeatRequest request;
  request.set_replica_id(replica_id);
  if (stats_) *request.mutable_stats() = stats_();
  v1::HeartbeatResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.rpc_timeout));
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("RegistrationClient stopped");
    in_flight_ = &context;
  }
  const grpc::Status status = stub_->Heartbeat(&context, request, &response);
  absl::MutexLock lock(&mu_);
  in_flight_ = nullptr;
  if (!status.ok()) return tessera::rpc::FromGrpcStatus("Registry.Heartbeat", status);
  if (options_.on_kv_leases && response.kv_leases_size() > 0) {
    options_.on_kv_leases({response.kv_leases().begin(), response.kv_leases().end()});
  }
  if (options_.on_kv_peers && response.kv_peers_size() > 0) {
    options_.on_kv_peers({response.kv_peers().begin(), response.kv_peers().end()});
  }
  return response.known();
}

absl::Duration RegistrationClient::Interval() const {
  if (options_.heartbeat_interval > absl::ZeroDuration()) {
    return std::max(options_.heartbeat_interval, kMinInterval);
  }
  if (lease_ <= absl::ZeroDuration()) return absl::Seconds(1);
  return std::max(lease_ / 3, kMinInterval);
}

void RegistrationClient::SetState(State state, const absl::Status& why) {
  absl::MutexLock lock(&mu_);
  if (state == state_) return;
  const State before = state_;
  state_ = state;
  switch (state) {
    case State::kRegistered:
      TESSERA_LOG(INFO) << "replica '" << descriptor_.name() << "': coordinator at "
                        << options_.coordinator
                        << (before == State::kUnreachable ? " reachable again" : "") << "; lease "
                        << replica_id_;
      break;
    case State::kUnregistered:
      TESSERA_LOG(WARNING) << "replica '" << descriptor_.name() << "': " << why.message()
                           << "; registering again";
      break;
    case State::kUnreachable:
      TESSERA_LOG(WARNING) << "replica '" << descriptor_.name() << "': coordinator at "
                           << options_.coordinator << " unreachable (" << why.message()
                           << "); retrying every " << absl::FormatDuration(options_.max_backoff)
                           << " at most";
      break;
  }
}

void RegistrationClient::Run() {
  absl::Duration backoff = options_.initial_backoff;
  absl::Time next;
  {
    absl::MutexLock lock(&mu_);
    next = absl::Now() + Interval();
  }
  auto failed = [&](const absl::Status& status) {
    SetState(State::kUnreachable, status);
    next = absl::Now() + backoff;
    backoff = std::min(backoff * 2, options_.max_backoff);
  };
  while (true) {
    std::string replica_id;
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(&stopping_), next);
      if (stopping_) return;
      replica_id = replica_id_;
    }
    if (replica_id.empty()) {
      const absl::Status status = RegisterOnce();
      if (status.ok()) {
        SetState(State::kRegistered, status);
        backoff = options_.initial_backoff;
        absl::MutexLock lock(&mu_);
        next = absl::Now() + Interval();
      } else if (status.code() != absl::StatusCode::kCancelled) {
        failed(status);
      }
      continue;
    }
    absl::StatusOr<bool> known = HeartbeatOnce(replica_id);
    if (known.ok() && *known) {
      SetState(State::kRegistered, absl::OkStatus());
      backoff = options_.initial_backoff;
      absl::MutexLock lock(&mu_);
      next = absl::Now() + Interval();
    } else if (known.ok()) {
      {
        absl::MutexLock lock(&mu_);
        if (replica_id_ == replica_id) replica_id_.clear();
      }
      SetState(State::kUnregistered,
               absl::NotFoundError(absl::StrCat("the coordinator does not know lease ", replica_id,
                                                " (it lapsed, or the coordinator restarted)")));
      next = absl::Now();
    } else if (known.status().code() != absl::StatusCode::kCancelled) {
      failed(known.status());
    }
  }
}

void RegistrationClient::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (in_flight_ != nullptr) in_flight_->TryCancel();
  }
  if (thread_.joinable()) thread_.join();
  std::string replica_id;
  {
    absl::MutexLock lock(&mu_);
    replica_id = replica_id_;
  }
  if (replica_id.empty()) return;
  v1::DeregisterRequest request;
  request.set_replica_id(replica_id);
  v1::DeregisterResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.deregister_timeout));
  const absl::Status status = tessera::rpc::FromGrpcStatus(
      "Registry.Deregister", stub_->Deregister(&context, request, &response));
  if (absl::IsUnavailable(status)) {
    // The coordinator is gone already (it stops first when a whole cluster shuts down): there is
    // no lease left to give back.
    TESSERA_LOG(INFO) << "replica '" << descriptor_.name() << "': the coordinator is gone; lease "
                      << replica_id << " ends with it";
  } else if (!status.ok()) {
    TESSERA_LOG(WARNING) << "replica '" << descriptor_.name() << "': could not deregister lease "
                         << replica_id << ": " << status.message();
  } else {
    TESSERA_LOG(INFO) << "replica '" << descriptor_.name() << "': deregistered lease "
                      << replica_id;
  }
}

std::string RegistrationClient::replica_id() const {
  absl::MutexLock lock(&mu_);
  return replica_id_;
}

int64_t RegistrationClient::registrations() const {
  absl::MutexLock lock(&mu_);
  return registrations_;
}

}  // namespace tessera::worker::rpc
