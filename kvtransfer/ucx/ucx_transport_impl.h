// Internal to kvtransfer/ucx/: the UcxTransport implementation class, shared by its source files.
// ucx_transport.cc holds set-up, the progress loop, the public methods, connections and the send
// side (transfers, acks from the receiver); ucx_receive.cc holds the receive side (incoming hellos,
// data messages checked by the WriteListener, eager copies and rendezvous receives, acks).
// Consumers include ucx_transport.h only: this header carries the UCX types.
#pragma once

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvtransfer/region_table.h"
#include "kvtransfer/transport.h"
#include "kvtransfer/ucx/ucx_transport.h"
#include "kvtransfer/ucx/wire.h"

namespace tessera::kvtransfer::ucx_internal {

using ucx_wire::DataHeader;
using ucx_wire::HelloHeader;

struct SegmentPlan {
  const char* src = nullptr;
  ucp_mem_h memh = nullptr;
  DataHeader header;
  bool acked = false;
};

// One Submit. Shared by the Transfer handle (user threads) and the progress thread.
struct TransferState {
  absl::Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;  // final status known and UCX no longer reads memory
  absl::Status status ABSL_GUARDED_BY(mu);
  std::atomic<uint64_t> bytes_done{0};
  std::atomic<bool> cancel_requested{false};

  // Set before the state is shared, then read-only.
  uint64_t id = 0;
  PeerId peer = 0;
  std::vector<Segment> submitted;  // holds a use of each segment's local region until retired

  // Owned by the progress thread.
  std::vector<SegmentPlan> segments;
  size_t next = 0;      // next segment to send
  size_t inflight = 0;  // sent and not acknowledged
  uint64_t inflight_bytes = 0;
  size_t acked = 0;
  std::unordered_set<void*> requests;  // outstanding ucp send requests (they read local memory)
  bool decided = false;                // final status chosen (below); done waits for requests
  absl::Status final_status;
  absl::Time last_progress;
};

struct SendContext {  // user_data of one ucp_am_send_nbx; keeps header and payload alive
  class UcxTransportImpl* impl = nullptr;
  std::shared_ptr<TransferState> transfer;  // null for control messages
  std::string header;
  std::string payload;
};

struct EpContext {  // the error handler's argument, one per endpoint
  class UcxTransportImpl* impl = nullptr;
  bool inbound = false;
  uint64_t id = 0;  // PeerId (outbound) or inbound id
};

struct RecvContext {  // user_data of one ucp_am_recv_data_nbx
  class UcxTransportImpl* impl = nullptr;
  uint64_t inbound_id = 0;
  DataHeader header;
  WriteInfo info;
  bool rndv = false;
};

class UcxTransportImpl final : public UcxTransport {
 public:
  explicit UcxTransportImpl(const UcxTransportOptions& options) : options_(options) {}
  ~UcxTransportImpl() override;

  absl::Status Init();

  absl::StatusOr<RegionId> RegisterMemory(void* base, size_t length) override;
  absl::Status DeregisterMemory(RegionId region) override;
  absl::StatusOr<std::string> LocalDescriptor() override;
  absl::StatusOr<PeerId> Connect(absl::string_view descriptor) override;
  absl::Status Disconnect(PeerId peer) override;
  absl::StatusOr<std::unique_ptr<Transfer>> Submit(PeerId peer,
                                                   absl::Span<const Segment> segments) override;
  void SetWriteListener(WriteListener* listener) override;

  // For UcxTransfer.
  void RequestCancel(std::shared_ptr<TransferState> transfer);
  absl::Duration retire_timeout() const {
    return options_.base.peer_timeout + options_.close_timeout + absl::Seconds(5);
  }

 private:
  struct PeerInfo {  // caller-side view of a connection (validation), under peers_mu_
    enum class State { kConnecting, kConnected, kFailed } state = State::kConnecting;
    absl::Status failure;
    std::string name;
    RemoteRegions regions;
  };
  struct OutPeer {  // progress-thread view of a connection made by Connect
    ucp_ep_h ep = nullptr;
    std::unique_ptr<EpContext> ep_context;
    uint64_t inbound_id = 0;  // the receiver's id, from HelloAck
    bool connected = false;
    std::unordered_set<uint64_t> transfers;
  };
  struct InPeer {                // progress-thread view of a connection a peer made to us
    ucp_ep_h back_ep = nullptr;  // for HelloAck, Ack and Bye
    std::unique_ptr<EpContext> ep_context;
    uint64_t peer_id = 0;  // the sender's PeerId
    std::string name;
  };
  struct AmHandlerArg {
    UcxTransportImpl* impl;
    unsigned id;
  };

  // Commands and the progress loop.
  void Post(std::function<void()> command);
  absl::Status RunSync(std::function<absl::Status()> command);
  void Loop();
  bool HasCommands();
  void ShutdownOnWorker();
  void DrainOnce();      // one progress round plus deferred work, retirements and closes
  void RunDeferred();    // runs deferred_ until empty (work may defer more work)
  void ReapClosedEps();  // frees the ucp_ep_close_nbx requests that have completed

  // UCX callbacks (progress thread).
  static ucs_status_t AmTrampoline(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param);
  static void SendDone(void* request, ucs_status_t status, void* user_data);
  static void RecvDone(void* request, ucs_status_t status, size_t length, void* user_data);
  static void EpError(void* arg, ucp_ep_h ep, ucs_status_t status);
  ucs_status_t OnHello(absl::string_view header, const void* data, size_t length,
                       const ucp_am_recv_param_t* param);
  void OnHelloAck(absl::string_view header);
  ucs_status_t OnData(absl::string_view header, void* data, size_t length,
                      const ucp_am_recv_param_t* param);
  void OnAck(absl::string_view header, const void* data, size_t length);
  void OnBye(absl::string_view header);

  // Progress-thread helpers.
  ucp_ep_h CreateEp(const std::string& address, EpContext* context, absl::Status* status);
  void SendControl(ucp_ep_h ep, unsigned id, std::string header, std::string payload);
  void CloseEp(ucp_ep_h ep, bool force);
  void StartConnect(PeerId id, const std::string& address);
  void AcceptHello(HelloHeader hello, std::string name, const std::string& address);
  void FailPeer(PeerId id, const absl::Status& status, bool send_bye);
  void DropInbound(uint64_t inbound_id, bool send_bye);
  void StartTransfer(const std::shared_ptr<TransferState>& t);
  void Pump(TransferState& t);
  void SendSegment(const std::shared_ptr<TransferState>& t, size_t index);
  void Decide(TransferState& t, absl::Status status);
  void MaybeRetire(const std::shared_ptr<TransferState>& t);
  void CancelOnWorker(const std::shared_ptr<TransferState>& t);
  void CheckTimeouts();
  void SendAck(uint64_t inbound_id, const DataHeader& h, const absl::Status& status);
  void FinishRecv(RecvContext* rc, ucs_status_t status);
  void ReleaseIncoming(RegionId region);
  void SetPeerState(PeerId id, PeerInfo::State state, absl::Status failure);

  const UcxTransportOptions options_;
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int efd_ = -1;
  std::string worker_address_;
  std::thread thread_;
  AmHandlerArg handler_args_[5] = {};

  absl::Mutex cmd_mu_;
  std::vector<std::function<void()>> commands_ ABSL_GUARDED_BY(cmd_mu_);
  bool accepting_ ABSL_GUARDED_BY(cmd_mu_) = true;

  RegionTable regions_;  // handles: ucp_mem_h

  absl::Mutex peers_mu_;
  std::unordered_map<PeerId, PeerInfo> peer_info_ ABSL_GUARDED_BY(peers_mu_);

  absl::Mutex listener_mu_;
  WriteListener* listener_ ABSL_GUARDED_BY(listener_mu_) = nullptr;

  std::atomic<uint64_t> next_peer_{1};
  std::atomic<uint64_t> next_transfer_{1};

  // Progress-thread state.
  bool stop_ = false;
  bool shutting_down_ = false;
  bool leaked_ = false;  // shutdown could not quiesce UCX; read by the destructor after join
  std::vector<std::function<void()>> deferred_;  // work that must not run inside a callback
  std::unordered_map<PeerId, OutPeer> out_peers_;
  std::unordered_map<uint64_t, InPeer> in_peers_;
  uint64_t next_inbound_ = 1;
  int pending_recvs_ = 0;  // ucp_am_recv_data_nbx in flight (they write into our regions)
  std::unordered_map<uint64_t, std::shared_ptr<TransferState>> transfers_;
  std::vector<void*> closing_;  // ucp_ep_close_nbx requests
  // Error-handler arguments of closed endpoints: UCX may still call back until the worker dies.
  std::vector<std::unique_ptr<EpContext>> dead_ep_contexts_;
};

}  // namespace tessera::kvtransfer::ucx_internal
