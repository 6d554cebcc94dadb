// KServe v2 / Triton gRPC client: one ModelStreamInfer call per request, with the text-generation
// tensors of coordinator/api/kserve_schema.h — input_ids (INT32), stream, sampling_parameters
// (JSON) — and output_ids as the only output, so every streamed response carries the ids of
// its tokens and no text.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/client.h"
#include "common/net.h"
#include "common/rpc/grpc_status.h"
#include "grpcpp/grpcpp.h"
#include "inference/grpc_service.grpc.pb.h"
#include "nlohmann/json.hpp"

namespace tessera::bench {
namespace {

using inference::GRPCInferenceService;

// Several HTTP/2 connections, so that hundreds of streams are not all multiplexed on one.
constexpr int kChannels = 4;

std::chrono::system_clock::time_point Deadline(absl::Duration timeout) {
  return absl::ToChronoTime(absl::Now() + timeout);
}

class KServeClient final : public RequestClient {
 public:
  explicit KServeClient(ClientOptions options)
      : options_(std::move(options)), address_(HostPort(options_.host, options_.port)) {
    for (int i = 0; i < kChannels; ++i) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
      args.SetMaxReceiveMessageSize(-1);
      stubs_.push_back(GRPCInferenceService::NewStub(
          grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args)));
    }
  }

  // The API key as the "authorization" metadata (the coordinator's --api-key).
  void Authorize(grpc::ClientContext& context) const {
    if (!options_.api_key.empty()) {
      context.AddMetadata("authorization", absl::StrCat("Bearer ", options_.api_key));
    }
  }

  // An UNAUTHENTICATED answer, said as what to do about it.
  absl::Status KeyError(const grpc::Status& status) const {
    return absl::UnauthenticatedError(
        absl::StrCat("KServe gRPC server at ", address_,
                     options_.api_key.empty() ? " needs an API key: --api-key or $OPENAI_API_KEY"
                                              : " refused the API key given",
                     " (", status.error_message(), ")"));
  }

  absl::Status Probe() {
    GRPCInferenceService::Stub& stub = *stubs_[0];
    {
      grpc::ClientContext context;
      Authorize(context);
      context.set_deadline(Deadline(options_.connect_timeout));
      context.set_wait_for_ready(false);  // a refused connection fails at once
      inference::ServerReadyRequest request;
      inference::ServerReadyResponse response;
      const grpc::Status status = stub.ServerReady(&context, request, &response);
      if (!status.ok()) {
        return absl::UnavailableError(
            absl::StrCat("KServe gRPC server at ", address_, " cannot be reached: ",
                         rpc::GrpcCodeName(status.error_code()), ": ", status.error_message()));
      }
      if (!response.ready()) {
        return absl::UnavailableError(
            absl::StrCat("KServe gRPC server at ", address_, " is not ready"));
      }
    }
    info_.model = options_.model;
    if (info_.model.empty()) {
      grpc::ClientContext context;
      Authorize(context);
      context.set_deadline(Deadline(options_.connect_timeout));
      inference::RepositoryIndexRequest request;
      inference::RepositoryIndexResponse response;
      const grpc::Status status = stub.RepositoryIndex(&context, request, &response);
      if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) return KeyError(status);
      if (!status.ok()) return rpc::FromGrpcStatus("RepositoryIndex", status);
      if (response.models().empty()) {
        return absl::NotFoundError(absl::StrCat("the server at ", address_, " lists no model"));
      }
      info_.model = response.models(0).name();
    }
    grpc::ClientContext context;
    Authorize(context);
    context.set_deadline(Deadline(options_.connect_timeout));
    inference::ModelConfigRequest request;
    request.set_name(info_.model);
    inference::ModelConfigResponse response;
    const grpc::Status status = stub.ModelConfig(&context, request, &response);
    if (status.error_code() == grpc::StatusCode::UNAUTHENTICATED) return KeyError(status);
    if (!status.ok()) {
      return absl::NotFoundError(
          absl::StrCat("model '", info_.model, "' at ", address_, ": ", status.error_message()));
    }
    const auto& parameters = response.config().parameters();
    int64_t value = 0;
    if (auto it = parameters.find("vocab_size");
        it != parameters.end() && absl::SimpleAtoi(it->second.string_value(), &value)) {
      info_.vocab_size = value;
    }
    if (auto it = parameters.find("max_model_len");
        it != parameters.end() && absl::SimpleAtoi(it->second.string_value(), &value)) {
      info_.max_model_len = value;
    }
    return absl::OkStatus();
  }

  const ServerInfo& info() const override { return info_; }
  std::string Describe() const override { return absl::StrCat("tessera-grpc ", address_); }

  RequestRecord Send(const RequestSpec& spec, absl::Time run_start) override {
    const uint64_t n = next_.fetch_add(1);
    GRPCInferenceService::Stub& stub = *stubs_[n % stubs_.size()];
    const inference::ModelInferRequest request = MakeRequest(spec, absl::StrCat("bench-", n));
    RequestRecord record;
    ResponseTimer timer(*options_.clock, run_start, static_cast<int64_t>(spec.prompt.size()),
                        &record);
    grpc::ClientContext context;
    Authorize(context);
    context.set_deadline(Deadline(options_.request_timeout));
    std::unique_ptr<
        grpc::ClientReaderWriter<inference::ModelInferRequest, inference::ModelStreamInferResponse>>
        stream = stub.ModelStreamInfer(&context);
    if (!stream->Write(request)) {
      const grpc::Status status = stream->Finish();
      timer.Fail(absl::StrCat(
          "ModelStreamInfer: cannot send the request: ", rpc::GrpcCodeName(status.error_code()),
          ": ", status.error_message()));
      return record;
    }
    stream->WritesDone();
    inference::ModelStreamInferResponse response;
    bool final = false;
    std::string error;
    while (stream->Read(&response)) {
      if (!response.error_message().empty()) {
        error = response.error_message();
        timer.OnResponse(0);
        continue;  // read on to the end of the call
      }
      const inference::ModelInferResponse& infer = response.infer_response();
      int64_t tokens = 0;
      for (int i = 0; i < infer.outputs_size(); ++i) {
        if (infer.outputs(i).name() != "output_ids") continue;
        if (i < infer.raw_output_contents_size()) {
          tokens = static_cast<int64_t>(infer.raw_output_contents(i).size() / 4);
        } else {
          tokens = infer.outputs(i).contents().int_contents_size();
        }
      }
      timer.OnResponse(tokens);
      auto it = infer.parameters().find("triton_final_response");
      if (it != infer.parameters().end() && it->second.bool_param()) final = true;
    }
    const grpc::Status status = stream->Finish();
    if (!error.empty()) {
      timer.Fail(absl::StrCat("ModelStreamInfer: ", error));
    } else if (!status.ok()) {
      timer.Fail(absl::StrCat("ModelStreamInfer: ", rpc::GrpcCodeName(status.error_code()), ": ",
                              status.error_message()));
    } else if (!final) {
      timer.Fail("ModelStreamInfer: the call ended before the final response");
    } else {
      timer.Succeed();
    }
    return record;
  }

 private:
  inference::ModelInferRequest MakeRequest(const RequestSpec& spec, const std::string& id) const {
    inference::ModelInferRequest request;
    request.set_model_name(info_.model);
    request.set_id(id);
    auto* ids = request.add_inputs();
    ids->set_name("input_ids");
    ids->set_datatype("INT32");
    ids->add_shape(static_cast<int64_t>(spec.prompt.size()));
    ids->mutable_contents()->mutable_int_contents()->Add(spec.prompt.begin(), spec.prompt.end());
    auto* stream = request.add_inputs();
    stream->set_name("stream");
    stream->set_datatype("BOOL");
    stream->add_shape(1);
    stream->mutable_contents()->add_bool_contents(true);
    nlohmann::json sampling = {{"max_tokens", spec.output_len},
                               {"temperature", options_.temperature},
                               {"ignore_eos", options_.ignore_eos}};
    if (!options_.structured_outputs.empty()) {  // validated by ValidateBenchConfig
      sampling["structured_outputs"] =
          nlohmann::json::parse(options_.structured_outputs, nullptr, /*allow_exceptions=*/false);
    }
    auto* params = request.add_inputs();
    params->set_name("sampling_parameters");
    params->set_datatype("BYTES");
    params->add_shape(1);
    params->mutable_contents()->add_bytes_contents(sampling.dump());
    request.add_outputs()->set_name("output_ids");
    return request;
  }

  const ClientOptions options_;
  const std::string address_;
  std::vector<std::unique_ptr<GRPCInferenceService::Stub>> stubs_;
  ServerInfo info_;  // set by Probe before any Send
  std::atomic<uint64_t> next_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<RequestClient>> CreateKServeClient(const ClientOptions& options) {
  auto client = std::make_unique<KServeClient>(options);
  absl::Status status = client->Probe();
  if (!status.ok()) return status;
  return client;
}

}  // namespace tessera::bench
