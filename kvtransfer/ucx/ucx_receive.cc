// UcxTransport's receive side (progress thread): hellos from peers that connect to us, and data
// messages. Each segment is checked (bounds, WriteListener::Admit) before its bytes land: eager
// data is copied into place, rendezvous data is pulled by ucp_am_recv_data_nbx into the
// destination; after Written the segment is acknowledged to the sender.
#include <ucp/api/ucp.h>

#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"
#include "kvtransfer/region_table.h"
#include "kvtransfer/ucx/ucx_status.h"
#include "kvtransfer/ucx/ucx_transport_impl.h"
#include "kvtransfer/ucx/wire.h"

namespace tessera::kvtransfer::ucx_internal {

using ucx_wire::AckHeader;

// ---------------------------------------------------------------------------------------------
// Inbound connections.

ucs_status_t UcxTransportImpl::OnHello(absl::string_view header, const void* data, size_t length,
                                       const ucp_am_recv_param_t* param) {
  auto hello = ucx_wire::DecodeHello(header);
  if (!hello.ok() || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) ||
      length != static_cast<size_t>(hello->name_length) + hello->address_length) {
    TESSERA_LOG(WARNING) << "UCX: dropping malformed hello";
    return UCS_OK;
  }
  const char* bytes = static_cast<const char*>(data);
  std::string name(bytes, hello->name_length);
  std::string address(bytes + hello->name_length, hello->address_length);
  // ucp_ep_create must not run inside a callback.
  deferred_.push_back([this, h = *hello, name = std::move(name), address = std::move(address)] {
    AcceptHello(h, name, address);
  });
  return UCS_OK;
}

void UcxTransportImpl::AcceptHello(HelloHeader hello, std::string name,
                                   const std::string& address) {
  if (shutting_down_) return;
  const uint64_t inbound_id = next_inbound_++;
  InPeer& in = in_peers_[inbound_id];
  in.ep_context = std::make_unique<EpContext>(EpContext{this, true, inbound_id});
  in.peer_id = hello.peer_id;
  in.name = std::move(name);
  absl::Status status;
  in.back_ep = CreateEp(address, in.ep_context.get(), &status);
  if (in.back_ep == nullptr) {
    TESSERA_LOG(WARNING) << "UCX: cannot answer hello from '" << in.name << "': " << status;
    in_peers_.erase(inbound_id);
    return;
  }
  SendControl(in.back_ep, ucx_wire::kAmHelloAck,
              ucx_wire::EncodeHelloAck({hello.peer_id, inbound_id}), "");
}

void UcxTransportImpl::DropInbound(uint64_t inbound_id, bool send_bye) {
  auto it = in_peers_.find(inbound_id);
  if (it == in_peers_.end()) return;
  InPeer in = std::move(it->second);
  in_peers_.erase(it);
  if (send_bye) SendControl(in.back_ep, ucx_wire::kAmBye, ucx_wire::EncodeBye({in.peer_id, 0}), "");
  CloseEp(in.back_ep, !send_bye);
  dead_ep_contexts_.push_back(std::move(in.ep_context));
}

// ---------------------------------------------------------------------------------------------
// Incoming data.

ucs_status_t UcxTransportImpl::OnData(absl::string_view header, void* data, size_t length,
                                      const ucp_am_recv_param_t* param) {
  auto parsed = ucx_wire::DecodeData(header);
  if (!parsed.ok()) {
    TESSERA_LOG(WARNING) << "UCX: dropping data message: " << parsed.status();
    return UCS_OK;
  }
  const DataHeader h = *parsed;
  auto in = in_peers_.find(h.inbound_id);
  if (in == in_peers_.end() || shutting_down_) return UCS_OK;  // no one to answer
  WriteInfo info{h.region, h.offset, h.length, h.tag, in->second.name};

  char* dest = nullptr;
  ucp_mem_h memh = nullptr;
  absl::Status admit;
  if (h.length != length) {
    admit = absl::InvalidArgumentError(
        absl::StrCat("write of ", length, " bytes for a segment of ", h.length));
  } else if (absl::StatusOr<RegionTable::Place> place =
                 regions_.AcquireDestination(h.region, h.offset, h.length);
             !place.ok()) {
    admit = place.status();
  } else {
    dest = place->address;
    memh = static_cast<ucp_mem_h>(place->handle);
  }
  if (admit.ok()) {
    absl::ReaderMutexLock lock(&listener_mu_);
    if (listener_ != nullptr) admit = listener_->Admit(info);
    if (!admit.ok()) ReleaseIncoming(h.region);
  }
  if (!admit.ok()) {
    SendAck(h.inbound_id, h, admit);
    return UCS_OK;  // drops the data; a rendezvous sender completes without sending it
  }
  if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
    auto* rc = new RecvContext{this, h.inbound_id, h, std::move(info), true};
    ucp_request_param_t p{};
    p.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_MEMH;
    p.cb.recv_am = &UcxTransportImpl::RecvDone;
    p.user_data = rc;
    p.memh = memh;
    ++pending_recvs_;
    ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, data, dest, length, &p);
    if (r == nullptr) {
      FinishRecv(rc, UCS_OK);
    } else if (UCS_PTR_IS_ERR(r)) {
      FinishRecv(rc, UCS_PTR_STATUS(r));
    }
    return UCS_INPROGRESS;  // UCX owns the descriptor now
  }
  std::memcpy(dest, data, length);
  auto* rc = new RecvContext{this, h.inbound_id, h, std::move(info)};
  FinishRecv(rc, UCS_OK);
  return UCS_OK;
}

void UcxTransportImpl::RecvDone(void* request, ucs_status_t status, size_t /*length*/,
                                void* user_data) {
  auto* rc = static_cast<RecvContext*>(user_data);
  rc->impl->FinishRecv(rc, status);
  ucp_request_free(request);
}

void UcxTransportImpl::FinishRecv(RecvContext* rc, ucs_status_t status) {
  std::unique_ptr<RecvContext> owned(rc);
  if (rc->rndv) --pending_recvs_;
  absl::Status result = UcsToStatus(status, "ucp_am_recv_data_nbx");
  {
    absl::ReaderMutexLock lock(&listener_mu_);
    if (listener_ != nullptr) {
      if (result.ok()) {
        listener_->Written(rc->info);
      } else {
        listener_->NotWritten(rc->info, result);
      }
    }
  }
  ReleaseIncoming(rc->header.region);
  if (!shutting_down_) SendAck(rc->inbound_id, rc->header, result);
}

void UcxTransportImpl::ReleaseIncoming(RegionId region) { regions_.ReleaseDestination(region); }

void UcxTransportImpl::SendAck(uint64_t inbound_id, const DataHeader& h,
                               const absl::Status& status) {
  auto in = in_peers_.find(inbound_id);
  if (in == in_peers_.end()) return;
  AckHeader ack;
  ack.transfer_id = h.transfer_id;
  ack.segment_index = h.segment_index;
  ack.code = static_cast<int32_t>(status.code());
  // Sending from inside a callback is allowed, but keep it uniform: sends run after progress.
  deferred_.push_back(
      [this, ep = in->second.back_ep, inbound_id, ack, message = std::string(status.message())] {
        if (in_peers_.count(inbound_id) == 0) return;
        SendControl(ep, ucx_wire::kAmAck, ucx_wire::EncodeAck(ack), message);
      });
}

}  // namespace tessera::kvtransfer::ucx_internal
