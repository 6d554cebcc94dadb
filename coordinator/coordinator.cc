#include "coordinator/coordinator.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "coordinator/disaggregated_call.h"

namespace tessera::coordinator {
namespace {

// vLLM's buckets (vllm/v1/metrics/loggers.py), so dashboards built for it read ours unchanged.
const std::vector<double> kTtftBuckets = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                          0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                          20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const std::vector<double> kItlBuckets = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                         0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                         5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                         60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's build_1_2_5_buckets).
std::vector<double> Buckets125(double max) {
  std::vector<double> out;
  for (double scale = 1;; scale *= 10) {
    for (double m : {1.0, 2.0, 5.0}) {
      if (m * scale > max) return out;
      out.push_back(m * scale);
    }
  }
}

// Where the text may be cut without splitting a UTF-8 character: the largest index <= pos that
// does not point at a continuation byte.
size_t Utf8Boundary(const std::string& s, size_t pos) {
  while (pos > 0 && pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

}  // namespace

// One request's stream: reads its ReplicaCall, detokenizes, matches stop strings, records
// metrics, and ends exactly once (OnStreamEnd).
class CoordinatorStream final : public GenerateStream {
 public:
  CoordinatorStream(Coordinator& owner, GenerateRequest request, std::vector<int32_t> prompt,
                    std::shared_ptr<ReplicaEntry> replica, std::unique_ptr<ReplicaCall> call,
                    absl::Time start)
      : owner_(owner),
        request_(std::move(request)),
        prompt_(std::move(prompt)),
        replica_(std::move(replica)),
        call_(std::move(call)),
        decoder_(*owner.tokenizer_, request_.skip_special_tokens),
        start_(start) {
    for (const std::string& s : request_.sampling.stop) {
      max_stop_len_ = std::max(max_stop_len_, s.size());
    }
    if (replica_ != nullptr) replica_->AddInFlight(1);
  }

  ~CoordinatorStream() override {
    if (!ended_) {
      call_->Cancel();
      End(std::nullopt, absl::CancelledError("the client went away"));
    }
  }

  absl::StatusOr<GenerateEvent> Next(absl::Duration timeout) override {
    if (ended_) return absl::OutOfRangeError("the finished event was already returned");
    const absl::Time give_up = absl::Now() + timeout;
    while (true) {
      if (cancelled_.load()) {
        call_->Cancel();
        return Finish(std::nullopt, absl::CancelledError("request cancelled"));
      }
      if (owner_.aborting_.load()) {
        call_->Cancel();
        return Finish(std::nullopt,
                      absl::UnavailableError("the coordinator is shutting down; retry elsewhere"));
      }
      if (replica_ != nullptr && replica_->lost()) {
        call_->Cancel();
        return Finish(std::nullopt,
                      absl::UnavailableError(absl::StrCat(
                          "replica ", replica_->info().name,
                          " was lost (it stopped heartbeating or deregistered); retry the "
                          "request")));
      }
      const absl::Time now = absl::Now();
      if (now >= request_.deadline) {
        call_->Cancel();
        return Finish(std::nullopt, absl::DeadlineExceededError("the request's deadline passed"));
      }
      if (now >= give_up) return absl::DeadlineExceededError("no event yet");
      const absl::Duration wait =
          std::min({owner_.options_.poll_interval, give_up - now, request_.deadline - now});
      absl::StatusOr<ReplicaEvent> event = call_->Next(wait);
      if (absl::IsDeadlineExceeded(event.status())) continue;
      if (!event.ok()) return Finish(std::nullopt, event.status());
      if (event->status.ok() || !event->token_ids.empty() || !event->finished) {
        if (std::optional<GenerateEvent> out = Convert(*event); out.has_value()) return *out;
        continue;
      }
      // Ended early with an error from the replica.
      absl::Status status = event->status;
      if (absl::IsUnavailable(status) && replica_ != nullptr) {
        status = absl::UnavailableError(
            absl::StrCat(ReplicaName(), " failed: ", status.message(), "; retry the request"));
      }
      return Finish(event->finish_reason, std::move(status));
    }
  }

  void Cancel() override { cancelled_ = true; }
  const std::string& request_id() const override { return request_.request_id; }
  const std::vector<int32_t>& prompt_token_ids() const override { return prompt_; }

 private:
  // Turns a replica event into the client's event; nullopt when it adds nothing to send yet.
  std::optional<GenerateEvent> Convert(const ReplicaEvent& event) {
    GenerateEvent out = Base();
    if (completion_tokens_ == 0) cached_tokens_ = event.num_cached_tokens;
    std::optional<model::FinishReason> finish = event.finish_reason;
    absl::Status status = event.status;
    bool stopped = false;
    const absl::Time now = absl::Now();
    for (size_t i = 0; i < event.token_ids.size(); ++i) {
      const int32_t id = event.token_ids[i];
      if (completion_tokens_ == 0) {
        owner_.m_.ttft->Observe(absl::ToDoubleSeconds(now - start_));
      } else {
        owner_.m_.itl->Observe(absl::ToDoubleSeconds(now - last_token_));
      }
      last_token_ = now;
      completion_tokens_++;
      out.token_ids.push_back(id);
      if (i < event.logprobs.size()) out.logprobs.push_back(event.logprobs[i]);
      if (i < event.top_logprobs.size()) out.top_logprobs.push_back(event.top_logprobs[i]);
      held_ += decoder_.Append(id);
      if (MatchStop()) {
        stopped = true;
        break;
      }
    }
    out.completion_tokens = completion_tokens_;
    out.cached_tokens = cached_tokens_;
    if (stopped) {
      call_->Cancel();
      finish = model::FinishReason::kStop;
      status = absl::OkStatus();
    } else if (event.finished) {
      held_ += decoder_.Flush();
      if (max_stop_len_ > 0) MatchStop();  // the flushed tail may complete a stop string
    }
    const bool finished = stopped || event.finished;
    if (event.finished && event.timings.has_value() && status.ok()) {
      const RequestTimings& t = *event.timings;
      owner_.m_.queue_time->Observe(t.queue_seconds);
      owner_.m_.prefill_time->Observe(t.prefill_seconds);
      owner_.m_.decode_time->Observe(t.decode_seconds);
      owner_.m_.inference_time->Observe(t.prefill_seconds + t.decode_seconds);
      if (t.kv_transfer_seconds > 0) owner_.m_.kv_transfer_time->Observe(t.kv_transfer_seconds);
    }
    if (finished) {
      out.text = std::move(held_);
      held_.clear();
      out.finished = true;
      out.finish_reason = finish.value_or(model::FinishReason::kAbort);
      out.status = status;
      End(out.finish_reason, out.status);
      return out;
    }
    // Hold back what could still be the start of a stop string.
    const size_t keep = max_stop_len_ > 0 ? max_stop_len_ - 1 : 0;
    const size_t cut = held_.size() > keep ? Utf8Boundary(held_, held_.size() - keep) : 0;
    out.text = held_.substr(0, cut);
    held_.erase(0, cut);
    if (out.token_ids.empty() && out.text.empty()) return std::nullopt;
    return out;
  }

  // Looks for a stop string in the held-back text; on a match truncates it there.
  bool MatchStop() {
    if (max_stop_len_ == 0) return false;
    size_t best = std::string::npos;
    size_t best_len = 0;
    for (const std::string& s : request_.sampling.stop) {
      const size_t pos = held_.find(s);
      if (pos != std::string::npos && pos < best) {
        best = pos;
        best_len = s.size();
      }
    }
    if (best == std::string::npos) return false;
    held_.resize(request_.include_stop_str_in_output ? best + best_len : best);
    return true;
  }

  GenerateEvent Base() const {
    GenerateEvent e;
    e.prompt_tokens = static_cast<int32_t>(prompt_.size());
    e.completion_tokens = completion_tokens_;
    e.cached_tokens = cached_tokens_;
    return e;
  }

  // Ends the stream with a final event that carries whatever text was held back.
  GenerateEvent Finish(std::optional<model::FinishReason> finish, absl::Status status) {
    GenerateEvent out = Base();
    if (!ended_) {
      held_ += decoder_.Flush();
      out.text = std::move(held_);
      held_.clear();
    }
    out.finished = true;
    out.finish_reason = finish.value_or(model::FinishReason::kAbort);
    out.status = std::move(status);
    End(out.finish_reason, out.status);
    return out;
  }

  std::string ReplicaName() const {
    return replica_ != nullptr ? absl::StrCat("replica ", replica_->info().name) : "the replica";
  }

  // Metrics and bookkeeping at the end (once).
  void End(std::optional<model::FinishReason> finish, const absl::Status& status) {
    if (ended_) return;
    ended_ = true;
    Coordinator::Metrics& m = owner_.m_;
    const double e2e = absl::ToDoubleSeconds(absl::Now() - start_);
    m.prompt_tokens->Increment(static_cast<double>(prompt_.size()));
    m.generation_tokens->Increment(completion_tokens_);
    if (status.ok()) {
      m.request_success
          ->WithLabels(
              {owner_.options_.model.name,
               std::string(model::FinishReasonName(finish.value_or(model::FinishReason::kAbort)))})
          .Increment();
      m.e2e->Observe(e2e);
      m.request_prompt_tokens->Observe(static_cast<double>(prompt_.size()));
      m.request_generation_tokens->Observe(completion_tokens_);
    } else {
      m.failed
          ->WithLabels(
              {owner_.options_.model.name, std::string(absl::StatusCodeToString(status.code()))})
          .Increment();
    }
    if (replica_ != nullptr && (completion_tokens_ > 0 || status.ok())) {
      replica_->prefix_index().Insert(
          PromptBlockChain(prompt_, replica_->info().block_size, request_.cache_salt));
    }
    if (replica_ != nullptr) replica_->AddInFlight(-1);
    owner_.OnStreamEnd();
  }

  Coordinator& owner_;
  const GenerateRequest request_;
  const std::vector<int32_t> prompt_;
  std::shared_ptr<ReplicaEntry> replica_;
  std::unique_ptr<ReplicaCall> call_;
  model::IncrementalDecoder decoder_;
  const absl::Time start_;
  absl::Time last_token_;
  std::string held_;  // decoded text not yet sent (held back for stop-string matching)
  size_t max_stop_len_ = 0;
  int32_t completion_tokens_ = 0;
  int32_t cached_tokens_ = 0;
  bool ended_ = false;  // reader thread (and destructor)
  std::atomic<bool> cancelled_{false};
};

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(
    CoordinatorOptions options, std::unique_ptr<model::Tokenizer> tokenizer,
    std::optional<model::ChatTemplate> chat, ReplicaConnector& connector, Clock& clock) {
  if (tokenizer == nullptr) return absl::InvalidArgumentError("the coordinator needs a tokenizer");
  if (options.model.name.empty()) return absl::InvalidArgumentError("model name must be set");
  if (options.model.max_model_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_model_len must be at least 2, got ", options.model.max_model_len));
  }
  if (tokenizer->vocab_size() > options.model.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("the tokenizer has ", tokenizer->vocab_size(),
                                                   " ids but the model only ",
                                                   options.model.vocab_size));
  }
  if (options.max_queued_requests < 0) {
    return absl::InvalidArgumentError("max_queued_requests must not be negative");
  }
  options.model.has_chat_template = chat.has_value();
  options.model.tool_call_parser =
      options.tool_call_parser.has_value()
          ? *options.tool_call_parser
          : std::string(chat.has_value() ? chat->tool_call_parser() : "");
  options.model.reasoning_parser =
      options.reasoning_parser.has_value()
          ? *options.reasoning_parser
          : std::string(chat.has_value() ? chat->reasoning_parser() : "");
  options.model.created_unix_s = absl::ToUnixSeconds(clock.Now());
  options.registry.model_name = options.model.name;
  options.registry.vocab_size = options.model.vocab_size;
  auto coordinator = std::unique_ptr<Coordinator>(
      new Coordinator(std::move(options), std::move(tokenizer), std::move(chat), connector, clock));
  coordinator->lease_thread_ = std::thread([c = coordinator.get()] { c->LeaseLoop(); });
  return coordinator;
}

Coordinator::Coordinator(CoordinatorOptions options, std::unique_ptr<model::Tokenizer> tokenizer,
                         std::optional<model::ChatTemplate> chat, ReplicaConnector& connector,
                         Clock& clock)
    : options_(std::move(options)),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      registry_(options_.registry, connector, clock),
      router_(options_.router) {
  RegisterMetrics();
}

Coordinator::~Coordinator() {
  aborting_ = true;
  draining_ = true;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (lease_thread_.joinable()) lease_thread_.join();
}

void Coordinator::RegisterMetrics() {
  const std::string& name = options_.model.name;
  const std::vector<std::string> model_label = {"model_name"};
  const std::vector<std::string> engine_labels = {"model_name", "engine"};
  auto per_replica = [this, name](auto read) {
    return [this, name, read]() {
      std::vector<std::pair<std::vector<std::string>, double>> out;
      for (const auto& r : registry_.Live()) {
        out.push_back({{name, r->info().name}, static_cast<double>(read(*r))});
      }
      return out;
    };
  };
  metrics_.AddGaugeCallback(
      "vllm:num_requests_running", "Number of requests in model execution batches.", engine_labels,
      per_replica([](const ReplicaEntry& r) { return r.load().num_requests_running; }));
  metrics_.AddGaugeCallback(
      "vllm:num_requests_waiting", "Number of requests waiting to be processed.", engine_labels,
      per_replica([](const ReplicaEntry& r) { return r.load().num_requests_waiting; }));
  metrics_.AddGaugeCallback(
      "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", engine_labels,
      per_replica([](const ReplicaEntry& r) {
        const ReplicaLoad l = r.load();
        return l.kv_blocks_total > 0 ? 1.0 - static_cast<double>(l.kv_blocks_free) /
                                                 static_cast<double>(l.kv_blocks_total)
                                     : 0.0;
      }));
  m_.preemptions =
      &metrics_.AddCounter("vllm:num_preemptions_total",
                           "Cumulative number of preemption from the engine.", engine_labels);
  m_.prefix_cache_queries = &metrics_.AddCounter(
      "vllm:prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.", engine_labels);
  m_.prefix_cache_hits = &metrics_.AddCounter(
      "vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
      engine_labels);
  m_.prompt_tokens = &metrics_
                          .AddCounter("vllm:prompt_tokens_total",
                                      "Number of prefill tokens processed.", model_label)
                          .WithLabels({name});
  m_.generation_tokens = &metrics_
                              .AddCounter("vllm:generation_tokens_total",
                                          "Number of generation tokens processed.", model_label)
                              .WithLabels({name});
  m_.request_success = &metrics_.AddCounter("vllm:request_success_total",
                                            "Count of successfully processed requests.",
                                            {"model_name", "finished_reason"});
  m_.ttft =
      &metrics_
           .AddHistogram("vllm:time_to_first_token_seconds",
                         "Histogram of time to first token in seconds.", model_label, kTtftBuckets)
           .WithLabels({name});
  m_.itl =
      &metrics_
           .AddHistogram("vllm:inter_token_latency_seconds",
                         "Histogram of inter-token latency in seconds.", model_label, kItlBuckets)
           .WithLabels({name});
  m_.e2e =
      &metrics_
           .AddHistogram("vllm:e2e_request_latency_seconds",
                         "Histogram of e2e request latency in seconds.", model_label, kE2eBuckets)
           .WithLabels({name});
  const auto phase = [&](const char* metric, const char* help, const std::vector<double>& buckets) {
    return &metrics_.AddHistogram(metric, help, model_label, buckets).WithLabels({name});
  };
  m_.queue_time = phase("vllm:request_queue_time_seconds",
                        "Histogram of time spent in WAITING phase for request.", kE2eBuckets);
  m_.prefill_time = phase("vllm:request_prefill_time_seconds",
                          "Histogram of time spent in PREFILL phase for request.", kE2eBuckets);
  m_.decode_time = phase("vllm:request_decode_time_seconds",
                         "Histogram of time spent in DECODE phase for request.", kE2eBuckets);
  m_.inference_time = phase("vllm:request_inference_time_seconds",
                            "Histogram of time spent in RUNNING phase for request.", kE2eBuckets);
  m_.kv_transfer_time = phase("tessera_kv_transfer_seconds",
                              "Histogram of the time a disaggregated request's KV took to move "
                              "from the prefill to the decode replica.",
                              kTtftBuckets);
  const std::vector<double> token_buckets = Buckets125(options_.model.max_model_len);
  m_.request_prompt_tokens =
      &metrics_
           .AddHistogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                         model_label, token_buckets)
           .WithLabels({name});
  m_.request_generation_tokens =
      &metrics_
           .AddHistogram("vllm:request_generation_tokens", "Number of generation tokens processed.",
                         model_label, token_buckets)
           .WithLabels({name});
  metrics_.AddGaugeCallback("tessera_requests_in_flight",
                            "Requests admitted by the coordinator and not yet finished.",
                            model_label, [this, name]() {
                              return std::vector<std::pair<std::vector<std::string>, double>>{
                                  {{name}, static_cast<double>(in_flight_.load())}};
                            });
  metrics_.AddGaugeCallback(
      "tessera_replica_requests_in_flight", "Requests routed to a replica and not yet finished.",
      {"replica", "role"}, [this]() {
        std::vector<std::pair<std::vector<std::string>, double>> out;
        for (const auto& r : registry_.Live()) {
          out.push_back({{r->info().name, r->info().role}, static_cast<double>(r->in_flight())});
        }
        return out;
      });
  metrics_.AddGaugeCallback(
      "tessera_replicas", "Replicas in rotation, by role.", {"role"}, [this]() {
        double mixed = 0, prefill = 0, decode = 0;
        for (const auto& r : registry_.Live()) {
          const std::string& role = r->info().role;
          (role == "prefill" ? prefill : role == "decode" ? decode : mixed) += 1;
        }
        return std::vector<std::pair<std::vector<std::string>, double>>{
            {{"mixed"}, mixed}, {{"prefill"}, prefill}, {{"decode"}, decode}};
      });
  metrics_.AddGaugeCallback(
      "tessera_kv_blocks", "KV-cache blocks of the replicas in rotation, by state.",
      {"replica", "state"}, [this]() {
        std::vector<std::pair<std::vector<std::string>, double>> out;
        for (const auto& r : registry_.Live()) {
          // The states add up to the total: free (no content), cached (evictable prefix
          // blocks), reserved (decode: KV arriving), exporting (prefill: KV being sent), in use.
          const ReplicaLoad l = r->load();
          const std::string& n = r->info().name;
          const int64_t in_use =
              l.kv_blocks_total - l.kv_blocks_free - l.kv_blocks_reserved - l.kv_blocks_exporting;
          out.push_back({{n, "free"}, static_cast<double>(l.kv_blocks_free - l.kv_blocks_cached)});
          out.push_back({{n, "cached"}, static_cast<double>(l.kv_blocks_cached)});
          out.push_back({{n, "reserved"}, static_cast<double>(l.kv_blocks_reserved)});
          out.push_back({{n, "exporting"}, static_cast<double>(l.kv_blocks_exporting)});
          out.push_back({{n, "in_use"}, static_cast<double>(in_use)});
        }
        return out;
      });
  m_.rejected = &metrics_.AddCounter("tessera_requests_rejected_total",
                                     "Requests refused before reaching a replica, by reason.",
                                     {"model_name", "reason"});
  m_.failed = &metrics_.AddCounter("tessera_requests_failed_total",
                                   "Admitted requests that ended with an error, by status code.",
                                   {"model_name", "code"});
  m_.disaggregated =
      &metrics_
           .AddCounter("tessera_disaggregated_requests_total",
                       "Requests served by a prefill and a decode replica.", {"model_name"})
           .WithLabels({name});
  m_.kv_recoveries =
      &metrics_.AddCounter("tessera_disaggregated_recoveries_total",
                           "Disaggregated requests placed again after a failure, by what failed.",
                           {"model_name", "reason"});
  m_.kv_bytes = &metrics_.AddCounter("tessera_kv_transfer_bytes_total",
                                     "KV-cache bytes moved between replicas, by direction.",
                                     {"replica", "direction"});
  m_.kv_failures = &metrics_.AddCounter(
      "tessera_kv_transfer_failures_total",
      "KV transfers that failed (send), writes refused by a decode replica (refused) and "
      "transfers whose checksums did not match (checksum).",
      {"replica", "kind"});
  m_.pipeline_drains = &metrics_.AddCounter(
      "tessera_pipeline_drains_total",
      "Messages between a pipelined replica's steps that waited for its steps in flight.",
      {"replica"});
  m_.lease_expirations =
      &metrics_
           .AddCounter("tessera_replica_lease_expirations_total",
                       "Replicas taken out of rotation for missed heartbeats.", {})
           .WithLabels({});
}

void Coordinator::LeaseLoop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), options_.lease_check_interval)) return;
    }
    const std::vector<std::string> expired = registry_.ExpireLeases();
    m_.lease_expirations->Increment(static_cast<double>(expired.size()));
  }
}

absl::StatusOr<std::shared_ptr<ReplicaEntry>> Coordinator::RegisterReplica(ReplicaInfo info) {
  return registry_.Register(std::move(info));
}

bool Coordinator::Heartbeat(const std::string& replica_id, const ReplicaLoad& load,
                            std::vector<std::string>* kv_peers, std::vector<uint64_t>* kv_leases) {
  if (!registry_.Heartbeat(replica_id, load)) return false;
  if (kv_peers != nullptr || kv_leases != nullptr) {
    const std::vector<std::shared_ptr<ReplicaEntry>> live = registry_.Live();
    const auto self = std::find_if(live.begin(), live.end(),
                                   [&](const auto& r) { return r->id() == replica_id; });
    if (self != live.end() && (*self)->info().role == "prefill" && kv_peers != nullptr) {
      for (const auto& r : Pool(live, "decode")) {
        for (const std::string& d : r->info().kv_descriptors) {
          if (!d.empty()) kv_peers->push_back(d);
        }
      }
    }
    if (self != live.end() && kv_leases != nullptr) *kv_leases = (*self)->held_kv();
  }
  // Turn the replica's cumulative counters into increments of ours.
  std::string name = replica_id.substr(0, replica_id.rfind('#'));
  ReplicaLoad previous;
  {
    absl::MutexLock lock(&mu_);
    auto [it, inserted] = last_load_.try_emplace(replica_id, ReplicaLoad{});
    previous = it->second;
    it->second = load;
  }
  auto add = [&](Family<Counter>* family, int64_t now, int64_t before) {
    if (now > before) {
      family->WithLabels({options_.model.name, name}).Increment(static_cast<double>(now - before));
    }
  };
  add(m_.preemptions, load.preemptions_total, previous.preemptions_total);
  add(m_.prefix_cache_queries, load.prefix_cache_queries_total,
      previous.prefix_cache_queries_total);
  add(m_.prefix_cache_hits, load.prefix_cache_hits_total, previous.prefix_cache_hits_total);
  auto add_kv = [&](Family<Counter>* family, const char* label, int64_t now, int64_t before) {
    if (now > before)
      family->WithLabels({name, label}).Increment(static_cast<double>(now - before));
  };
  add_kv(m_.kv_bytes, "sent", load.kv_bytes_sent, previous.kv_bytes_sent);
  add_kv(m_.kv_bytes, "received", load.kv_bytes_received, previous.kv_bytes_received);
  add_kv(m_.kv_failures, "send", load.kv_transfers_failed, previous.kv_transfers_failed);
  add_kv(m_.kv_failures, "refused", load.kv_writes_refused, previous.kv_writes_refused);
  add_kv(m_.kv_failures, "checksum", load.kv_checksum_failures, previous.kv_checksum_failures);
  if (load.pipeline_drains_total > previous.pipeline_drains_total) {
    m_.pipeline_drains->WithLabels({name}).Increment(
        static_cast<double>(load.pipeline_drains_total - previous.pipeline_drains_total));
  }
  return true;
}

void Coordinator::DeregisterReplica(const std::string& replica_id) {
  registry_.Deregister(replica_id);
  absl::MutexLock lock(&mu_);
  last_load_.erase(replica_id);
}

bool Coordinator::Ready() const {
  if (draining_.load()) return false;
  for (const auto& r : registry_.Live()) {
    if (!r->lost()) return true;
  }
  return false;
}

absl::Status Coordinator::ValidateRequest(const GenerateRequest& request,
                                          const std::vector<int32_t>& prompt) const {
  TESSERA_RETURN_IF_ERROR(
      model::ValidateSamplingParams(request.sampling, options_.model.vocab_size));
  if (prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (size_t i = 0; i < prompt.size(); ++i) {
    if (prompt[i] < 0 || prompt[i] >= options_.model.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", prompt[i], " at position ", i,
                       " is outside the vocabulary [0, ", options_.model.vocab_size, ")"));
    }
  }
  const int64_t total = static_cast<int64_t>(prompt.size()) + request.sampling.max_tokens;
  if (total > options_.model.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens: the prompt (", prompt.size(), " tokens) plus max_tokens (",
                     request.sampling.max_tokens, ") is ", total,
                     " tokens, more than the model's context of ", options_.model.max_model_len));
  }
  if (static_cast<int32_t>(request.sampling.stop.size()) > options_.max_stop_strings) {
    return absl::InvalidArgumentError(absl::StrCat("stop: at most ", options_.max_stop_strings,
                                                   " stop strings, got ",
                                                   request.sampling.stop.size()));
  }
  for (const std::string& s : request.sampling.stop) {
    if (static_cast<int32_t>(s.size()) > options_.max_stop_string_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop: a stop string is ", s.size(),
                                                     " bytes, more than the limit of ",
                                                     options_.max_stop_string_bytes));
    }
  }
  if (request.cache_salt.size() > 1024) {
    return absl::InvalidArgumentError("cache_salt: longer than 1024 bytes");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<GenerateStream>> Coordinator::Generate(GenerateRequest request) {
  const absl::Time start = absl::Now();
  const std::string& name = options_.model.name;
  std::vector<int32_t> prompt;
  if (request.prompt_token_ids.has_value()) {
    prompt = std::move(*request.prompt_token_ids);
    request.prompt_token_ids.reset();
  } else {
    absl::StatusOr<std::vector<int32_t>> ids =
        tokenizer_->Encode(request.prompt_text, request.add_special_tokens);
    if (!ids.ok()) {
      m_.rejected->WithLabels({name, "invalid"}).Increment();
      return absl::InvalidArgumentError(absl::StrCat("prompt: ", ids.status().message()));
    }
    prompt = std::move(*ids);
  }
  if (absl::Status s = ValidateRequest(request, prompt); !s.ok()) {
    m_.rejected->WithLabels({name, "invalid"}).Increment();
    return s;
  }
  if (draining_.load()) {
    m_.rejected->WithLabels({name, "draining"}).Increment();
    return absl::UnavailableError("the coordinator is draining and accepts no new requests");
  }
  const std::vector<std::shared_ptr<ReplicaEntry>> live = registry_.Live();
  if (live.empty()) {
    m_.rejected->WithLabels({name, "no_replica"}).Increment();
    return absl::UnavailableError(
        absl::StrCat("no replica serving ", name, " is registered yet; retry later"));
  }
  int64_t capacity = options_.max_queued_requests;
  for (const auto& r : live) capacity += std::max<int32_t>(r->info().max_num_seqs, 1);
  if (in_flight_.fetch_add(1) >= capacity) {
    in_flight_--;
    m_.rejected->WithLabels({name, "overloaded"}).Increment();
    return absl::ResourceExhaustedError(absl::StrCat(
        "the server is overloaded: ", capacity,
        " requests are already in flight (running capacity of the replicas plus a queue of ",
        options_.max_queued_requests, "); retry later"));
  }
  if (request.request_id.empty()) {
    request.request_id = absl::StrCat("cmpl-", next_request_.fetch_add(1));
  }
  ReplicaRequest replica_request;
  replica_request.request_id = request.request_id;
  replica_request.prompt = prompt;
  replica_request.sampling = request.sampling;
  replica_request.sampling.stop.clear();
  replica_request.cache_salt = request.cache_salt;
  replica_request.priority = request.priority;
  replica_request.deadline = request.deadline;
  absl::Status last_error;
  // Disaggregated when both pools have a live replica; otherwise mixed replicas serve whole
  // requests (and, when there are none, any replica does: every role can run a whole request).
  if (!Pool(live, "prefill").empty() && !Pool(live, "decode").empty()) {
    DisaggregationOptions d;
    d.max_placement_attempts = options_.max_route_attempts;
    d.poll_interval = options_.poll_interval;
    d.on_recovery = [this, name](const std::string& reason) {
      m_.kv_recoveries->WithLabels({name, reason}).Increment();
    };
    absl::StatusOr<std::unique_ptr<DisaggregatedCall>> call =
        DisaggregatedCall::Start(registry_, router_, replica_request, std::move(d));
    if (call.ok()) {
      m_.disaggregated->Increment();
      return std::unique_ptr<GenerateStream>(new CoordinatorStream(
          *this, std::move(request), std::move(prompt), nullptr, *std::move(call), start));
    }
    last_error = call.status();
    TESSERA_LOG(WARNING) << "request " << request.request_id
                         << " could not be disaggregated: " << last_error;
    if (!absl::IsUnavailable(last_error)) {
      in_flight_--;
      m_.rejected
          ->WithLabels({name, absl::IsInvalidArgument(last_error) ? "invalid" : "replica_error"})
          .Increment();
      return last_error;
    }
  }
  std::vector<std::shared_ptr<ReplicaEntry>> whole = Pool(live, "mixed");
  if (whole.empty()) whole = live;
  // Route, retrying on another replica when one refuses before the first token.
  std::vector<const ReplicaEntry*> tried;
  const int64_t total = static_cast<int64_t>(prompt.size()) + request.sampling.max_tokens;
  for (int attempt = 0; attempt < options_.max_route_attempts; ++attempt) {
    RouteChoice choice = router_.Pick(whole, prompt, total, request.cache_salt, tried);
    if (choice.replica == nullptr) break;
    tried.push_back(choice.replica.get());
    absl::StatusOr<std::unique_ptr<ReplicaCall>> call =
        choice.replica->client().Generate(replica_request);
    if (call.ok()) {
      return std::unique_ptr<GenerateStream>(new CoordinatorStream(
          *this, std::move(request), std::move(prompt), choice.replica, std::move(*call), start));
    }
    last_error = call.status();
    if (!absl::IsUnavailable(last_error) && !absl::IsResourceExhausted(last_error)) break;
    TESSERA_LOG(WARNING) << "replica " << choice.replica->info().name << " refused "
                         << request.request_id << ": " << last_error;
  }
  in_flight_--;
  if (last_error.ok()) {
    m_.rejected->WithLabels({name, "no_replica"}).Increment();
    return absl::UnavailableError(absl::StrCat("no live replica of ", name, " can hold ", total,
                                               " tokens (prompt plus max_tokens); retry later"));
  }
  m_.rejected->WithLabels({name, absl::IsInvalidArgument(last_error) ? "invalid" : "replica_error"})
      .Increment();
  return last_error;
}

void Coordinator::OnStreamEnd() { in_flight_--; }

absl::Status Coordinator::Drain(absl::Duration timeout) {
  draining_ = true;
  const absl::Time give_up = absl::Now() + timeout;
  while (in_flight_.load() > 0 && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(20));
  const int64_t left = in_flight_.load();
  if (left == 0) return absl::OkStatus();
  aborting_ = true;
  return absl::DeadlineExceededError(absl::StrCat(left, " requests were still in flight after ",
                                                  absl::FormatDuration(timeout),
                                                  " of draining; they end with UNAVAILABLE"));
}

absl::StatusOr<std::string> Coordinator::ApplyChatTemplate(
    absl::Span<const model::ChatMessage> messages,
    const model::ChatTemplateOptions& options) const {
  if (!chat_.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", options_.model.name,
        " has no chat template (tokenizer_config.json has no chat_template); use completions"));
  }
  return chat_->Apply(messages, options);
}

absl::StatusOr<std::vector<int32_t>> Coordinator::Tokenize(absl::string_view text,
                                                           bool add_special_tokens) const {
  return tokenizer_->Encode(text, add_special_tokens);
}

absl::StatusOr<std::string> Coordinator::Detokenize(absl::Span<const int32_t> ids,
                                                    bool skip_special_tokens) const {
  return tokenizer_->Decode(ids, skip_special_tokens);
}

}  // namespace tessera::coordinator
