#include "kvtransfer/fault_injecting_transport.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace tessera::kvtransfer {

// What a Transfer of the decorator shares with DropConnection: the inner transfer (null for an
// injected failure), the delay, and why it was stopped.
class FaultInjectingTransport::TransferState {
 public:
  TransferState(PeerId peer, std::unique_ptr<Transfer> inner, absl::Status injected,
                absl::Time ready_at)
      : peer_(peer),
        inner_(std::move(inner)),
        injected_(std::move(injected)),
        ready_at_(ready_at) {}

  PeerId peer() const { return peer_; }

  bool Done() {
    if (inner_ == nullptr) return true;
    {
      absl::MutexLock lock(&mu_);
      if (final_.has_value() || stop_ != Stop::kNone) return inner_->Done();
    }
    return absl::Now() >= ready_at_ && inner_->Done();
  }

  absl::Status Wait(absl::Duration timeout) {
    if (inner_ == nullptr) return injected_;
    const absl::Time deadline = absl::Now() + timeout;
    absl::Status inner_status = inner_->Wait(timeout);
    if (absl::IsDeadlineExceeded(inner_status) && !inner_->Done()) return inner_status;
    absl::MutexLock lock(&mu_);
    if (final_.has_value()) return *final_;
    // The injected delay; Cancel and DropConnection end it early.
    auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ != Stop::kNone; };
    if (!mu_.AwaitWithDeadline(absl::Condition(&stopped), std::min(deadline, ready_at_)) &&
        absl::Now() < ready_at_) {
      return absl::DeadlineExceededError("transfer still running (injected delay)");
    }
    if (stop_ == Stop::kDropped) {
      final_ = absl::UnavailableError("connection dropped (injected)");
    } else if (stop_ == Stop::kCancelled && absl::Now() < ready_at_) {
      final_ = absl::CancelledError("transfer cancelled");
    } else {
      final_ = inner_status;
    }
    return *final_;
  }

  void Cancel() { Halt(Stop::kCancelled); }
  void Drop() { Halt(Stop::kDropped); }
  uint64_t bytes_done() const { return inner_ == nullptr ? 0 : inner_->bytes_done(); }

 private:
  enum class Stop { kNone, kCancelled, kDropped };

  void Halt(Stop why) {
    if (inner_ == nullptr) return;
    if (why == Stop::kCancelled && Done()) return;  // already finished: stays as it was
    {
      absl::MutexLock lock(&mu_);
      if (final_.has_value() || stop_ != Stop::kNone) return;
      stop_ = why;
    }
    inner_->Cancel();
  }

  const PeerId peer_;
  const std::unique_ptr<Transfer> inner_;
  const absl::Status injected_;
  const absl::Time ready_at_;
  absl::Mutex mu_;
  Stop stop_ ABSL_GUARDED_BY(mu_) = Stop::kNone;
  std::optional<absl::Status> final_ ABSL_GUARDED_BY(mu_);
};

namespace {

class FaultTransfer final : public Transfer {
 public:
  explicit FaultTransfer(std::shared_ptr<FaultInjectingTransport::TransferState> state)
      : state_(std::move(state)) {}
  bool Done() override { return state_->Done(); }
  absl::Status Wait(absl::Duration timeout) override { return state_->Wait(timeout); }
  void Cancel() override { state_->Cancel(); }
  uint64_t bytes_done() const override { return state_->bytes_done(); }

 private:
  std::shared_ptr<FaultInjectingTransport::TransferState> state_;
};

}  // namespace

class FaultInjectingTransport::Hook final : public WriteListener {
 public:
  explicit Hook(FaultInjectingTransport& owner) : owner_(owner) {}
  absl::Status Admit(const WriteInfo& write) override { return owner_.OnAdmit(write); }
  void Written(const WriteInfo& write) override { owner_.OnWritten(write); }
  void NotWritten(const WriteInfo& write, const absl::Status& why) override {
    owner_.OnNotWritten(write, why);
  }

 private:
  FaultInjectingTransport& owner_;
};

absl::StatusOr<std::unique_ptr<FaultInjectingTransport>> FaultInjectingTransport::Create(
    std::unique_ptr<Transport> inner, FaultPlan plan) {
  if (inner == nullptr) return absl::InvalidArgumentError("FaultInjectingTransport: null inner");
  return std::unique_ptr<FaultInjectingTransport>(
      new FaultInjectingTransport(std::move(inner), std::move(plan)));
}

FaultInjectingTransport::FaultInjectingTransport(std::unique_ptr<Transport> inner, FaultPlan plan)
    : inner_(std::move(inner)), hook_(std::make_unique<Hook>(*this)), plan_(std::move(plan)) {
  inner_->SetWriteListener(hook_.get());
}

FaultInjectingTransport::~FaultInjectingTransport() {
  inner_.reset();  // before hook_, which it calls
}

void FaultInjectingTransport::SetFaultPlan(FaultPlan plan) {
  absl::MutexLock lock(&mu_);
  plan_ = std::move(plan);
  submits_ = 0;
  writes_ = 0;
}

void FaultInjectingTransport::DropConnection(PeerId peer) {
  std::vector<std::shared_ptr<TransferState>> running;
  {
    absl::MutexLock lock(&mu_);
    dropped_.insert(peer);
    for (const auto& weak : running_) {
      if (auto t = weak.lock(); t != nullptr && t->peer() == peer) running.push_back(std::move(t));
    }
  }
  for (auto& t : running) t->Drop();
}

int FaultInjectingTransport::corrupted_writes() const {
  absl::MutexLock lock(&mu_);
  return corrupted_;
}

absl::StatusOr<RegionId> FaultInjectingTransport::RegisterMemory(void* base, size_t length) {
  absl::StatusOr<RegionId> id = inner_->RegisterMemory(base, length);
  if (id.ok()) {
    absl::MutexLock lock(&mu_);
    regions_[*id] = Region{static_cast<char*>(base), length};
  }
  return id;
}

absl::Status FaultInjectingTransport::DeregisterMemory(RegionId region) {
  absl::Status status = inner_->DeregisterMemory(region);
  if (status.ok()) {
    absl::MutexLock lock(&mu_);
    regions_.erase(region);
  }
  return status;
}

absl::StatusOr<std::unique_ptr<Transfer>> FaultInjectingTransport::Submit(
    PeerId peer, absl::Span<const Segment> segments) {
  FaultPlan plan;
  int n = 0;
  bool dropped = false;
  {
    absl::MutexLock lock(&mu_);
    plan = plan_;
    n = ++submits_;
    dropped = dropped_.contains(peer);
  }
  absl::Status injected;
  if (dropped) {
    injected = absl::UnavailableError(absl::StrCat("connection to peer ", peer, " dropped"));
  } else if (n == plan.fail_submit_at) {
    if (plan.submit_failure == FaultPlan::SubmitFailure::kReturnError) return plan.submit_error;
    injected = plan.submit_error;
  }
  std::shared_ptr<TransferState> state;
  if (!injected.ok()) {
    state = std::make_shared<TransferState>(peer, nullptr, injected, absl::Now());
  } else {
    absl::StatusOr<std::unique_ptr<Transfer>> inner = inner_->Submit(peer, segments);
    if (!inner.ok()) return inner.status();
    state = std::make_shared<TransferState>(peer, *std::move(inner), absl::OkStatus(),
                                            absl::Now() + plan.transfer_delay);
    absl::MutexLock lock(&mu_);
    std::erase_if(running_, [](const std::weak_ptr<TransferState>& t) { return t.expired(); });
    running_.push_back(state);
  }
  return std::unique_ptr<Transfer>(new FaultTransfer(std::move(state)));
}

void FaultInjectingTransport::SetWriteListener(WriteListener* listener) {
  absl::WriterMutexLock lock(&listener_mu_);
  listener_ = listener;
}

absl::Status FaultInjectingTransport::OnAdmit(const WriteInfo& write) {
  absl::ReaderMutexLock lock(&listener_mu_);
  return listener_ == nullptr ? absl::OkStatus() : listener_->Admit(write);
}

void FaultInjectingTransport::OnWritten(const WriteInfo& write) {
  {
    absl::MutexLock lock(&mu_);
    ++writes_;
    auto it = regions_.find(write.region);
    if (writes_ == plan_.corrupt_write_at && it != regions_.end() && write.length > 0 &&
        write.offset + write.length <= it->second.length) {
      it->second.base[write.offset + write.length / 2] ^= 0xFF;
      ++corrupted_;
    }
  }
  absl::ReaderMutexLock lock(&listener_mu_);
  if (listener_ != nullptr) listener_->Written(write);
}

void FaultInjectingTransport::OnNotWritten(const WriteInfo& write, const absl::Status& why) {
  absl::ReaderMutexLock lock(&listener_mu_);
  if (listener_ != nullptr) listener_->NotWritten(write, why);
}

}  // namespace tessera::kvtransfer
