// A fake tessera.v1.Registry (the coordinator's side of registration) for the worker's rpc
// tests: it records every call, grants leases that never lapse by themselves, and can be told to
// refuse, fail or forget.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "tessera/v1/replica.grpc.pb.h"

namespace tessera::worker::rpc::testing {

namespace v1 = ::tessera::v1;

inline constexpr absl::Duration kRegistryWait = absl::Seconds(30);

// A Registry that records every call. Leases are granted for `lease_ms` and never expire by
// themselves; Forget() drops them all (as a coordinator restart would).
class FakeRegistry final : public v1::Registry::Service {
 public:
  FakeRegistry(int64_t lease_ms, std::string prefix)
      : lease_ms_(lease_ms), prefix_(std::move(prefix)) {}

  grpc::Status Register(grpc::ServerContext*, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override {
    absl::MutexLock lock(&mu_);
    ++register_calls_;
    if (unavailable_registers_ > 0) {
      --unavailable_registers_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator starting");
    }
    if (refuse_) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "model mismatch");
    const std::string id = absl::StrCat(prefix_, ++next_id_);
    leases_.insert(id);
    registered_.push_back(request->replica());
    response->set_replica_id(id);
    response->set_lease_ms(lease_ms_);
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    absl::MutexLock lock(&mu_);
    heartbeats_.push_back(*request);
    response->set_known(leases_.contains(request->replica_id()));
    for (const std::string& peer : kv_peers_) response->add_kv_peers(peer);
    response->mutable_kv_leases()->Assign(kv_leases_.begin(), kv_leases_.end());
    return grpc::Status::OK;
  }
  grpc::Status Deregister(grpc::ServerContext*, const v1::DeregisterRequest* request,
                          v1::DeregisterResponse*) override {
    absl::MutexLock lock(&mu_);
    deregistered_.push_back(request->replica_id());
    leases_.erase(request->replica_id());
    return grpc::Status::OK;
  }

  void Forget() {
    absl::MutexLock lock(&mu_);
    leases_.clear();
  }
  void FailRegisters(int n) {
    absl::MutexLock lock(&mu_);
    unavailable_registers_ = n;
  }
  void Refuse() {
    absl::MutexLock lock(&mu_);
    refuse_ = true;
  }

  // Waits until `done` (called under the lock) holds; false after kRegistryWait.
  template <typename F>
  bool Await(F done) {
    absl::MutexLock lock(&mu_);
    auto cond = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done(*this); };
    return mu_.AwaitWithTimeout(absl::Condition(&cond), kRegistryWait);
  }

  // Read under Await's lock, or after the server stopped.
  int register_calls_ = 0;
  std::vector<v1::ReplicaDescriptor> registered_;
  std::vector<v1::HeartbeatRequest> heartbeats_;
  std::vector<std::string> deregistered_;
  std::vector<std::string> kv_peers_;  // sent with every heartbeat answer
  std::vector<uint64_t> kv_leases_;    // likewise

  std::vector<v1::ReplicaDescriptor> registered() {
    absl::MutexLock lock(&mu_);
    return registered_;
  }
  std::vector<std::string> deregistered() {
    absl::MutexLock lock(&mu_);
    return deregistered_;
  }

 private:
  absl::Mutex mu_;
  const int64_t lease_ms_;
  const std::string prefix_;
  int next_id_ = 0;
  int unavailable_registers_ = 0;
  bool refuse_ = false;
  absl::flat_hash_set<std::string> leases_;
};

struct Registry {
  std::unique_ptr<FakeRegistry> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  ~Registry() { Stop(); }
  void Stop() {
    if (server == nullptr) return;
    server->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
    server->Wait();
    server.reset();
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

// A registry on 127.0.0.1:`port` (0: a free one); null when the port cannot be bound.
inline std::unique_ptr<Registry> StartRegistry(int port, const std::string& prefix = "lease-",
                                               int64_t lease_ms = 90) {
  auto registry = std::make_unique<Registry>();
  registry->service = std::make_unique<FakeRegistry>(lease_ms, prefix);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat("127.0.0.1:", port), grpc::InsecureServerCredentials(),
                           &registry->port);
  builder.RegisterService(registry->service.get());
  registry->server = builder.BuildAndStart();
  if (registry->server == nullptr || registry->port == 0) return nullptr;
  return registry;
}

// A port that was free a moment ago (bound to 0 by a throwaway server, then released).
inline int FreePort() {
  std::unique_ptr<Registry> probe = StartRegistry(0);
  return probe == nullptr ? 0 : probe->port;
}

}  // namespace tessera::worker::rpc::testing
