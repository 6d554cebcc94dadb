// UcxTransport (ucx_transport.h): set-up and the progress loop, the public methods, connections
// and the send side. The receive side is in ucx_receive.cc; the implementation class in
// ucx_transport_impl.h.
#include "kvtransfer/ucx/ucx_transport.h"

#include <poll.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvtransfer/region_table.h"
#include "kvtransfer/ucx/ucx_status.h"
#include "kvtransfer/ucx/ucx_transport_impl.h"
#include "kvtransfer/ucx/wire.h"

namespace tessera::kvtransfer::ucx_internal {

using ucx_wire::ByeHeader;

namespace {

absl::string_view View(const void* p, size_t n) {
  return absl::string_view(static_cast<const char*>(p), n);
}

// The handle returned by Submit.
class UcxTransfer final : public Transfer {
 public:
  UcxTransfer(UcxTransportImpl* impl, std::shared_ptr<TransferState> state)
      : impl_(impl), state_(std::move(state)) {}
  ~UcxTransfer() override {
    Cancel();
    absl::MutexLock lock(&state_->mu);
    const bool retired =
        state_->mu.AwaitWithTimeout(absl::Condition(&state_->done), impl_->retire_timeout());
    if (!retired) {
      TESSERA_LOG(ERROR) << "UCX transfer " << state_->id
                         << " still has requests in flight after Cancel; giving up waiting";
    }
  }
  bool Done() override {
    absl::MutexLock lock(&state_->mu);
    return state_->done;
  }
  absl::Status Wait(absl::Duration timeout) override {
    absl::MutexLock lock(&state_->mu);
    if (!state_->mu.AwaitWithTimeout(absl::Condition(&state_->done), timeout)) {
      return absl::DeadlineExceededError(absl::StrCat(
          "UCX transfer ", state_->id, " still running after ", absl::FormatDuration(timeout)));
    }
    return state_->status;
  }
  void Cancel() override {
    if (state_->cancel_requested.exchange(true)) return;
    impl_->RequestCancel(state_);
  }
  uint64_t bytes_done() const override { return state_->bytes_done.load(); }

 private:
  UcxTransportImpl* const impl_;
  const std::shared_ptr<TransferState> state_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Set-up and the progress loop.

absl::Status UcxTransportImpl::Init() {
  ucp_config_t* config = nullptr;
  TESSERA_RETURN_IF_ERROR(
      UcsToStatus(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read"));
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  const ucs_status_t init = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (init != UCS_OK) {
    context_ = nullptr;
    return UcsToStatus(init, "ucp_init");
  }

  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  TESSERA_RETURN_IF_ERROR(
      UcsToStatus(ucp_worker_create(context_, &wparams, &worker_), "ucp_worker_create"));
  TESSERA_RETURN_IF_ERROR(UcsToStatus(ucp_worker_get_efd(worker_, &efd_), "ucp_worker_get_efd"));

  ucp_address_t* address = nullptr;
  size_t address_length = 0;
  TESSERA_RETURN_IF_ERROR(UcsToStatus(ucp_worker_get_address(worker_, &address, &address_length),
                                      "ucp_worker_get_address"));
  worker_address_.assign(reinterpret_cast<const char*>(address), address_length);
  ucp_worker_release_address(worker_, address);

  const unsigned ids[] = {ucx_wire::kAmHello, ucx_wire::kAmHelloAck, ucx_wire::kAmData,
                          ucx_wire::kAmAck, ucx_wire::kAmBye};
  for (int i = 0; i < 5; ++i) {
    handler_args_[i] = {this, ids[i]};
    ucp_am_handler_param_t hp{};
    hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    hp.id = ids[i];
    hp.flags = UCP_AM_FLAG_WHOLE_MSG;
    hp.cb = &UcxTransportImpl::AmTrampoline;
    hp.arg = &handler_args_[i];
    TESSERA_RETURN_IF_ERROR(UcsToStatus(ucp_worker_set_am_recv_handler(worker_, &hp),
                                        "ucp_worker_set_am_recv_handler"));
  }
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

UcxTransportImpl::~UcxTransportImpl() {
  if (thread_.joinable()) {
    {
      absl::MutexLock lock(&cmd_mu_);
      commands_.push_back([this] { ShutdownOnWorker(); });
      accepting_ = false;  // later Posts are dropped (callers broke the lifetime contract)
      ucp_worker_signal(worker_);
    }
    thread_.join();
  } else if (worker_ != nullptr) {
    ucp_worker_destroy(worker_);  // Init failed half-way: no thread, nothing registered
  }
  if (context_ != nullptr && !leaked_) ucp_cleanup(context_);
}

void UcxTransportImpl::Post(std::function<void()> command) {
  absl::MutexLock lock(&cmd_mu_);  // the worker is destroyed only after accepting_ turns false
  if (!accepting_) return;
  commands_.push_back(std::move(command));
  ucp_worker_signal(worker_);  // thread-safe by contract
}

absl::Status UcxTransportImpl::RunSync(std::function<absl::Status()> command) {
  struct Sync {
    absl::Notification done;
    absl::Status status;
  };
  auto sync = std::make_shared<Sync>();
  Post([sync, command = std::move(command)] {
    sync->status = command();
    sync->done.Notify();
  });
  if (!sync->done.WaitForNotificationWithTimeout(options_.command_timeout)) {
    return absl::DeadlineExceededError("UCX progress thread did not run the command in time");
  }
  return sync->status;
}

bool UcxTransportImpl::HasCommands() {
  absl::MutexLock lock(&cmd_mu_);
  return !commands_.empty();
}

void UcxTransportImpl::Loop() {
  std::vector<std::function<void()>> batch;
  while (!stop_) {
    {
      absl::MutexLock lock(&cmd_mu_);
      batch.swap(commands_);
    }
    for (auto& command : batch) {
      if (!stop_) command();  // nothing runs after ShutdownOnWorker
    }
    batch.clear();
    if (stop_) break;
    for (int i = 0; i < 1024 && ucp_worker_progress(worker_) != 0; ++i) {
    }
    RunDeferred();
    std::vector<std::shared_ptr<TransferState>> active;
    active.reserve(transfers_.size());
    for (auto& [id, t] : transfers_) active.push_back(t);
    for (auto& t : active) {
      Pump(*t);
      MaybeRetire(t);
    }
    CheckTimeouts();
    ReapClosedEps();
    if (HasCommands() || !deferred_.empty()) continue;
    if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;  // events pending: progress again
    const absl::Duration sleep = transfers_.empty()
                                     ? options_.idle_poll
                                     : std::min(options_.idle_poll, absl::Milliseconds(5));
    pollfd pfd{efd_, POLLIN, 0};
    poll(&pfd, 1, static_cast<int>(absl::ToInt64Milliseconds(sleep)) + 1);
  }
}

void UcxTransportImpl::DrainOnce() {
  ucp_worker_progress(worker_);
  RunDeferred();
  std::vector<std::shared_ptr<TransferState>> active;
  for (auto& [id, t] : transfers_) active.push_back(t);
  for (auto& t : active) MaybeRetire(t);
  ReapClosedEps();
}

void UcxTransportImpl::RunDeferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> work;
    work.swap(deferred_);
    for (auto& w : work) w();
  }
}

void UcxTransportImpl::ReapClosedEps() {
  closing_.erase(std::remove_if(closing_.begin(), closing_.end(),
                                [](void* r) {
                                  if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
                                  ucp_request_free(r);
                                  return true;
                                }),
                 closing_.end());
}

void UcxTransportImpl::ShutdownOnWorker() {
  // UCX (Debian's build asserts) must not destroy a worker whose endpoints still carry requests,
  // so: (1) stop new work and let running sends and receives finish or fail, (2) say goodbye and
  // close every endpoint, (3) destroy the worker. Each phase is bounded by close_timeout.
  shutting_down_ = true;  // incoming data is dropped from now on
  for (auto& [id, t] : transfers_) Decide(*t, absl::CancelledError("UCX transport destroyed"));
  for (auto& [id, t] : transfers_) {
    std::vector<void*> requests(t->requests.begin(), t->requests.end());
    for (void* r : requests) ucp_request_cancel(worker_, r);
  }
  // Sends to a live peer finish quickly once cancelled; receives in flight are data a live peer is
  // delivering (a stalled one is what peer_timeout bounds).
  const absl::Time start = absl::Now();
  while (true) {
    const absl::Duration waited = absl::Now() - start;
    const bool sends = !transfers_.empty() && waited < options_.close_timeout;
    const bool recvs = pending_recvs_ > 0 && waited < options_.base.peer_timeout;
    if (!sends && !recvs) break;
    DrainOnce();
  }

  std::vector<PeerId> outs;
  for (auto& [id, p] : out_peers_) outs.push_back(id);
  for (PeerId id : outs) FailPeer(id, absl::CancelledError("UCX transport destroyed"), true);
  std::vector<uint64_t> ins;
  for (auto& [id, p] : in_peers_) ins.push_back(id);
  for (uint64_t id : ins) DropInbound(id, true);
  const absl::Time deadline = absl::Now() + options_.close_timeout;
  while ((!closing_.empty() || !transfers_.empty() || pending_recvs_ > 0) &&
         absl::Now() < deadline) {
    DrainOnce();
  }
  if (!closing_.empty() || !transfers_.empty() || pending_recvs_ > 0) {
    // ucp_worker_destroy would abort the process with requests outstanding: leak instead.
    TESSERA_LOG(ERROR) << "UCX transport '" << options_.base.name << "': " << closing_.size()
                       << " endpoint closes, " << transfers_.size() << " transfers and "
                       << pending_recvs_ << " receives still pending at shutdown; leaking the "
                       << "UCX worker and context";
    leaked_ = true;
  }
  // Transfers still not retired: their requests die with the worker; release their waiters.
  for (auto& [id, t] : transfers_) {
    absl::MutexLock lock(&t->mu);
    t->done = true;
    t->status = t->final_status;
  }
  transfers_.clear();
  {
    absl::MutexLock lock(&cmd_mu_);
    accepting_ = false;
  }
  if (leaked_) {
    stop_ = true;
    return;
  }
  ucp_worker_destroy(worker_);  // may still complete receives: regions stay mapped until after
  worker_ = nullptr;
  for (void* memh : regions_.Clear()) ucp_mem_unmap(context_, static_cast<ucp_mem_h>(memh));
  stop_ = true;
}

// ---------------------------------------------------------------------------------------------
// Public methods (any thread).

absl::StatusOr<RegionId> UcxTransportImpl::RegisterMemory(void* base, size_t length) {
  TESSERA_RETURN_IF_ERROR(CheckRegisterMemory(base, length));
  auto memh = std::make_shared<ucp_mem_h>(nullptr);
  TESSERA_RETURN_IF_ERROR(RunSync([this, base, length, memh] {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = base;
    mp.length = length;
    return UcsToStatus(ucp_mem_map(context_, &mp, memh.get()), "ucp_mem_map");
  }));
  return regions_.Register(base, length, *memh);
}

absl::Status UcxTransportImpl::DeregisterMemory(RegionId region) {
  TESSERA_ASSIGN_OR_RETURN(void* handle, regions_.Deregister(region));
  ucp_mem_h memh = static_cast<ucp_mem_h>(handle);
  return RunSync(
      [this, memh] { return UcsToStatus(ucp_mem_unmap(context_, memh), "ucp_mem_unmap"); });
}

absl::StatusOr<std::string> UcxTransportImpl::LocalDescriptor() {
  ucx_wire::Descriptor d;
  d.name = options_.base.name;
  d.worker_address = worker_address_;
  for (const auto& [id, length] : regions_.List()) d.regions.push_back({id, length});
  return ucx_wire::EncodeDescriptor(d);
}

absl::StatusOr<PeerId> UcxTransportImpl::Connect(absl::string_view descriptor) {
  TESSERA_ASSIGN_OR_RETURN(ucx_wire::Descriptor d, ucx_wire::DecodeDescriptor(descriptor));
  const PeerId id = next_peer_++;
  {
    absl::MutexLock lock(&peers_mu_);
    PeerInfo& info = peer_info_[id];
    info.name = d.name;
    for (const auto& r : d.regions) info.regions[r.id] = r.length;
  }
  Post([this, id, address = d.worker_address] { StartConnect(id, address); });

  absl::MutexLock lock(&peers_mu_);
  auto connected = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(peers_mu_) {
    return peer_info_[id].state != PeerInfo::State::kConnecting;
  };
  const bool answered =
      peers_mu_.AwaitWithTimeout(absl::Condition(&connected), options_.base.connect_timeout);
  PeerInfo& info = peer_info_[id];
  if (answered && info.state == PeerInfo::State::kConnected) return id;
  absl::Status failure = answered ? info.failure
                                  : absl::UnavailableError(absl::StrCat(
                                        "UCX connect to '", d.name, "' timed out after ",
                                        absl::FormatDuration(options_.base.connect_timeout)));
  peer_info_.erase(id);
  Post([this, id] { FailPeer(id, absl::CancelledError("connect abandoned"), false); });
  return failure;
}

absl::Status UcxTransportImpl::Disconnect(PeerId peer) {
  {
    absl::MutexLock lock(&peers_mu_);
    if (peer_info_.erase(peer) == 0)
      return absl::NotFoundError(absl::StrCat("unknown peer ", peer));
  }
  Post([this, peer] { FailPeer(peer, absl::CancelledError("peer disconnected"), true); });
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Transfer>> UcxTransportImpl::Submit(
    PeerId peer, absl::Span<const Segment> segments) {
  auto t = std::make_shared<TransferState>();
  t->id = next_transfer_++;
  t->peer = peer;
  t->segments.resize(segments.size());
  {
    absl::MutexLock lock(&peers_mu_);
    auto it = peer_info_.find(peer);
    if (it == peer_info_.end())
      return absl::InvalidArgumentError(absl::StrCat("unknown peer ", peer));
    if (it->second.state == PeerInfo::State::kFailed) return it->second.failure;
    TESSERA_RETURN_IF_ERROR(CheckRemoteSegments(segments, it->second.regions));
  }
  TESSERA_ASSIGN_OR_RETURN(std::vector<RegionTable::Place> sources,
                           regions_.AcquireSources(segments));
  t->submitted.assign(segments.begin(), segments.end());
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    SegmentPlan& plan = t->segments[i];
    plan.src = sources[i].address;
    plan.memh = static_cast<ucp_mem_h>(sources[i].handle);
    plan.header.transfer_id = t->id;
    plan.header.segment_index = i;
    plan.header.region = s.remote_region;
    plan.header.offset = s.remote_offset;
    plan.header.length = s.length;
    plan.header.tag = s.tag;
  }
  Post([this, t] { StartTransfer(t); });
  return std::make_unique<UcxTransfer>(this, std::move(t));
}

void UcxTransportImpl::SetWriteListener(WriteListener* listener) {
  absl::MutexLock lock(&listener_mu_);  // waits for a listener call in progress
  listener_ = listener;
}

void UcxTransportImpl::RequestCancel(std::shared_ptr<TransferState> transfer) {
  Post([this, t = std::move(transfer)] { CancelOnWorker(t); });
}

// ---------------------------------------------------------------------------------------------
// Connections (progress thread).

void UcxTransportImpl::SetPeerState(PeerId id, PeerInfo::State state, absl::Status failure) {
  absl::MutexLock lock(&peers_mu_);
  auto it = peer_info_.find(id);
  if (it == peer_info_.end()) return;
  if (it->second.state == PeerInfo::State::kFailed) return;
  it->second.state = state;
  it->second.failure = std::move(failure);
}

ucp_ep_h UcxTransportImpl::CreateEp(const std::string& address, EpContext* context,
                                    absl::Status* status) {
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = &UcxTransportImpl::EpError;
  ep.err_handler.arg = context;
  ucp_ep_h handle = nullptr;
  *status = UcsToStatus(ucp_ep_create(worker_, &ep, &handle), "ucp_ep_create");
  return status->ok() ? handle : nullptr;
}

void UcxTransportImpl::SendControl(ucp_ep_h ep, unsigned id, std::string header,
                                   std::string payload) {
  auto* ctx = new SendContext{this, nullptr, std::move(header), std::move(payload)};
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.send = &UcxTransportImpl::SendDone;
  p.user_data = ctx;
  ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, ctx->header.data(), ctx->header.size(),
                                       ctx->payload.data(), ctx->payload.size(), &p);
  if (!UCS_PTR_IS_PTR(r)) {
    if (UCS_PTR_IS_ERR(r)) {
      TESSERA_LOG(DEBUG) << UcsToStatus(UCS_PTR_STATUS(r), "ucp_am_send_nbx (control)");
    }
    delete ctx;
  }
}

void UcxTransportImpl::CloseEp(ucp_ep_h ep, bool force) {
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t r = ucp_ep_close_nbx(ep, &p);
  if (UCS_PTR_IS_PTR(r)) closing_.push_back(r);
}

void UcxTransportImpl::StartConnect(PeerId id, const std::string& address) {
  OutPeer& p = out_peers_[id];
  p.ep_context = std::make_unique<EpContext>(EpContext{this, false, id});
  absl::Status status;
  p.ep = CreateEp(address, p.ep_context.get(), &status);
  if (p.ep == nullptr) {
    out_peers_.erase(id);
    SetPeerState(id, PeerInfo::State::kFailed, absl::UnavailableError(status.message()));
    return;
  }
  HelloHeader hello;
  hello.peer_id = id;
  hello.name_length = static_cast<uint32_t>(options_.base.name.size());
  hello.address_length = static_cast<uint32_t>(worker_address_.size());
  SendControl(p.ep, ucx_wire::kAmHello, ucx_wire::EncodeHello(hello),
              options_.base.name + worker_address_);
}

void UcxTransportImpl::FailPeer(PeerId id, const absl::Status& status, bool send_bye) {
  SetPeerState(id, PeerInfo::State::kFailed, status);
  auto it = out_peers_.find(id);
  if (it == out_peers_.end()) return;
  OutPeer peer = std::move(it->second);
  out_peers_.erase(it);
  std::vector<std::shared_ptr<TransferState>> affected;
  for (uint64_t tid : peer.transfers) {
    auto t = transfers_.find(tid);
    if (t != transfers_.end()) affected.push_back(t->second);
  }
  for (auto& t : affected) Decide(*t, status);
  if (send_bye && peer.connected) {
    SendControl(peer.ep, ucx_wire::kAmBye, ucx_wire::EncodeBye({peer.inbound_id, 1}), "");
  }
  bool busy = false;
  for (auto& t : affected) busy |= !t->requests.empty();
  // Sends still reading our memory: a flush could wait on the peer forever, so force.
  const bool graceful = send_bye && peer.connected && !(shutting_down_ && busy);
  // A graceful close flushes the Bye (and lets running sends finish); otherwise force: the
  // outstanding requests complete with errors and stop reading local memory.
  CloseEp(peer.ep, !graceful);
  for (auto& t : affected) MaybeRetire(t);
  // The EpContext must outlive the endpoint's error callbacks: keep it until the worker dies.
  dead_ep_contexts_.push_back(std::move(peer.ep_context));
}

void UcxTransportImpl::EpError(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
  auto* ctx = static_cast<EpContext*>(arg);
  UcxTransportImpl* self = ctx->impl;
  const bool inbound = ctx->inbound;
  const uint64_t id = ctx->id;
  absl::Status error = UcsToStatus(status, "UCX endpoint error");
  self->deferred_.push_back([self, inbound, id, error] {
    if (inbound) {
      auto it = self->in_peers_.find(id);
      if (it == self->in_peers_.end()) return;
      InPeer in = std::move(it->second);
      self->in_peers_.erase(it);
      self->CloseEp(in.back_ep, true);
      self->dead_ep_contexts_.push_back(std::move(in.ep_context));
    } else {
      self->FailPeer(id, absl::UnavailableError(error.message()), false);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Active messages (progress thread).

ucs_status_t UcxTransportImpl::AmTrampoline(void* arg, const void* header, size_t header_length,
                                            void* data, size_t length,
                                            const ucp_am_recv_param_t* param) {
  auto* a = static_cast<AmHandlerArg*>(arg);
  UcxTransportImpl* self = a->impl;
  const absl::string_view h = View(header, header_length);
  switch (a->id) {
    case ucx_wire::kAmHello:
      return self->OnHello(h, data, length, param);
    case ucx_wire::kAmHelloAck:
      self->OnHelloAck(h);
      return UCS_OK;
    case ucx_wire::kAmData:
      return self->OnData(h, data, length, param);
    case ucx_wire::kAmAck:
      if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) return UCS_OK;  // never sent that way
      self->OnAck(h, data, length);
      return UCS_OK;
    case ucx_wire::kAmBye:
      self->OnBye(h);
      return UCS_OK;
    default:
      return UCS_OK;
  }
}

void UcxTransportImpl::OnHelloAck(absl::string_view header) {
  auto ack = ucx_wire::DecodeHelloAck(header);
  if (!ack.ok()) return;
  auto it = out_peers_.find(ack->peer_id);
  if (it == out_peers_.end() || it->second.connected) return;
  it->second.connected = true;
  it->second.inbound_id = ack->inbound_id;
  SetPeerState(ack->peer_id, PeerInfo::State::kConnected, absl::OkStatus());
}

void UcxTransportImpl::OnBye(absl::string_view header) {
  auto bye = ucx_wire::DecodeBye(header);
  if (!bye.ok()) return;
  const ByeHeader b = *bye;
  deferred_.push_back([this, b] {
    if (b.to_receiver) {
      DropInbound(b.id, false);
    } else {
      FailPeer(b.id, absl::UnavailableError("UCX peer closed its transport"), false);
    }
  });
}

void UcxTransportImpl::OnAck(absl::string_view header, const void* data, size_t length) {
  auto ack = ucx_wire::DecodeAck(header);
  if (!ack.ok()) return;
  auto it = transfers_.find(ack->transfer_id);
  if (it == transfers_.end()) return;  // a cancelled or finished transfer's late answer
  TransferState& t = *it->second;
  if (ack->segment_index >= t.segments.size()) return;
  SegmentPlan& seg = t.segments[ack->segment_index];
  if (seg.acked) return;
  seg.acked = true;
  --t.inflight;
  t.inflight_bytes -= seg.header.length;
  t.last_progress = absl::Now();
  const auto code = static_cast<absl::StatusCode>(ack->code);
  if (code == absl::StatusCode::kOk) {
    ++t.acked;
    t.bytes_done += seg.header.length;
    if (t.acked == t.segments.size()) Decide(t, absl::OkStatus());
  } else {
    Decide(t, absl::Status(code, absl::StrCat("peer refused segment ", ack->segment_index, ": ",
                                              View(data, length))));
  }
}

// ---------------------------------------------------------------------------------------------
// Transfers (progress thread).

void UcxTransportImpl::StartTransfer(const std::shared_ptr<TransferState>& t) {
  t->last_progress = absl::Now();
  transfers_[t->id] = t;
  auto p = out_peers_.find(t->peer);
  if (p == out_peers_.end() || !p->second.connected) {
    Decide(*t, absl::UnavailableError(absl::StrCat("UCX peer ", t->peer, " is not connected")));
  } else if (t->cancel_requested) {
    Decide(*t, absl::CancelledError("transfer cancelled"));
  } else {
    p->second.transfers.insert(t->id);
    for (SegmentPlan& s : t->segments) s.header.inbound_id = p->second.inbound_id;
    if (t->segments.empty()) Decide(*t, absl::OkStatus());
    Pump(*t);
  }
  MaybeRetire(t);
}

void UcxTransportImpl::Pump(TransferState& t) {
  if (t.decided) return;
  auto self = transfers_.find(t.id);
  if (self == transfers_.end()) return;
  std::shared_ptr<TransferState> ref = self->second;
  while (!t.decided && t.next < t.segments.size() &&
         t.inflight < static_cast<size_t>(options_.max_inflight_segments) &&
         (t.inflight == 0 ||
          t.inflight_bytes + t.segments[t.next].header.length <= options_.max_inflight_bytes)) {
    SendSegment(ref, t.next++);
  }
}

void UcxTransportImpl::SendSegment(const std::shared_ptr<TransferState>& t, size_t index) {
  auto p = out_peers_.find(t->peer);
  if (p == out_peers_.end()) {
    Decide(*t, absl::UnavailableError("UCX peer is gone"));
    return;
  }
  const SegmentPlan& seg = t->segments[index];
  auto* ctx = new SendContext{this, t, ucx_wire::EncodeData(seg.header), ""};
  ucp_request_param_t param{};
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH;
  param.cb.send = &UcxTransportImpl::SendDone;
  param.user_data = ctx;
  param.memh = seg.memh;
  ++t->inflight;
  t->inflight_bytes += seg.header.length;
  ucs_status_ptr_t r = ucp_am_send_nbx(p->second.ep, ucx_wire::kAmData, ctx->header.data(),
                                       ctx->header.size(), seg.src, seg.header.length, &param);
  if (UCS_PTR_IS_PTR(r)) {
    t->requests.insert(r);
    return;
  }
  delete ctx;
  if (UCS_PTR_IS_ERR(r)) {
    Decide(*t, absl::UnavailableError(UcsToStatus(UCS_PTR_STATUS(r), "ucp_am_send_nbx").message()));
  }
}

void UcxTransportImpl::SendDone(void* request, ucs_status_t status, void* user_data) {
  std::unique_ptr<SendContext> ctx(static_cast<SendContext*>(user_data));
  ucp_request_free(request);
  if (ctx->transfer == nullptr) return;  // a control message
  TransferState& t = *ctx->transfer;
  t.requests.erase(request);
  t.last_progress = absl::Now();
  if (status != UCS_OK && status != UCS_ERR_CANCELED) {
    ctx->impl->Decide(t, absl::UnavailableError(UcsToStatus(status, "ucp_am_send_nbx").message()));
  }
  // Retirement is checked by the loop (this may run inside ucp_ep_close_nbx).
}

void UcxTransportImpl::Decide(TransferState& t, absl::Status status) {
  if (t.decided) return;
  t.decided = true;
  t.final_status = std::move(status);
}

void UcxTransportImpl::MaybeRetire(const std::shared_ptr<TransferState>& t) {
  if (!t->decided || !t->requests.empty()) return;
  if (transfers_.erase(t->id) == 0) return;
  auto p = out_peers_.find(t->peer);
  if (p != out_peers_.end()) p->second.transfers.erase(t->id);
  regions_.ReleaseSources(t->submitted);
  absl::MutexLock lock(&t->mu);
  t->done = true;
  // Transfer::Cancel's contract: kCancelled unless the transfer had already finished. A Cancel
  // posted to this thread can arrive after the last ack was read in the same progress round, so
  // the flag (set before Cancel returns) decides, not the order of the two on this thread.
  t->status = t->final_status.ok() && t->cancel_requested.load()
                  ? absl::CancelledError("transfer cancelled")
                  : t->final_status;
}

void UcxTransportImpl::CancelOnWorker(const std::shared_ptr<TransferState>& t) {
  if (transfers_.count(t->id) == 0) return;  // finished, or StartTransfer will see the flag
  Decide(*t, absl::CancelledError("transfer cancelled"));
  std::vector<void*> requests(t->requests.begin(), t->requests.end());
  for (void* r : requests) ucp_request_cancel(worker_, r);
  MaybeRetire(t);
}

void UcxTransportImpl::CheckTimeouts() {
  const absl::Time now = absl::Now();
  std::vector<PeerId> silent;
  for (auto& [id, t] : transfers_) {
    const bool waiting = t->inflight > 0 || !t->requests.empty();
    if (waiting && now - t->last_progress > options_.base.peer_timeout) silent.push_back(t->peer);
  }
  for (PeerId peer : silent) {
    FailPeer(peer,
             absl::UnavailableError(absl::StrCat("UCX peer ", peer, " made no progress for ",
                                                 absl::FormatDuration(options_.base.peer_timeout))),
             false);
  }
  // Decided transfers without a peer (failed before start) retire in the loop.
}

}  // namespace tessera::kvtransfer::ucx_internal

namespace tessera::kvtransfer {

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(
    const UcxTransportOptions& options) {
  if (options.max_inflight_segments <= 0 || options.max_inflight_bytes == 0) {
    return absl::InvalidArgumentError(
        "max_inflight_segments and max_inflight_bytes must be positive");
  }
  if (options.base.peer_timeout <= absl::ZeroDuration() ||
      options.base.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("connect_timeout and peer_timeout must be positive");
  }
  auto transport = std::make_unique<ucx_internal::UcxTransportImpl>(options);
  TESSERA_RETURN_IF_ERROR(transport->Init());
  return std::unique_ptr<UcxTransport>(std::move(transport));
}

}  // namespace tessera::kvtransfer
