#include "parallel/comm/rpc/store_server.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "tessera/v1/store.grpc.pb.h"

namespace tessera::parallel {
namespace {

// Longest wait a Get may ask for; longer requests are clamped.
constexpr int64_t kMaxGetTimeoutMs = int64_t{24} * 3600 * 1000;

// A Get waiting for its key. gRPC owns `response` until `reactor` is finished.
struct Waiter {
  std::string key;
  tessera::v1::GetResponse* response;
  grpc::ServerUnaryReactor* reactor;
  absl::Time deadline;
  int64_t timeout_ms;
};

// The service: a map plus parked Gets. Handlers never block: a Get for a missing key is parked
// and finished later by Set, by the expiry thread, or by Shutdown.
class StoreService final : public tessera::v1::RendezvousStore::CallbackService {
 public:
  StoreService() : expiry_thread_([this] { ExpiryLoop(); }) {}
  ~StoreService() override { Stop(); }

  grpc::ServerUnaryReactor* Set(grpc::CallbackServerContext* context,
                                const tessera::v1::SetRequest* request,
                                tessera::v1::SetResponse* response) override {
    std::vector<Waiter> ready;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "store server shutting down");
      } else {
        values_[request->key()] = request->value();
        auto it = waiters_.begin();
        while (it != waiters_.end()) {
          if (it->key == request->key()) {
            ready.push_back(std::move(*it));
            it = waiters_.erase(it);
          } else {
            ++it;
          }
        }
      }
    }
    for (Waiter& waiter : ready) {
      waiter.response->set_value(request->value());
      waiter.reactor->Finish(grpc::Status::OK);
    }
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  grpc::ServerUnaryReactor* Get(grpc::CallbackServerContext* context,
                                const tessera::v1::GetRequest* request,
                                tessera::v1::GetResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const int64_t timeout_ms = std::clamp<int64_t>(request->timeout_ms(), 0, kMaxGetTimeoutMs);
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE, "store server shutting down");
      } else if (auto it = values_.find(request->key()); it != values_.end()) {
        response->set_value(it->second);
      } else if (timeout_ms == 0) {
        status = NotSet(request->key(), timeout_ms);
      } else {
        waiters_.push_back(Waiter{request->key(), response, reactor,
                                  absl::Now() + absl::Milliseconds(timeout_ms), timeout_ms});
        expiry_cv_.Signal();
        return reactor;  // finished later, outside this handler
      }
    }
    reactor->Finish(status);
    return reactor;
  }

  // Answers parked Gets with UNAVAILABLE, refuses new calls and joins the expiry thread.
  void Stop() {
    std::vector<Waiter> waiters;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stopping_ = true;
      waiters.swap(waiters_);
      expiry_cv_.Signal();
    }
    for (Waiter& waiter : waiters) {
      waiter.reactor->Finish(
          grpc::Status(grpc::StatusCode::UNAVAILABLE, "store server shutting down"));
    }
    if (expiry_thread_.joinable()) expiry_thread_.join();
  }

 private:
  static grpc::Status NotSet(const std::string& key, int64_t timeout_ms) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        absl::StrCat("key '", key, "' not set within ", timeout_ms, "ms"));
  }

  // Finishes Gets whose deadline passed; sleeps until the earliest deadline or a change.
  void ExpiryLoop() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      const absl::Time now = absl::Now();
      absl::Time next = absl::InfiniteFuture();
      std::vector<Waiter> expired;
      auto it = waiters_.begin();
      while (it != waiters_.end()) {
        if (it->deadline <= now) {
          expired.push_back(std::move(*it));
          it = waiters_.erase(it);
        } else {
          next = std::min(next, it->deadline);
          ++it;
        }
      }
      if (!expired.empty()) {
        mu_.Unlock();
        for (Waiter& waiter : expired) {
          waiter.reactor->Finish(NotSet(waiter.key, waiter.timeout_ms));
        }
        mu_.Lock();
        continue;
      }
      expiry_cv_.WaitWithDeadline(&mu_, next);
    }
  }

  absl::Mutex mu_;
  absl::CondVar expiry_cv_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, std::string> values_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter> waiters_ ABSL_GUARDED_BY(mu_);  // few: one per waiting rank
  std::thread expiry_thread_;                         // last: starts after the fields exist
};

}  // namespace

class StoreServer::Impl {
 public:
  Impl(std::unique_ptr<StoreService> service, std::unique_ptr<grpc::Server> server, int port)
      : service_(std::move(service)), server_(std::move(server)), port_(port) {}
  ~Impl() { Shutdown(absl::Seconds(1)); }

  int port() const { return port_; }

  void Shutdown(absl::Duration grace) {
    absl::MutexLock lock(&shutdown_mu_);
    if (shut_down_) return;
    shut_down_ = true;
    service_->Stop();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    server_->Wait();
  }

 private:
  std::unique_ptr<StoreService> service_;  // outlives server_ (destroyed after it)
  std::unique_ptr<grpc::Server> server_;
  const int port_;
  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

absl::StatusOr<std::unique_ptr<StoreServer>> StoreServer::Create(const std::string& address) {
  auto service = std::make_unique<StoreService>();
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(service.get());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    service->Stop();
    return absl::UnavailableError(absl::StrCat("StoreServer: cannot listen on '", address, "'"));
  }
  return std::unique_ptr<StoreServer>(
      new StoreServer(std::make_unique<Impl>(std::move(service), std::move(server), port)));
}

StoreServer::StoreServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StoreServer::~StoreServer() = default;

int StoreServer::port() const { return impl_->port(); }

void StoreServer::Shutdown(absl::Duration grace) { impl_->Shutdown(grace); }

}  // namespace tessera::parallel
