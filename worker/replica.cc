#include "worker/replica.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace tessera::worker {
namespace {

constexpr int64_t kStop = 0;
constexpr int64_t kStep = 1;
constexpr int64_t kKeepAlive = 2;
constexpr int64_t kCommand = 3;      // not a plan: a command for the followers' handlers
constexpr int64_t kHeaderWords = 2;  // kind, payload words

MutableTensorView HostView(void* data, DataType dtype, int64_t n) {
  return MutableTensorView(data, dtype, {n});
}

TensorView HostView(const void* data, DataType dtype, int64_t n) {
  return TensorView(data, dtype, {n});
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShardWorker>> ShardWorker::Create(LlamaModel& model, KvCache& cache,
                                                                 kernels::Backend& backend,
                                                                 parallel::Communicator& replica,
                                                                 int micro_batches,
                                                                 ShardHostGroups host) {
  const parallel::ShardPlan& plan = model.plan();
  if (replica.size() != plan.tp_size * plan.pp_size ||
      replica.rank() !=
          parallel::ShardPlan::ReplicaRank(plan.tp_rank, plan.pp_rank, plan.tp_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardWorker: replica communicator rank ", replica.rank(), " of ",
                     replica.size(), " does not match the shard plan (", plan.DebugString(), ")"));
  }
  if (micro_batches < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardWorker: micro_batches must be >= 1, got ", micro_batches));
  }
  if ((plan.tp_size > 1 && (host.tp == nullptr || host.tp->size() != plan.tp_size)) ||
      (plan.pp_size > 1 && (host.pp == nullptr || host.pp->size() != plan.pp_size))) {
    return absl::InvalidArgumentError(
        absl::StrCat("ShardWorker: the host TP/PP groups do not match the shard plan (",
                     plan.DebugString(), ")"));
  }
  auto worker =
      std::unique_ptr<ShardWorker>(new ShardWorker(model, cache, replica, micro_batches, host));
  TESSERA_ASSIGN_OR_RETURN(worker->stream_, backend.CreateStream());
  if (plan.last_stage()) {
    TESSERA_ASSIGN_OR_RETURN(worker->sampler_,
                             DeviceSampler::Create(backend, model.options().max_num_tokens));
    if (model.tp_group() != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(
          worker->vocab_sampler_,
          VocabParallelSampler::Create(backend, model.options().max_num_tokens));
    }
  }
  return worker;
}

ExecutorLimits ShardWorker::limits() const { return LimitsOf(model_, cache_); }

std::vector<StepPlan> SplitStepPlan(const StepPlan& plan, int parts,
                                    std::vector<std::vector<size_t>>* origin) {
  const size_t seqs = plan.seq_lens.size();
  const size_t width = seqs == 0 ? 0 : plan.block_tables.size() / seqs;
  const int64_t tokens = static_cast<int64_t>(plan.token_ids.size());
  std::vector<StepPlan> out;
  origin->clear();
  size_t seq = 0;
  for (int p = 0; p < parts && seq < seqs; ++p) {
    // Take sequences until this part has its share of the remaining tokens.
    const int64_t begin_token = plan.query_start[seq];
    const int64_t target = (tokens - begin_token) / (parts - p);
    size_t end = seq + 1;
    while (end < seqs && plan.query_start[end] - begin_token < target) ++end;
    StepPlan part;
    const int32_t t0 = plan.query_start[seq];
    const int32_t t1 = plan.query_start[end];
    part.token_ids.assign(plan.token_ids.begin() + t0, plan.token_ids.begin() + t1);
    part.positions.assign(plan.positions.begin() + t0, plan.positions.begin() + t1);
    part.slot_mapping.assign(plan.slot_mapping.begin() + t0, plan.slot_mapping.begin() + t1);
    for (size_t s = seq; s < end; ++s) {
      part.query_start.push_back(plan.query_start[s + 1] - t0);
      part.seq_lens.push_back(plan.seq_lens[s]);
    }
    part.block_tables.assign(plan.block_tables.begin() + seq * width,
                             plan.block_tables.begin() + end * width);
    std::vector<size_t> rows;
    for (size_t r = 0; r < plan.logits_rows.size(); ++r) {
      if (plan.logits_rows[r] >= t0 && plan.logits_rows[r] < t1) {
        part.logits_rows.push_back(plan.logits_rows[r] - t0);
        part.sampling.push_back(plan.sampling[r]);
        rows.push_back(r);
      }
    }
    out.push_back(std::move(part));
    origin->push_back(std::move(rows));
    seq = end;
  }
  return out;
}

absl::StatusOr<StepResult> ShardWorker::ForwardAndSample(
    const StepPlan& plan, KvLayerObserver* observer,
    const std::function<absl::Status()>& before_send) {
  const bool sampled_here = model_.plan().last_stage() && !plan.logits_rows.empty();
  // Greedy steps under TP sample each rank's vocabulary columns and exchange a few numbers a row
  // instead of gathering the logits; every TP rank decides alike from the same plan.
  parallel::Communicator* tp = model_.tp_group();
  ForwardOptions options;
  options.gather_logits = tp == nullptr || !CanSampleVocabParallel(plan.sampling);
  if (observer != nullptr) {
    options.kv_written = [observer](int32_t layer) { observer->LayerWritten(layer); };
  }
  options.before_send = before_send;
  TESSERA_ASSIGN_OR_RETURN(TensorView logits,
                           model_.Forward(plan.AsForwardInput(), cache_, *stream_, options));
  if (sampled_here && !options.gather_logits) {
    return vocab_sampler_->Sample(logits, model_.plan().vocab_begin, model_.config().vocab_size,
                                  plan.sampling, *tp, *stream_);
  }
  if (sampled_here) {
    // Every TP rank of the last stage holds the same logits and draws the same tokens.
    return sampler_->Sample(logits, plan.sampling, *stream_);
  }
  TESSERA_RETURN_IF_ERROR(stream_->Synchronize());
  return StepResult{};
}

absl::StatusOr<StepResult> ShardWorker::RunStep(const StepPlan& plan,
                                                const std::function<absl::Status()>& before_send,
                                                std::vector<int64_t>* replies) {
  if (plan.sampling.size() != plan.logits_rows.size()) {
    return absl::InvalidArgumentError(absl::StrCat("step plan: ", plan.sampling.size(),
                                                   " sampling rows for ", plan.logits_rows.size(),
                                                   " logits rows"));
  }
  const parallel::ShardPlan& shard = model_.plan();
  const int64_t rows = static_cast<int64_t>(plan.logits_rows.size());
  StepResult result;
  KvLayerObserver* observer = observer_ != nullptr && observer_->Wants() ? observer_ : nullptr;
  if (shard.pp_size == 1 || micro_batches_ == 1 || plan.seq_lens.size() < 2) {
    TESSERA_ASSIGN_OR_RETURN(result, ForwardAndSample(plan, observer, before_send));
  } else {
    // Micro-batches in order on every stage: a stage sends micro-batch i on and starts i+1
    // while the next stage works on i.
    std::vector<std::vector<size_t>> origin;
    const std::vector<StepPlan> parts = SplitStepPlan(plan, micro_batches_, &origin);
    std::vector<StepResult> partial;
    int32_t top_n = 0;
    for (size_t p = 0; p < parts.size(); ++p) {
      // The next stage takes the plan before the first micro-batch's activations.
      TESSERA_ASSIGN_OR_RETURN(StepResult r,
                               ForwardAndSample(parts[p], nullptr, p == 0 ? before_send : nullptr));
      top_n = std::max(top_n, r.top_n);
      partial.push_back(std::move(r));
    }
    // Every micro-batch writes every layer: a layer is complete only after the last one.
    for (int64_t layer = shard.layer_begin; observer != nullptr && layer < shard.layer_end;
         ++layer) {
      observer->LayerWritten(static_cast<int32_t>(layer));
    }
    if (shard.last_stage() && rows > 0) {
      result.top_n = top_n;
      result.token_ids.resize(rows);
      result.logprobs.resize(rows);
      result.top_token_ids.assign(rows * top_n, -1);
      result.top_logprobs.assign(rows * top_n, -std::numeric_limits<float>::infinity());
      for (size_t p = 0; p < parts.size(); ++p) {
        for (size_t i = 0; i < origin[p].size(); ++i) {
          const size_t at = origin[p][i];
          result.token_ids[at] = partial[p].token_ids[i];
          result.logprobs[at] = partial[p].logprobs[i];
          for (int32_t k = 0; k < partial[p].top_n; ++k) {
            result.top_token_ids[at * top_n + k] =
                partial[p].top_token_ids[i * partial[p].top_n + k];
            result.top_logprobs[at * top_n + k] = partial[p].top_logprobs[i * partial[p].top_n + k];
          }
        }
      }
    }
  }
  if (observer != nullptr) observer->StepEnded();
  if (replies != nullptr && shard.last_stage()) TESSERA_RETURN_IF_ERROR(GatherReplies(*replies));
  if ((rows == 0 && replies == nullptr) || !result_from_last_stage()) {
    return is_leader() ? result : StepResult{};
  }
  const int sender = parallel::ShardPlan::ReplicaRank(0, shard.pp_size - 1, shard.tp_size);
  if (replica_.rank() == sender) TESSERA_RETURN_IF_ERROR(SendResult(result, rows, replies));
  return StepResult{};
}

bool ShardWorker::result_from_last_stage() const {
  const parallel::ShardPlan& shard = model_.plan();
  return parallel::ShardPlan::ReplicaRank(0, shard.pp_size - 1, shard.tp_size) != 0;
}

namespace {
// A message (kind first, then its words) over a group: broadcast from its rank 0, or sent to and
// received from one peer. The leader's words are at most a plan; a length past 2^32 words is
// corruption.
constexpr int64_t kMaxMessageWords = int64_t{1} << 32;

absl::Status BroadcastWords(parallel::Communicator& comm, std::vector<int64_t>& words) {
  CpuStream host;
  int64_t header[kHeaderWords] = {0, static_cast<int64_t>(words.size())};
  TESSERA_RETURN_IF_ERROR(comm.Broadcast(HostView(header, DataType::kI64, kHeaderWords), 0, host));
  if (header[1] < 0 || header[1] > kMaxMessageWords) {
    return absl::DataLossError(absl::StrCat("a message of ", header[1], " words from the leader"));
  }
  words.resize(static_cast<size_t>(header[1]));
  return comm.Broadcast(HostView(words.data(), DataType::kI64, header[1]), 0, host);
}

absl::Status SendWords(parallel::Communicator& comm, const std::vector<int64_t>& words, int peer) {
  CpuStream host;
  const int64_t n = static_cast<int64_t>(words.size());
  TESSERA_RETURN_IF_ERROR(comm.Send(HostView(&n, DataType::kI64, 1), peer, host));
  return comm.Send(HostView(words.data(), DataType::kI64, n), peer, host);
}

absl::Status RecvWords(parallel::Communicator& comm, std::vector<int64_t>& words, int peer) {
  CpuStream host;
  int64_t n = 0;
  TESSERA_RETURN_IF_ERROR(comm.Recv(HostView(&n, DataType::kI64, 1), peer, host));
  if (n < 0 || n > kMaxMessageWords) {
    return absl::DataLossError(absl::StrCat("a message of ", n, " words from rank ", peer));
  }
  words.resize(static_cast<size_t>(n));
  return comm.Recv(HostView(words.data(), DataType::kI64, n), peer, host);
}
}  // namespace

// The hand-back: top_n, then the chosen tokens and logprobs, then rows * top_n alternatives (when
// there are rows); then the reply section's length and words (when commands rode with the step).
absl::Status ShardWorker::SendResult(const StepResult& result, int64_t rows,
                                     const std::vector<int64_t>* replies) {
  TESSERA_RETURN_IF_ERROR(SendTokens(result, rows));
  return replies == nullptr ? absl::OkStatus() : SendWords(replica_, *replies, 0);
}

absl::Status ShardWorker::SendTokens(const StepResult& result, int64_t rows) {
  if (rows == 0) return absl::OkStatus();
  CpuStream host;
  int64_t top_n = result.top_n;
  TESSERA_RETURN_IF_ERROR(replica_.Send(HostView(&top_n, DataType::kI64, 1), 0, host));
  TESSERA_RETURN_IF_ERROR(
      replica_.Send(HostView(result.token_ids.data(), DataType::kI32, rows), 0, host));
  TESSERA_RETURN_IF_ERROR(
      replica_.Send(HostView(result.logprobs.data(), DataType::kF32, rows), 0, host));
  if (top_n > 0) {
    TESSERA_RETURN_IF_ERROR(replica_.Send(
        HostView(result.top_token_ids.data(), DataType::kI32, rows * top_n), 0, host));
    TESSERA_RETURN_IF_ERROR(
        replica_.Send(HostView(result.top_logprobs.data(), DataType::kF32, rows * top_n), 0, host));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> ShardWorker::ReceiveResult(int64_t rows, std::vector<int64_t>* replies) {
  const parallel::ShardPlan& shard = model_.plan();
  const int sender = parallel::ShardPlan::ReplicaRank(0, shard.pp_size - 1, shard.tp_size);
  TESSERA_ASSIGN_OR_RETURN(StepResult result, ReceiveTokens(rows, sender));
  if (replies != nullptr) TESSERA_RETURN_IF_ERROR(RecvWords(replica_, *replies, sender));
  return result;
}

absl::StatusOr<StepResult> ShardWorker::ReceiveTokens(int64_t rows, int sender) {
  StepResult result;
  if (rows == 0) return result;  // the last stage sends no tokens for a step without logits
  CpuStream host;
  int64_t top_n = 0;
  TESSERA_RETURN_IF_ERROR(replica_.Recv(HostView(&top_n, DataType::kI64, 1), sender, host));
  if (top_n < 0 || top_n > 1024) {
    return absl::DataLossError(absl::StrCat("the last stage sent top_n ", top_n));
  }
  result.top_n = static_cast<int32_t>(top_n);
  result.token_ids.resize(static_cast<size_t>(rows));
  result.logprobs.resize(static_cast<size_t>(rows));
  TESSERA_RETURN_IF_ERROR(
      replica_.Recv(HostView(result.token_ids.data(), DataType::kI32, rows), sender, host));
  TESSERA_RETURN_IF_ERROR(
      replica_.Recv(HostView(result.logprobs.data(), DataType::kF32, rows), sender, host));
  if (top_n > 0) {
    result.top_token_ids.resize(static_cast<size_t>(rows * top_n));
    result.top_logprobs.resize(static_cast<size_t>(rows * top_n));
    TESSERA_RETURN_IF_ERROR(replica_.Recv(
        HostView(result.top_token_ids.data(), DataType::kI32, rows * top_n), sender, host));
    TESSERA_RETURN_IF_ERROR(replica_.Recv(
        HostView(result.top_logprobs.data(), DataType::kF32, rows * top_n), sender, host));
  }
  return result;
}

absl::Status ShardWorker::GatherReplies(std::vector<int64_t>& replies) {
  const parallel::ShardPlan& shard = model_.plan();
  if (host_.tp == nullptr) return absl::OkStatus();
  if (shard.tp_rank != 0) return SendWords(*host_.tp, replies, 0);
  for (int peer = 1; peer < shard.tp_size; ++peer) {
    std::vector<int64_t> theirs;
    TESSERA_RETURN_IF_ERROR(RecvWords(*host_.tp, theirs, peer));
    TESSERA_RETURN_IF_ERROR(AppendReplySection(replies, theirs, peer));
  }
  return absl::OkStatus();
}

absl::Status ShardWorker::SendToFirstStage(std::vector<int64_t>& words) {
  if (host_.tp == nullptr || model_.plan().pp_rank != 0) return absl::OkStatus();
  return BroadcastWords(*host_.tp, words);
}

absl::Status ShardWorker::PassDownstream(const std::vector<int64_t>& words) {
  const parallel::ShardPlan& shard = model_.plan();
  if (shard.last_stage()) return absl::OkStatus();
  return SendWords(*host_.pp, words, shard.pp_rank + 1);
}

absl::Status ShardWorker::ReceiveMessage(std::vector<int64_t>& words) {
  const parallel::ShardPlan& shard = model_.plan();
  if (shard.pp_rank > 0) return RecvWords(*host_.pp, words, shard.pp_rank - 1);
  if (host_.tp == nullptr) return absl::InternalError("the leader receives no messages");
  return BroadcastWords(*host_.tp, words);
}

absl::StatusOr<std::unique_ptr<ReplicaExecutor>> ReplicaExecutor::Create(
    ShardWorker& worker, const ReplicaExecutorOptions& options, Clock& clock) {
  if (!worker.is_leader()) {
    return absl::InvalidArgumentError("ReplicaExecutor runs on the replica's rank 0");
  }
  const int stages = worker.pipeline_stages();
  if (options.max_steps_in_flight < 1 || options.max_steps_in_flight > stages) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps in flight must be between 1 and the number of pipeline stages (",
                     stages, "), got ", options.max_steps_in_flight));
  }
  return std::unique_ptr<ReplicaExecutor>(new ReplicaExecutor(worker, options, clock));
}

ReplicaExecutor::~ReplicaExecutor() {
  const absl::Status status = Stop();
  if (!status.ok()) TESSERA_LOG(WARNING) << "stopping the replica's followers: " << status;
}

// Declared before a public method's MutexLock, it runs the handlers whose replies came once the
// lock is released.
class ReplicaExecutor::FinishedRunner {
 public:
  explicit FinishedRunner(ReplicaExecutor& executor) : executor_(executor) {}
  FinishedRunner(const FinishedRunner&) = delete;
  FinishedRunner& operator=(const FinishedRunner&) = delete;
  ~FinishedRunner() { executor_.RunFinished(); }

 private:
  ReplicaExecutor& executor_;
};

void ReplicaExecutor::RunFinished() {
  std::vector<std::pair<PostedReplyHandler, FollowerReplies>> finished;
  {
    absl::MutexLock lock(&mu_);
    finished.swap(finished_);
  }
  for (auto& [done, replies] : finished) done(std::move(replies));
}

absl::Status ReplicaExecutor::UsableLocked() const {
  if (stopped_) return absl::FailedPreconditionError("the replica was stopped");
  return broken_;
}

absl::Status ReplicaExecutor::BreakLocked(absl::Status status) {
  broken_ = status;
  // No reply comes now: every handler still waiting gets the error.
  for (Downstream& step : downstream_) FinishPostedLocked(std::move(step.posted), status);
  FinishPostedLocked(TakePostedLocked(nullptr), status);
  return status;
}

std::vector<PostedReplyHandler> ReplicaExecutor::TakePostedLocked(
    std::vector<std::vector<int64_t>>* commands) {
  std::vector<PostedReplyHandler> handlers;
  for (Posted& p : posted_) {
    if (commands != nullptr) commands->push_back(std::move(p.command));
    handlers.push_back(std::move(p.done));
  }
  posted_.clear();
  return handlers;
}

void ReplicaExecutor::FinishPostedLocked(std::vector<PostedReplyHandler> posted,
                                         const absl::StatusOr<std::vector<int64_t>>& section) {
  if (posted.empty()) return;
  absl::StatusOr<CommandReplies> replies =
      section.ok() ? DecodeReplySection(*section, worker_.replica().size(), posted.size())
                   : section.status();
  HandOutLocked(posted, replies);
}

void ReplicaExecutor::HandOutLocked(std::vector<PostedReplyHandler>& posted,
                                    absl::StatusOr<CommandReplies>& replies) {
  for (size_t i = 0; i < posted.size(); ++i) {
    if (!posted[i]) continue;
    if (replies.ok()) {
      finished_.emplace_back(std::move(posted[i]), std::move((*replies)[i]));
    } else {
      finished_.emplace_back(std::move(posted[i]), replies.status());
    }
  }
}

absl::StatusOr<StepResult> ReplicaExecutor::Execute(const StepPlan& plan) {
  {
    absl::MutexLock lock(&mu_);
    if (!downstream_.empty() || !ready_.empty()) {
      return absl::FailedPreconditionError("Execute while submitted steps are not collected");
    }
  }
  TESSERA_RETURN_IF_ERROR(Submit(plan));
  return Collect();
}

absl::Status ReplicaExecutor::ReceiveOldestLocked() {
  Downstream step = std::move(downstream_.front());
  downstream_.pop_front();
  std::vector<int64_t> section;
  absl::StatusOr<StepResult> result =
      worker_.ReceiveResult(step.rows, step.posted.empty() ? nullptr : &section);
  if (!result.ok()) {
    FinishPostedLocked(std::move(step.posted), result.status());
    return BreakLocked(result.status());
  }
  FinishPostedLocked(std::move(step.posted), section);
  ready_.push_back(*std::move(result));
  return absl::OkStatus();
}

absl::Status ReplicaExecutor::Submit(const StepPlan& plan) {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(UsableLocked());
  if (static_cast<int>(downstream_.size() + ready_.size()) >= max_steps_in_flight_) {
    return absl::FailedPreconditionError(
        absl::StrCat("Submit with ", max_steps_in_flight_, " steps in flight already"));
  }
  std::vector<int64_t> words;
  // The posted commands ride with this step (the leader replies to none of them).
  std::vector<PostedReplyHandler> posted;
  if (worker_.replica().size() > 1) {
    std::vector<std::vector<int64_t>> commands;
    posted = TakePostedLocked(&commands);
    words = EncodeStepPlan(plan, kStep);
    const std::vector<int64_t> batch = EncodeCommandBatch(commands);
    words.insert(words.end(), batch.begin(), batch.end());
    words.push_back(0);  // the reply section, of no entry yet
    if (absl::Status s = worker_.SendToFirstStage(words); !s.ok()) {
      FinishPostedLocked(std::move(posted), s);
      return BreakLocked(s);
    }
    last_sent_ = clock_.MonotonicNow();
  }
  // Before the activations go to the second stage: with max_steps_in_flight steps submitted,
  // the oldest's tokens come back first (the last stage sends them before it takes this plan),
  // then this step's plan goes down.
  auto before_send = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    while (!downstream_.empty() &&
           static_cast<int>(downstream_.size()) + 1 >= max_steps_in_flight_) {
      TESSERA_RETURN_IF_ERROR(ReceiveOldestLocked());
    }
    return worker_.PassDownstream(words);
  };
  std::vector<int64_t> section = {0};
  absl::StatusOr<StepResult> result =
      worker_.RunStep(plan, before_send, posted.empty() ? nullptr : &section);
  if (!result.ok()) {
    FinishPostedLocked(std::move(posted), result.status());
    return BreakLocked(result.status());
  }
  if (worker_.result_from_last_stage()) {
    downstream_.push_back({static_cast<int64_t>(plan.logits_rows.size()), std::move(posted)});
  } else {
    FinishPostedLocked(std::move(posted), section);
    ready_.push_back(*std::move(result));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> ReplicaExecutor::Collect() {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  if (ready_.empty() && downstream_.empty()) {
    return absl::FailedPreconditionError("Collect without a step in flight");
  }
  TESSERA_RETURN_IF_ERROR(UsableLocked());
  if (ready_.empty()) TESSERA_RETURN_IF_ERROR(ReceiveOldestLocked());
  StepResult result = std::move(ready_.front());
  ready_.pop_front();
  return result;
}

absl::Status ReplicaExecutor::SendMessageLocked(std::vector<int64_t>& words) {
  if (!downstream_.empty()) ++drains_;
  while (!downstream_.empty()) TESSERA_RETURN_IF_ERROR(ReceiveOldestLocked());
  absl::Status s = worker_.SendToFirstStage(words);
  if (s.ok()) s = worker_.PassDownstream(words);
  if (!s.ok()) return BreakLocked(s);
  last_sent_ = clock_.MonotonicNow();
  return absl::OkStatus();
}

FollowerReplies ReplicaExecutor::CallLocked(const std::vector<int64_t>* command) {
  std::vector<std::vector<int64_t>> commands;
  std::vector<PostedReplyHandler> posted = TakePostedLocked(&commands);
  if (command != nullptr) commands.push_back(*command);
  std::vector<int64_t> words = {kCommand};
  const std::vector<int64_t> batch = EncodeCommandBatch(commands);
  words.insert(words.end(), batch.begin(), batch.end());
  absl::Status s = SendMessageLocked(words);
  // Each follower answers with a reply section of its own entry.
  std::vector<int64_t> section = {0};
  parallel::Communicator& comm = worker_.replica();
  for (int rank = 1; s.ok() && rank < comm.size(); ++rank) {
    std::vector<int64_t> reply;
    s = RecvWords(comm, reply, rank);
    if (s.ok()) s = AppendReplySection(section, reply, rank);
  }
  if (!s.ok()) {
    FinishPostedLocked(std::move(posted), s);
    return BreakLocked(s);
  }
  absl::StatusOr<CommandReplies> replies =
      DecodeReplySection(section, comm.size(), commands.size());
  HandOutLocked(posted, replies);
  if (!replies.ok()) return replies.status();
  if (command == nullptr) return std::vector<std::vector<int64_t>>{};
  return std::move(replies->back());
}

bool ReplicaExecutor::SetKvWrittenCallback(std::function<void(int32_t layer)> kv_written) {
  absl::MutexLock lock(&mu_);
  observer_.kv_written = std::move(kv_written);
  worker_.SetKvLayerObserver(observer_.kv_written ? &observer_ : nullptr);
  return true;
}

absl::Status ReplicaExecutor::Idle() {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  if (stopped_ || worker_.replica().size() == 1) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(broken_);
  // Posted commands no step took go now (a malformed reply is their handlers' error).
  if (!posted_.empty()) {
    (void)CallLocked(nullptr);
    return broken_;
  }
  if (clock_.MonotonicNow() - last_sent_ < keepalive_interval_) return absl::OkStatus();
  std::vector<int64_t> words = EncodeStepPlan(StepPlan{}, kKeepAlive);
  return SendMessageLocked(words);
}

absl::Status ReplicaExecutor::FlushPosted() {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(UsableLocked());
  if (posted_.empty()) return absl::OkStatus();
  (void)CallLocked(nullptr);
  return broken_;
}

absl::Status ReplicaExecutor::Quiesce() {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(UsableLocked());
  while (!downstream_.empty()) TESSERA_RETURN_IF_ERROR(ReceiveOldestLocked());
  if (!posted_.empty()) (void)CallLocked(nullptr);
  return broken_;
}

absl::Status ReplicaExecutor::Stop() {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  if (stopped_) return absl::OkStatus();
  // The posted commands still run (a cancelled export must stop reading memory first).
  if (broken_.ok() && !posted_.empty()) (void)CallLocked(nullptr);
  stopped_ = true;
  if (worker_.replica().size() == 1 || !broken_.ok()) return broken_;
  std::vector<int64_t> words = EncodeStepPlan(StepPlan{}, kStop);
  return SendMessageLocked(words);
}

FollowerReplies ReplicaExecutor::CallFollowers(const std::vector<int64_t>& command) {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(UsableLocked());
  if (worker_.replica().size() == 1) return std::vector<std::vector<int64_t>>{};
  return CallLocked(&command);
}

void ReplicaExecutor::Post(std::vector<int64_t> command, PostedReplyHandler done) {
  FinishedRunner runner(*this);
  absl::MutexLock lock(&mu_);
  if (absl::Status usable = UsableLocked(); !usable.ok()) {
    if (done) finished_.emplace_back(std::move(done), usable);
    return;
  }
  if (worker_.replica().size() == 1) {
    if (done) finished_.emplace_back(std::move(done), std::vector<std::vector<int64_t>>{});
    return;
  }
  posted_.push_back({std::move(command), std::move(done)});
}

int64_t ReplicaExecutor::pipeline_drains() const {
  absl::MutexLock lock(&mu_);
  return drains_;
}

absl::Status RunFollower(ShardWorker& worker, const FollowerHandler& handler) {
  if (worker.is_leader()) return absl::InvalidArgumentError("RunFollower on the leader");
  const int rank = worker.replica().rank();
  // Runs a batch of commands; this rank's entry of the reply section.
  const auto run = [&](const std::vector<std::vector<int64_t>>& commands,
                       std::vector<int64_t>& section) {
    std::vector<std::vector<int64_t>> replies;
    replies.reserve(commands.size());
    for (const std::vector<int64_t>& c : commands) {
      replies.push_back(handler ? handler(c) : std::vector<int64_t>{});
    }
    AppendReplyEntry(section, rank, replies);
  };
  const auto malformed = [] {
    return absl::DataLossError("a message from the leader is malformed");
  };
  while (true) {
    std::vector<int64_t> words;
    TESSERA_RETURN_IF_ERROR(worker.ReceiveMessage(words));
    if (words.empty()) return malformed();
    if (words[0] == kCommand) {
      TESSERA_RETURN_IF_ERROR(worker.PassDownstream(words));
      size_t at = 1;
      TESSERA_ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> commands,
                               DecodeCommandBatch(words, &at));
      if (at != words.size()) return malformed();
      std::vector<int64_t> section = {0};
      run(commands, section);
      TESSERA_RETURN_IF_ERROR(SendWords(worker.replica(), section, 0));
      continue;
    }
    size_t at = 0;
    int64_t kind = 0;
    TESSERA_ASSIGN_OR_RETURN(StepPlan plan, DecodeStepPlanAt(words, &at, &kind));
    if (kind == kStep) {
      TESSERA_ASSIGN_OR_RETURN(std::vector<std::vector<int64_t>> commands,
                               DecodeCommandBatch(words, &at));
      // The reply section of the ranks upstream ends the message; this rank's entry joins it.
      if (at >= words.size() || words[at] < 0) return malformed();
      std::vector<int64_t> section(words.begin() + static_cast<std::ptrdiff_t>(at), words.end());
      if (!commands.empty()) {
        run(commands, section);
        words.resize(at);
        words.insert(words.end(), section.begin(), section.end());
      }
      // The next stage takes the plan right before this step's activations.
      TESSERA_RETURN_IF_ERROR(worker
                                  .RunStep(
                                      plan, [&] { return worker.PassDownstream(words); },
                                      commands.empty() ? nullptr : &section)
                                  .status());
      continue;
    }
    if (at != words.size()) return malformed();
    if (kind != kStop && kind != kKeepAlive) {
      return absl::DataLossError(absl::StrCat("unknown message kind ", kind));
    }
    TESSERA_RETURN_IF_ERROR(worker.PassDownstream(words));
    if (kind == kStop) return absl::OkStatus();
  }
}

absl::StatusOr<ReplicaRank> CreateReplicaRank(const model::ModelConfig& config,
                                              const model::WeightSource& weights,
                                              kernels::Backend& backend,
                                              parallel::Communicator& replica,
                                              const ReplicaRankOptions& options) {
  const parallel::ParallelConfig& par = options.parallel;
  TESSERA_RETURN_IF_ERROR(parallel::ValidateParallelConfig(config, par));
  if (replica.size() != par.tp_size * par.pp_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a replica of tensor-parallel size ", par.tp_size, " x pipeline-parallel size ",
        par.pp_size, " needs ", par.tp_size * par.pp_size, " ranks, got ", replica.size()));
  }
  if (options.pp_steps_in_flight < 1 || options.pp_steps_in_flight > par.pp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps in flight must be between 1 and the number of pipeline stages (",
                     par.pp_size, "), got ", options.pp_steps_in_flight));
  }
  const int tp_rank = replica.rank() % par.tp_size;
  const int pp_rank = replica.rank() / par.tp_size;
  ReplicaRank rank;
  ModelParallelism parallelism;
  TESSERA_ASSIGN_OR_RETURN(parallelism.plan,
                           parallel::MakeShardPlan(config, par, tp_rank, pp_rank));
  // Split both host groups before making any device group: every rank makes the same
  // collective calls in the same order.
  if (par.tp_size > 1) {
    TESSERA_ASSIGN_OR_RETURN(rank.tp_host, replica.Split(/*color=*/pp_rank, /*key=*/tp_rank));
    parallelism.tp = rank.tp_host.get();
  }
  if (par.pp_size > 1) {
    TESSERA_ASSIGN_OR_RETURN(rank.pp_host, replica.Split(/*color=*/tp_rank, /*key=*/pp_rank));
    parallelism.pp = rank.pp_host.get();
  }
  if (options.device_groups != nullptr) {
    if (rank.tp_host != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(rank.tp_device, options.device_groups(*rank.tp_host, backend));
      parallelism.tp = rank.tp_device.get();
    }
    if (rank.pp_host != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(rank.pp_device, options.device_groups(*rank.pp_host, backend));
      parallelism.pp = rank.pp_device.get();
    }
  }
  TESSERA_ASSIGN_OR_RETURN(
      rank.model, LlamaModel::Create(config, weights, backend, options.model, parallelism));
  TESSERA_ASSIGN_OR_RETURN(
      rank.cache,
      KvCache::Create(rank.model->KvCacheShape(options.num_kv_blocks, options.block_size,
                                               options.kv_cache_dtype),
                      backend));
  const int micro_batches = options.pp_micro_batches > 0 ? options.pp_micro_batches : 1;
  TESSERA_ASSIGN_OR_RETURN(
      rank.worker, ShardWorker::Create(*rank.model, *rank.cache, backend, replica, micro_batches,
                                       {rank.tp_host.get(), rank.pp_host.get()}));
  return rank;
}

}  // namespace tessera::worker
