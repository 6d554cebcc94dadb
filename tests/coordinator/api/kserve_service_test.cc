// KServeServer over FakeFrontend, driven through gRPC on loopback with the generated C++ stub
// (and generic calls for health and reflection).
#include "coordinator/api/kserve_server.h"

#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::coordinator {
namespace {

using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;
using testing::FakeFrontend;
using ::testing::HasSubstr;

// ---- Requests ----------------------------------------------------------------------------

struct Req {
  std::string id;
  std::string model = "fake-model";
  std::string prompt = "Hello";
  std::optional<bool> stream;
  std::optional<std::string> sampling = R"({"max_tokens": 4})";
  std::optional<bool> exclude;
  std::vector<std::string> flags;  // BOOL inputs set to true (return_*)
  bool raw = false;                // raw_input_contents instead of contents
};

std::string RawBytes(const std::string& value) {
  std::string raw;
  const uint32_t n = static_cast<uint32_t>(value.size());
  for (int i = 0; i < 4; ++i) raw.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return raw + value;
}

void AddBytes(ModelInferRequest* request, const std::string& name, const std::string& value,
              bool raw) {
  auto* input = request->add_inputs();
  input->set_name(name);
  input->set_datatype("BYTES");
  input->add_shape(1);
  if (raw) {
    request->add_raw_input_contents(RawBytes(value));
  } else {
    input->mutable_contents()->add_bytes_contents(value);
  }
}

void AddBool(ModelInferRequest* request, const std::string& name, bool value, bool raw) {
  auto* input = request->add_inputs();
  input->set_name(name);
  input->set_datatype("BOOL");
  input->add_shape(1);
  if (raw) {
    request->add_raw_input_contents(std::string(1, value ? 1 : 0));
  } else {
    input->mutable_contents()->add_bool_contents(value);
  }
}

ModelInferRequest Build(const Req& r) {
  ModelInferRequest request;
  request.set_model_name(r.model);
  request.set_id(r.id);
  AddBytes(&request, "text_input", r.prompt, r.raw);
  if (r.stream.has_value()) AddBool(&request, "stream", *r.stream, r.raw);
  if (r.sampling.has_value()) AddBytes(&request, "sampling_parameters", *r.sampling, r.raw);
  if (r.exclude.has_value()) AddBool(&request, "exclude_input_in_output", *r.exclude, r.raw);
  for (const std::string& flag : r.flags) AddBool(&request, flag, true, r.raw);
  return request;
}

// ---- Responses ---------------------------------------------------------------------------

int OutputIndex(const ModelInferResponse& response, const std::string& name) {
  for (int i = 0; i < response.outputs_size(); ++i) {
    if (response.outputs(i).name() == name) return i;
  }
  return -1;
}

uint32_t Le32(const std::string& raw, size_t pos) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(raw[pos + i]);
  return v;
}

std::optional<std::string> BytesOutput(const ModelInferResponse& response,
                                       const std::string& name) {
  const int i = OutputIndex(response, name);
  if (i < 0 || i >= response.raw_output_contents_size()) return std::nullopt;
  const std::string& raw = response.raw_output_contents(i);
  if (raw.size() < 4 || Le32(raw, 0) != raw.size() - 4) return std::nullopt;
  return raw.substr(4);
}

std::optional<uint32_t> U32Output(const ModelInferResponse& response, const std::string& name) {
  const int i = OutputIndex(response, name);
  if (i < 0 || response.raw_output_contents(i).size() != 4) return std::nullopt;
  return Le32(response.raw_output_contents(i), 0);
}

std::vector<int32_t> I32Output(const ModelInferResponse& response, const std::string& name) {
  std::vector<int32_t> out;
  const int i = OutputIndex(response, name);
  if (i < 0) return out;
  const std::string& raw = response.raw_output_contents(i);
  for (size_t pos = 0; pos + 4 <= raw.size(); pos += 4) {
    out.push_back(static_cast<int32_t>(Le32(raw, pos)));
  }
  return out;
}

// The triton_final_response parameter; nullopt when absent.
std::optional<bool> FinalFlag(const ModelInferResponse& response) {
  auto it = response.parameters().find("triton_final_response");
  if (it == response.parameters().end() || !it->second.has_bool_param()) return std::nullopt;
  return it->second.bool_param();
}

// ---- Fixture -----------------------------------------------------------------------------

class KServeTest : public ::testing::Test {
 protected:
  void SetUp() override { StartServer(KServeServerOptions{}); }

  void StartServer(const KServeServerOptions& options) {
    server_.reset();
    auto server = KServeServer::Create(frontend_, options);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    channel_ = grpc::CreateChannel(server_->target(), grpc::InsecureChannelCredentials());
    stub_ = GRPCInferenceService::NewStub(channel_);
  }

  static void SetDeadline(grpc::ClientContext* context, absl::Duration d = absl::Seconds(30)) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + d));
  }

  grpc::Status Infer(const ModelInferRequest& request, ModelInferResponse* response) {
    grpc::ClientContext context;
    SetDeadline(&context);
    return stub_->ModelInfer(&context, request, response);
  }

  // The text FakeFrontend generates for `prompt` (no stop ids).
  std::string Generated(const std::string& prompt, int max_tokens) {
    auto ids = frontend_.Tokenize(prompt, /*add_special_tokens=*/true);
    EXPECT_TRUE(ids.ok());
    auto text = frontend_.Detokenize(FakeFrontend::ExpectedTokens(*ids, max_tokens), true);
    EXPECT_TRUE(text.ok());
    return *text;
  }

  FakeFrontend frontend_;
  std::unique_ptr<KServeServer> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<GRPCInferenceService::Stub> stub_;
};

// Reads a stream until every id in `ids` got its final response; fails on anything after a
// final response of the same id. Returns the responses per id, in order.
std::map<std::string, std::vector<ModelStreamInferResponse>> ReadUntilFinal(
    grpc::ClientReaderWriter<ModelInferRequest, ModelStreamInferResponse>* stream,
    const std::set<std::string>& ids) {
  std::map<std::string, std::vector<ModelStreamInferResponse>> by_id;
  std::set<std::string> open = ids;
  ModelStreamInferResponse response;
  while (!open.empty() && stream->Read(&response)) {
    const std::string& id = response.infer_response().id();
    EXPECT_TRUE(ids.count(id)) << "response for unknown id '" << id << "'";
    EXPECT_TRUE(open.count(id)) << "response for id '" << id << "' after its final one";
    by_id[id].push_back(response);
    if (FinalFlag(response.infer_response()).value_or(false)) open.erase(id);
  }
  EXPECT_TRUE(open.empty()) << "the stream ended before every request finished";
  return by_id;
}

// ---- Server and model metadata -----------------------------------------------------------

TEST_F(KServeTest, ServerLiveAndReadyFollowTheFrontend) {
  grpc::ClientContext c1, c2, c3;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub_->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(stub_->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  frontend_.ready = false;
  ASSERT_TRUE(stub_->ServerReady(&c3, {}, &ready).ok());
  EXPECT_FALSE(ready.ready());
}

TEST_F(KServeTest, ModelReadyOnlyForTheServedModelAndVersion) {
  auto ready = [&](const std::string& name, const std::string& version) {
    grpc::ClientContext context;
    inference::ModelReadyRequest request;
    request.set_name(name);
    request.set_version(version);
    inference::ModelReadyResponse response;
    EXPECT_TRUE(stub_->ModelReady(&context, request, &response).ok());
    return response.ready();
  };
  EXPECT_TRUE(ready("fake-model", ""));
  EXPECT_TRUE(ready("fake-model", "1"));
  EXPECT_FALSE(ready("fake-model", "2"));
  EXPECT_FALSE(ready("other-model", ""));
  frontend_.ready = false;
  EXPECT_FALSE(ready("fake-model", ""));
}

TEST_F(KServeTest, ServerMetadataNamesTessera) {
  grpc::ClientContext context;
  inference::ServerMetadataResponse response;
  ASSERT_TRUE(stub_->ServerMetadata(&context, {}, &response).ok());
  EXPECT_EQ(response.name(), "tessera");
  EXPECT_FALSE(response.version().empty());
  EXPECT_THAT(response.extensions(), ::testing::Contains("model_configuration"));
}

TEST_F(KServeTest, ModelMetadataListsTheVllmTensors) {
  grpc::ClientContext context;
  inference::ModelMetadataRequest request;
  request.set_name("fake-model");
  inference::ModelMetadataResponse response;
  ASSERT_TRUE(stub_->ModelMetadata(&context, request, &response).ok());
  EXPECT_EQ(response.name(), "fake-model");
  EXPECT_THAT(response.versions(), ::testing::ElementsAre("1"));
  EXPECT_EQ(response.platform(), "vllm");
  std::map<std::string, std::pair<std::string, std::vector<int64_t>>> inputs, outputs;
  for (const auto& t : response.inputs()) {
    inputs[t.name()] = {t.datatype(), {t.shape().begin(), t.shape().end()}};
  }
  for (const auto& t : response.outputs()) {
    outputs[t.name()] = {t.datatype(), {t.shape().begin(), t.shape().end()}};
  }
  using Shape = std::vector<int64_t>;
  EXPECT_EQ(inputs["text_input"], std::make_pair(std::string("BYTES"), Shape{1}));
  EXPECT_EQ(inputs["stream"], std::make_pair(std::string("BOOL"), Shape{1}));
  EXPECT_EQ(inputs["sampling_parameters"], std::make_pair(std::string("BYTES"), Shape{1}));
  EXPECT_EQ(inputs["exclude_input_in_output"], std::make_pair(std::string("BOOL"), Shape{1}));
  EXPECT_EQ(inputs["input_ids"], std::make_pair(std::string("INT32"), Shape{-1}));
  EXPECT_EQ(outputs["text_output"], std::make_pair(std::string("BYTES"), Shape{-1}));
  EXPECT_EQ(outputs["finish_reason"], std::make_pair(std::string("BYTES"), Shape{-1}));
  EXPECT_EQ(outputs["num_input_tokens"], std::make_pair(std::string("UINT32"), Shape{1}));
  EXPECT_EQ(outputs["num_output_tokens"], std::make_pair(std::string("UINT32"), Shape{-1}));
  EXPECT_EQ(outputs["output_ids"], std::make_pair(std::string("INT32"), Shape{-1}));
}

TEST_F(KServeTest, ModelConfigIsDecoupledWithOptionalInputs) {
  grpc::ClientContext context;
  inference::ModelConfigRequest request;
  request.set_name("fake-model");
  inference::ModelConfigResponse response;
  ASSERT_TRUE(stub_->ModelConfig(&context, request, &response).ok());
  const inference::ModelConfig& config = response.config();
  EXPECT_EQ(config.name(), "fake-model");
  EXPECT_EQ(config.backend(), "vllm");
  EXPECT_EQ(config.max_batch_size(), 0);
  EXPECT_TRUE(config.model_transaction_policy().decoupled());
  std::map<std::string, bool> optional;
  for (const auto& input : config.input()) optional[input.name()] = input.optional();
  EXPECT_FALSE(optional.at("text_input"));
  EXPECT_TRUE(optional.at("stream"));
  EXPECT_TRUE(optional.at("sampling_parameters"));
  EXPECT_TRUE(optional.at("exclude_input_in_output"));
  EXPECT_TRUE(optional.at("return_finish_reason"));
  EXPECT_EQ(config.output_size(), 7);
}

TEST_F(KServeTest, MetadataAndConfigOfAnUnknownModelUseTritonsError) {
  grpc::ClientContext c1, c2;
  inference::ModelMetadataRequest request;
  request.set_name("nope");
  inference::ModelMetadataResponse response;
  grpc::Status status = stub_->ModelMetadata(&c1, request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(), "Request for unknown model: 'nope' is not found");
  inference::ModelConfigRequest config_request;
  config_request.set_name("fake-model");
  config_request.set_version("7");
  inference::ModelConfigResponse config;
  status = stub_->ModelConfig(&c2, config_request, &config);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(status.error_message(),
            "Request for unknown model: 'fake-model' version 7 is not found");
}

// ---- ModelInfer --------------------------------------------------------------------------

TEST_F(KServeTest, ApiKeysGuardEveryMethodButLiveAndReady) {
  KServeServerOptions options;
  options.service.api_keys = {"grpc-key"};
  StartServer(options);
  const auto call = [&](const std::string& authorization) {
    std::vector<grpc::StatusCode> codes;
    const auto context = [&](grpc::ClientContext& c) {
      SetDeadline(&c);
      if (!authorization.empty()) c.AddMetadata("authorization", authorization);
    };
    {
      grpc::ClientContext c;
      context(c);
      ModelInferResponse response;
      codes.push_back(stub_->ModelInfer(&c, Build(Req{}), &response).error_code());
    }
    {
      grpc::ClientContext c;
      context(c);
      auto stream = stub_->ModelStreamInfer(&c);
      stream->WritesDone();
      ModelStreamInferResponse response;
      while (stream->Read(&response)) {
      }
      codes.push_back(stream->Finish().error_code());
    }
    {
      grpc::ClientContext c;
      context(c);
      inference::ModelMetadataRequest request;
      request.set_name("fake-model");
      inference::ModelMetadataResponse response;
      codes.push_back(stub_->ModelMetadata(&c, request, &response).error_code());
    }
    {
      grpc::ClientContext c;
      context(c);
      inference::ModelReadyRequest request;
      request.set_name("fake-model");
      inference::ModelReadyResponse response;
      codes.push_back(stub_->ModelReady(&c, request, &response).error_code());
    }
    {
      grpc::ClientContext c;
      context(c);
      inference::RepositoryIndexRequest request;
      inference::RepositoryIndexResponse response;
      codes.push_back(stub_->RepositoryIndex(&c, request, &response).error_code());
    }
    return codes;
  };
  const std::vector<grpc::StatusCode> denied(5, grpc::StatusCode::UNAUTHENTICATED);
  const std::vector<grpc::StatusCode> allowed(5, grpc::StatusCode::OK);
  EXPECT_EQ(call(""), denied);
  EXPECT_EQ(call("Bearer other-key"), denied);
  EXPECT_EQ(call("grpc-key"), denied);
  EXPECT_EQ(call("Bearer grpc-key"), allowed);
  EXPECT_EQ(call("bearer grpc-key"), allowed);
  // The message says what to send.
  {
    grpc::ClientContext c;
    SetDeadline(&c);
    ModelInferResponse response;
    const grpc::Status status = stub_->ModelInfer(&c, Build(Req{}), &response);
    EXPECT_THAT(status.error_message(), HasSubstr("authorization: Bearer KEY"));
  }
  // Liveness and readiness stay open, for probes.
  grpc::ClientContext live_context;
  SetDeadline(&live_context);
  inference::ServerLiveResponse live;
  EXPECT_TRUE(stub_->ServerLive(&live_context, inference::ServerLiveRequest(), &live).ok());
  grpc::ClientContext ready_context;
  SetDeadline(&ready_context);
  inference::ServerReadyResponse ready;
  EXPECT_TRUE(stub_->ServerReady(&ready_context, inference::ServerReadyRequest(), &ready).ok());
}

TEST_F(KServeTest, SamplingParametersCarryLogitBias) {
  Req r;
  r.sampling = R"({"max_tokens": 2, "logit_bias": {"5": -100, "17": "2.5"}})";
  ModelInferResponse response;
  grpc::Status status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  // JSON objects are read in key order: "17" before "5".
  EXPECT_EQ(frontend_.last_request().sampling.logit_bias,
            (std::vector<model::LogitBias>{{17, 2.5f}, {5, -100.0f}}));
  for (const char* bad : {R"({"logit_bias": {"x": 1}})", R"({"logit_bias": [1, 2]})",
                          R"({"logit_bias": {"5": "lots"}})"}) {
    r.sampling = bad;
    status = Infer(Build(r), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(status.error_message(), HasSubstr("logit_bias")) << bad;
  }
}

TEST_F(KServeTest, UnaryInferReturnsThePromptAndTheWholeText) {
  Req r;
  r.id = "unary-1";
  r.flags = {"return_finish_reason", "return_num_input_tokens", "return_num_output_tokens",
             "return_output_ids"};
  ModelInferResponse response;
  grpc::Status status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.model_name(), "fake-model");
  EXPECT_EQ(response.model_version(), "1");
  EXPECT_EQ(response.id(), "unary-1");
  EXPECT_EQ(BytesOutput(response, "text_output"), "Hello" + Generated("Hello", 4));
  EXPECT_EQ(BytesOutput(response, "finish_reason"), "length");
  auto prompt_ids = frontend_.Tokenize("Hello", true);
  ASSERT_TRUE(prompt_ids.ok());
  EXPECT_EQ(U32Output(response, "num_input_tokens"), prompt_ids->size());
  EXPECT_EQ(U32Output(response, "num_output_tokens"), 4u);
  EXPECT_EQ(I32Output(response, "output_ids"), FakeFrontend::ExpectedTokens(*prompt_ids, 4));
  EXPECT_FALSE(FinalFlag(response).has_value());  // only decoupled stream responses carry it
}

TEST_F(KServeTest, UnaryInferReadsRawInputContents) {
  Req r;
  r.raw = true;
  r.exclude = true;
  r.stream = false;
  ModelInferResponse response;
  grpc::Status status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(BytesOutput(response, "text_output"), Generated("Hello", 4));
  EXPECT_EQ(response.outputs_size(), 1);  // text_output only by default
}

TEST_F(KServeTest, UnaryInferTakesTokenIdsAsInt64) {
  ModelInferRequest request;
  request.set_model_name("fake-model");
  auto* ids = request.add_inputs();
  ids->set_name("input_ids");
  ids->set_datatype("INT64");
  ids->add_shape(3);
  for (int64_t id : {10, 20, 30}) ids->mutable_contents()->add_int64_contents(id);
  AddBytes(&request, "sampling_parameters", R"({"max_tokens": 3})", false);
  AddBool(&request, "return_output_ids", true, false);
  ModelInferResponse response;
  grpc::Status status = Infer(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(frontend_.last_request().prompt_token_ids, std::vector<int32_t>({10, 20, 30}));
  EXPECT_EQ(I32Output(response, "output_ids"), FakeFrontend::ExpectedTokens({10, 20, 30}, 3));
  // Token prompts have no text of their own: excluded by default.
  auto text = frontend_.Detokenize(FakeFrontend::ExpectedTokens({10, 20, 30}, 3), true);
  EXPECT_EQ(BytesOutput(response, "text_output"), *text);
}

TEST_F(KServeTest, RequestedOutputsAreExactlyThoseReturned) {
  ModelInferRequest request = Build(Req{});
  request.add_outputs()->set_name("num_output_tokens");
  request.add_outputs()->set_name("finish_reason");
  ModelInferResponse response;
  ASSERT_TRUE(Infer(request, &response).ok());
  ASSERT_EQ(response.outputs_size(), 2);
  EXPECT_EQ(U32Output(response, "num_output_tokens"), 4u);
  EXPECT_EQ(BytesOutput(response, "finish_reason"), "length");
}

TEST_F(KServeTest, SamplingParametersMapToTheGenerateRequest) {
  Req r;
  r.sampling = R"({"temperature": "0.5", "top_p": 0.9, "top_k": "40", "min_p": 0.05,
                   "max_tokens": 6.0, "min_tokens": 1, "seed": 1234, "stop": "xyz",
                   "stop_token_ids": [7, 8], "ignore_eos": "true", "repetition_penalty": 1.1,
                   "presence_penalty": "0.2", "frequency_penalty": -0.3, "logprobs": 2,
                   "skip_special_tokens": false, "include_stop_str_in_output": true, "n": 1,
                   "best_of": null})";
  ModelInferResponse response;
  grpc::Status status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const GenerateRequest request = frontend_.last_request();
  const model::SamplingParams& s = request.sampling;
  EXPECT_FLOAT_EQ(s.temperature, 0.5f);
  EXPECT_FLOAT_EQ(s.top_p, 0.9f);
  EXPECT_EQ(s.top_k, 40);
  EXPECT_FLOAT_EQ(s.min_p, 0.05f);
  EXPECT_EQ(s.max_tokens, 6);
  EXPECT_EQ(s.min_tokens, 1);
  EXPECT_EQ(s.seed, 1234);
  EXPECT_EQ(s.stop, std::vector<std::string>({"xyz"}));
  EXPECT_EQ(s.stop_token_ids, std::vector<int32_t>({7, 8}));
  EXPECT_TRUE(s.ignore_eos);
  EXPECT_FLOAT_EQ(s.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(s.presence_penalty, 0.2f);
  EXPECT_FLOAT_EQ(s.frequency_penalty, -0.3f);
  EXPECT_EQ(s.logprobs, 2);
  EXPECT_FALSE(request.skip_special_tokens);
  EXPECT_TRUE(request.include_stop_str_in_output);
  EXPECT_EQ(request.prompt_text, "Hello");
}

TEST_F(KServeTest, RequestParametersAreSamplingParametersWithoutTheInput) {
  Req r;
  r.sampling.reset();
  ModelInferRequest request = Build(r);
  (*request.mutable_parameters())["max_tokens"].set_int64_param(3);
  (*request.mutable_parameters())["temperature"].set_double_param(0.25);
  (*request.mutable_parameters())["priority"].set_int64_param(1);  // reserved: not sampling
  ModelInferResponse response;
  grpc::Status status = Infer(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(frontend_.last_request().sampling.max_tokens, 3);
  EXPECT_FLOAT_EQ(frontend_.last_request().sampling.temperature, 0.25f);
}

TEST_F(KServeTest, LogprobsFollowTheVllmBackendsShape) {
  Req r;
  r.sampling = R"({"max_tokens": 2, "logprobs": 2})";
  r.flags = {"return_logprobs", "return_cumulative_logprob"};
  ModelInferResponse response;
  ASSERT_TRUE(Infer(Build(r), &response).ok());
  auto logprobs = BytesOutput(response, "logprobs");
  ASSERT_TRUE(logprobs.has_value());
  EXPECT_THAT(*logprobs, HasSubstr("\"logprob\":-0.5"));
  EXPECT_THAT(*logprobs, HasSubstr("\"rank\":1"));
  EXPECT_THAT(*logprobs, HasSubstr("\"decoded_token\""));
  const int i = OutputIndex(response, "cumulative_logprob");
  ASSERT_GE(i, 0);
  float cumulative = 0;
  std::memcpy(&cumulative, response.raw_output_contents(i).data(), 4);
  EXPECT_FLOAT_EQ(cumulative, -1.0f);  // two tokens at -0.5 each
}

TEST_F(KServeTest, CallDeadlineBecomesTheRequestDeadline) {
  grpc::ClientContext context;
  SetDeadline(&context, absl::Seconds(20));
  ModelInferResponse response;
  ASSERT_TRUE(stub_->ModelInfer(&context, Build(Req{}), &response).ok());
  const absl::Time deadline = frontend_.last_request().deadline;
  EXPECT_GT(deadline, absl::Now() + absl::Seconds(15));
  EXPECT_LT(deadline, absl::Now() + absl::Seconds(21));
}

TEST_F(KServeTest, FrontendErrorsKeepTheirCode) {
  frontend_.generate_error = absl::ResourceExhaustedError("queue full");
  ModelInferResponse response;
  grpc::Status status = Infer(Build(Req{}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "queue full");
  frontend_.generate_error = absl::UnavailableError("draining");
  status = Infer(Build(Req{}), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

// ---- Bad requests ------------------------------------------------------------------------

struct BadCase {
  std::string name;
  std::function<void(ModelInferRequest*)> change;
  grpc::StatusCode code;
  std::string message;  // a substring of the error message
};
// gtest prints a parameter into the test's CTest name: its name, not its bytes.
void PrintTo(const BadCase& bad, std::ostream* os) { *os << bad.name; }

class KServeBadRequestTest : public KServeTest, public ::testing::WithParamInterface<BadCase> {};

std::vector<BadCase> BadCases() {
  auto set_sampling = [](const std::string& json) {
    return [json](ModelInferRequest* r) {
      for (auto& input : *r->mutable_inputs()) {
        if (input.name() == "sampling_parameters") {
          input.mutable_contents()->set_bytes_contents(0, json);
        }
      }
    };
  };
  return {
      {"UnknownInput", [](ModelInferRequest* r) { AddBool(r, "temperature", true, false); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "[request id: bad] unexpected inference input 'temperature' for model 'fake-model'"},
      {"MissingTextInput",
       [](ModelInferRequest* r) { r->mutable_inputs()->erase(r->mutable_inputs()->begin()); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "[request id: bad] expected number of inputs between 1 and 11 but got 1 inputs for model "
       "'fake-model'. Got input(s) ['sampling_parameters'], but missing required input(s) "
       "['text_input']. Please provide all required input(s)."},
      {"MalformedJson", set_sampling(R"({"max_tokens": )"), grpc::StatusCode::INVALID_ARGUMENT,
       "sampling_parameters: invalid JSON"},
      {"UnknownSamplingKey", set_sampling(R"({"max_tokens": 4, "beam_width": 2})"),
       grpc::StatusCode::INVALID_ARGUMENT, "sampling_parameters: unknown key 'beam_width'"},
      {"WrongType", set_sampling(R"({"top_k": "many"})"), grpc::StatusCode::INVALID_ARGUMENT,
       "sampling_parameters: top_k: expected an integer, got a string \"many\""},
      {"NotAnObject", set_sampling(R"([1, 2])"), grpc::StatusCode::INVALID_ARGUMENT,
       "sampling_parameters: expected a JSON object"},
      {"TopPOutOfRange", set_sampling(R"({"top_p": 1.5})"), grpc::StatusCode::INVALID_ARGUMENT,
       "top_p"},
      {"MaxTokensZero", set_sampling(R"({"max_tokens": 0})"), grpc::StatusCode::INVALID_ARGUMENT,
       "max_tokens"},
      {"UnknownModel", [](ModelInferRequest* r) { r->set_model_name("nope"); },
       grpc::StatusCode::INVALID_ARGUMENT, "Request for unknown model: 'nope' is not found"},
      {"WrongDatatype", [](ModelInferRequest* r) { r->mutable_inputs(0)->set_datatype("INT32"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "inference input 'text_input' data-type is 'INT32', but model 'fake-model' expects "
       "'BYTES'"},
      {"WrongShape", [](ModelInferRequest* r) { r->mutable_inputs(0)->add_shape(1); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "unexpected shape for input 'text_input' for model 'fake-model'. Expected [1], got [1,1]"},
      {"StreamWithInputInOutput",
       [](ModelInferRequest* r) {
         AddBool(r, "stream", true, false);
         AddBool(r, "exclude_input_in_output", false, false);
       },
       grpc::StatusCode::INVALID_ARGUMENT,
       "When streaming, `exclude_input_in_output` = False is not allowed."},
      {"UnknownOutput", [](ModelInferRequest* r) { r->add_outputs()->set_name("logits"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "unexpected inference output 'logits' for model 'fake-model'"},
      {"TooManyRawContents", [](ModelInferRequest* r) { r->add_raw_input_contents("x"); },
       grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents"},
  };
}

TEST_P(KServeBadRequestTest, UnaryInferRejectsIt) {
  Req r;
  r.id = "bad";
  ModelInferRequest request = Build(r);
  GetParam().change(&request);
  ModelInferResponse response;
  grpc::Status status = Infer(request, &response);
  EXPECT_EQ(status.error_code(), GetParam().code);
  EXPECT_THAT(status.error_message(), HasSubstr(GetParam().message));
  EXPECT_EQ(frontend_.generated.load(), 0);
}

TEST_P(KServeBadRequestTest, StreamInferAnswersWithAnErrorAndStaysOpen) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req r;
  r.id = "bad";
  ModelInferRequest request = Build(r);
  GetParam().change(&request);
  ASSERT_TRUE(stream->Write(request));
  ModelStreamInferResponse response;
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_THAT(response.error_message(), HasSubstr(GetParam().message));
  EXPECT_EQ(response.infer_response().id(), "bad");
  EXPECT_EQ(FinalFlag(response.infer_response()), true);
  // The stream still serves the next request.
  Req good;
  good.id = "good";
  good.stream = false;
  ASSERT_TRUE(stream->Write(Build(good)));
  auto by_id = ReadUntilFinal(stream.get(), {"good"});
  ASSERT_EQ(by_id["good"].size(), 1u);
  EXPECT_EQ(by_id["good"][0].error_message(), "");
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

INSTANTIATE_TEST_SUITE_P(All, KServeBadRequestTest, ::testing::ValuesIn(BadCases()),
                         [](const auto& info) { return info.param.name; });

// ---- ModelStreamInfer --------------------------------------------------------------------

TEST_F(KServeTest, StreamSendsOneResponsePerTokenThenTheFinalFlag) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req r;
  r.id = "s1";
  r.stream = true;
  r.flags = {"return_finish_reason", "return_num_output_tokens"};
  ASSERT_TRUE(stream->Write(Build(r)));
  stream->WritesDone();
  auto by_id = ReadUntilFinal(stream.get(), {"s1"});
  const auto& responses = by_id["s1"];
  ASSERT_EQ(responses.size(), 4u);
  std::string text;
  for (size_t i = 0; i < responses.size(); ++i) {
    const ModelInferResponse& response = responses[i].infer_response();
    EXPECT_EQ(responses[i].error_message(), "");
    EXPECT_EQ(response.model_name(), "fake-model");
    EXPECT_EQ(FinalFlag(response), i + 1 == responses.size());
    EXPECT_EQ(U32Output(response, "num_output_tokens"), 1u);
    EXPECT_EQ(BytesOutput(response, "finish_reason"),
              i + 1 == responses.size() ? "length" : "None");
    text += BytesOutput(response, "text_output").value_or("<missing>");
  }
  EXPECT_EQ(text, Generated("Hello", 4));  // no prompt when streaming
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(KServeTest, StreamWithoutStreamFlagSendsTheWholeTextOnce) {
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req r;
  r.id = "whole";
  ASSERT_TRUE(stream->Write(Build(r)));
  stream->WritesDone();
  auto by_id = ReadUntilFinal(stream.get(), {"whole"});
  ASSERT_EQ(by_id["whole"].size(), 1u);
  const ModelInferResponse& response = by_id["whole"][0].infer_response();
  EXPECT_EQ(FinalFlag(response), true);
  EXPECT_EQ(BytesOutput(response, "text_output"), "Hello" + Generated("Hello", 4));
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(KServeTest, StreamMultiplexesConcurrentRequestsByTheirIds) {
  frontend_.token_delay = absl::Milliseconds(2);  // so that the requests interleave
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  std::set<std::string> ids;
  for (int i = 0; i < 8; ++i) {
    Req r;
    r.id = absl::StrCat("req-", i);
    r.prompt = absl::StrCat("prompt number ", i);
    r.stream = i % 2 == 0;
    r.sampling = absl::StrCat(R"({"max_tokens": )", 3 + i, "}");
    ids.insert(r.id);
    ASSERT_TRUE(stream->Write(Build(r)));
  }
  stream->WritesDone();
  auto by_id = ReadUntilFinal(stream.get(), ids);
  for (int i = 0; i < 8; ++i) {
    const auto& responses = by_id[absl::StrCat("req-", i)];
    const std::string prompt = absl::StrCat("prompt number ", i);
    std::string text;
    for (const auto& response : responses) {
      EXPECT_EQ(response.error_message(), "");
      text += BytesOutput(response.infer_response(), "text_output").value_or("<missing>");
    }
    if (i % 2 == 0) {
      EXPECT_EQ(responses.size(), static_cast<size_t>(3 + i));
      EXPECT_EQ(text, Generated(prompt, 3 + i));
    } else {
      EXPECT_EQ(responses.size(), 1u);
      EXPECT_EQ(text, prompt + Generated(prompt, 3 + i));
    }
  }
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(KServeTest, SixteenConcurrentStreams) {
  constexpr int kStreams = 16;
  std::vector<std::thread> clients;
  clients.reserve(kStreams);
  std::vector<std::string> failures(kStreams);
  for (int s = 0; s < kStreams; ++s) {
    clients.emplace_back([&, s] {
      grpc::ClientContext context;
      SetDeadline(&context, absl::Seconds(60));
      auto stream = stub_->ModelStreamInfer(&context);
      std::set<std::string> ids;
      for (int i = 0; i < 3; ++i) {
        Req r;
        r.id = absl::StrCat("s", s, "-", i);
        r.prompt = absl::StrCat("stream ", s, " request ", i);
        r.stream = true;
        ids.insert(r.id);
        if (!stream->Write(Build(r))) failures[s] = "write failed";
      }
      stream->WritesDone();
      auto by_id = ReadUntilFinal(stream.get(), ids);
      for (int i = 0; i < 3; ++i) {
        std::string text;
        for (const auto& response : by_id[absl::StrCat("s", s, "-", i)]) {
          text += BytesOutput(response.infer_response(), "text_output").value_or("");
        }
        if (text != Generated(absl::StrCat("stream ", s, " request ", i), 4)) {
          failures[s] = absl::StrCat("request ", i, " got '", text, "'");
        }
      }
      if (!stream->Finish().ok()) failures[s] = "finish failed";
    });
  }
  for (auto& client : clients) client.join();
  for (int s = 0; s < kStreams; ++s) EXPECT_EQ(failures[s], "") << "stream " << s;
  EXPECT_EQ(frontend_.finished.load(), kStreams * 3);
}

TEST_F(KServeTest, AnErrorAfterTheFirstTokenEndsOnlyThatRequest) {
  frontend_.fail_after_first_token = absl::UnavailableError("replica lost; retry");
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req r;
  r.id = "failing";
  r.stream = true;
  ASSERT_TRUE(stream->Write(Build(r)));
  auto by_id = ReadUntilFinal(stream.get(), {"failing"});
  const auto& responses = by_id["failing"];
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(responses[0].error_message(), "");
  EXPECT_EQ(FinalFlag(responses[0].infer_response()), false);
  EXPECT_EQ(responses[1].error_message(), "replica lost; retry");
  EXPECT_EQ(FinalFlag(responses[1].infer_response()), true);
  frontend_.fail_after_first_token = absl::OkStatus();
  Req next;
  next.id = "next";
  ASSERT_TRUE(stream->Write(Build(next)));
  stream->WritesDone();
  EXPECT_EQ(ReadUntilFinal(stream.get(), {"next"})["next"].size(), 1u);
  EXPECT_TRUE(stream->Finish().ok());
}

// Waits (bounded) for `condition`; true when it held in time.
bool WaitFor(const std::function<bool()>& condition, absl::Duration timeout = absl::Seconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!condition()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

TEST_F(KServeTest, ClientCancellingTheStreamCancelsItsRequests) {
  frontend_.token_delay = absl::Milliseconds(5);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  std::set<std::string> started;
  for (int i = 0; i < 3; ++i) {
    Req r;
    r.id = absl::StrCat("long-", i);
    r.stream = true;
    r.sampling = R"({"max_tokens": 200})";
    ASSERT_TRUE(stream->Write(Build(r)));
  }
  ModelStreamInferResponse response;
  while (started.size() < 3 && stream->Read(&response))
    started.insert(response.infer_response().id());
  ASSERT_EQ(started.size(), 3u);
  context.TryCancel();
  EXPECT_TRUE(WaitFor([&] { return frontend_.cancelled.load() == 3; }))
      << "cancelled: " << frontend_.cancelled.load();
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(frontend_.finished.load(), 0);
}

TEST_F(KServeTest, ClientCancellingAUnaryCallCancelsItsRequest) {
  frontend_.token_delay = absl::Milliseconds(5);
  grpc::ClientContext context;
  SetDeadline(&context);
  Req r;
  r.sampling = R"({"max_tokens": 200})";
  ModelInferResponse response;
  grpc::Status status;
  std::thread call([&] { status = stub_->ModelInfer(&context, Build(r), &response); });
  ASSERT_TRUE(WaitFor([&] { return frontend_.generated.load() == 1; }));
  context.TryCancel();
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([&] { return frontend_.cancelled.load() == 1; }));
}

TEST_F(KServeTest, TooManyRequestsOnOneStreamAreShed) {
  KServeServerOptions options;
  options.service.max_requests_per_stream = 1;
  StartServer(options);
  frontend_.token_delay = absl::Milliseconds(5);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req first;
  first.id = "first";
  first.sampling = R"({"max_tokens": 100})";
  Req second;
  second.id = "second";
  ASSERT_TRUE(stream->Write(Build(first)));
  ASSERT_TRUE(WaitFor([&] { return frontend_.generated.load() == 1; }));
  ASSERT_TRUE(stream->Write(Build(second)));
  ModelStreamInferResponse response;
  ASSERT_TRUE(stream->Read(&response));  // "first" takes 0.5 s; "second" is refused at once
  EXPECT_EQ(response.infer_response().id(), "second");
  EXPECT_THAT(response.error_message(), HasSubstr("too many requests in flight"));
  stream->WritesDone();
  EXPECT_EQ(ReadUntilFinal(stream.get(), {"first"})["first"].size(), 1u);
  EXPECT_TRUE(stream->Finish().ok());
}

// ---- Server: limits, statistics, health, reflection --------------------------------------

TEST_F(KServeTest, OversizedMessagesAreRejectedAndTheServerGoesOn) {
  KServeServerOptions options;
  options.max_message_bytes = 64 << 10;
  StartServer(options);
  Req big;
  big.prompt = std::string(100 << 10, 'a');
  ModelInferResponse response;
  grpc::Status status = Infer(Build(big), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(status.error_message(), HasSubstr("larger than max"));
  status = Infer(Build(Req{}), &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(KServeTest, StatisticsCountRequests) {
  ModelInferResponse response;
  ASSERT_TRUE(Infer(Build(Req{}), &response).ok());
  Req bad;
  bad.sampling = "{";
  ASSERT_FALSE(Infer(Build(bad), &response).ok());
  grpc::ClientContext context;
  inference::ModelStatisticsRequest request;
  request.set_name("fake-model");
  inference::ModelStatisticsResponse stats;
  ASSERT_TRUE(stub_->ModelStatistics(&context, request, &stats).ok());
  ASSERT_EQ(stats.model_stats_size(), 1);
  EXPECT_EQ(stats.model_stats(0).inference_stats().success().count(), 1u);
  EXPECT_EQ(stats.model_stats(0).inference_stats().fail().count(), 1u);
}

// A unary call through the generic stub: the raw response bytes.
grpc::Status GenericUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                          const std::string& request, std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::CompletionQueue cq;
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  auto call = stub.PrepareUnaryCall(&context, method, request_buffer, &cq);
  call->StartCall();
  grpc::ByteBuffer response_buffer;
  grpc::Status status;
  call->Finish(&response_buffer, &status, reinterpret_cast<void*>(1));
  void* tag = nullptr;
  bool ok = false;
  EXPECT_TRUE(cq.Next(&tag, &ok));
  std::vector<grpc::Slice> slices;
  if (status.ok() && response_buffer.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      response->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return status;
}

// The values of field `number` in the protobuf message `bytes` (varints as decimal strings,
// length-delimited fields as their bytes).
std::vector<std::string> Fields(const std::string& bytes, int number) {
  using google::protobuf::internal::WireFormatLite;
  std::vector<std::string> out;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  while (uint32_t tag = in.ReadTag()) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const auto type = WireFormatLite::GetTagWireType(tag);
    if (field == number && type == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      std::string value;
      uint32_t length = 0;
      if (!in.ReadVarint32(&length) || !in.ReadString(&value, static_cast<int>(length))) break;
      out.push_back(value);
    } else if (field == number && type == WireFormatLite::WIRETYPE_VARINT) {
      uint64_t value = 0;
      if (!in.ReadVarint64(&value)) break;
      out.push_back(absl::StrCat(value));
    } else if (!WireFormatLite::SkipField(&in, tag)) {
      break;
    }
  }
  return out;
}

// grpc.health.v1.HealthCheckResponse.status for `service` (1 SERVING, 2 NOT_SERVING).
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel,
                         const std::string& service) {
  std::string request = std::string(1, '\x0a') + static_cast<char>(service.size()) + service;
  std::string response;
  grpc::Status status = GenericUnary(channel, "/grpc.health.v1.Health/Check", request, &response);
  if (!status.ok()) return absl::StrCat("error ", status.error_code());
  std::vector<std::string> values = Fields(response, 1);
  return values.empty() ? "0" : values[0];  // proto3 leaves 0 (UNKNOWN) out
}

TEST_F(KServeTest, HealthServiceFollowsReadiness) {
  EXPECT_EQ(HealthStatus(channel_, ""), "1");
  EXPECT_EQ(HealthStatus(channel_, "inference.GRPCInferenceService"), "1");
  frontend_.ready = false;
  server_->RefreshHealth();
  EXPECT_EQ(HealthStatus(channel_, "inference.GRPCInferenceService"), "2");
  EXPECT_EQ(HealthStatus(channel_, ""), "2");
  server_->SetServing(true);
  EXPECT_EQ(HealthStatus(channel_, "inference.GRPCInferenceService"), "1");
}

TEST_F(KServeTest, ReflectionListsTheInferenceService) {
  grpc::GenericStub stub(channel_);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](int n) {
    void* tag = nullptr;
    bool ok = false;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(tag, reinterpret_cast<void*>(n));
    return ok;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(step(1));
  // ServerReflectionRequest { list_services = 7: "*" }
  grpc::Slice slice(std::string("\x3a\x01*", 3));
  grpc::ByteBuffer request(&slice, 1);
  call->Write(request, reinterpret_cast<void*>(2));
  ASSERT_TRUE(step(2));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(step(3));
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // ServerReflectionResponse.list_services_response (6) . service (1) . name (1)
  std::set<std::string> services;
  for (const std::string& list : Fields(bytes, 6)) {
    for (const std::string& service : Fields(list, 1)) {
      for (const std::string& name : Fields(service, 1)) services.insert(name);
    }
  }
  EXPECT_TRUE(services.count("inference.GRPCInferenceService")) << services.size();
  EXPECT_TRUE(services.count("grpc.health.v1.Health"));
}

TEST_F(KServeTest, ShutdownCancelsRunningStreams) {
  frontend_.token_delay = absl::Milliseconds(5);
  grpc::ClientContext context;
  SetDeadline(&context);
  auto stream = stub_->ModelStreamInfer(&context);
  Req r;
  r.id = "endless";
  r.stream = true;
  r.sampling = R"({"max_tokens": 250})";
  ASSERT_TRUE(stream->Write(Build(r)));
  ModelStreamInferResponse response;
  ASSERT_TRUE(stream->Read(&response));
  server_->Shutdown(absl::Now() + absl::Milliseconds(100));
  EXPECT_EQ(frontend_.cancelled.load(), 1);  // Shutdown returned: every handler is done
  int tokens = 1;
  while (stream->Read(&response)) {
    ++tokens;
    EXPECT_FALSE(FinalFlag(response.infer_response()).value_or(false));
  }
  EXPECT_LT(tokens, 250);
  EXPECT_FALSE(stream->Finish().ok());
}

TEST(KServeServerTest, CreateRejectsBadOptions) {
  FakeFrontend frontend;
  KServeServerOptions options;
  options.max_message_bytes = 0;
  EXPECT_EQ(KServeServer::Create(frontend, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = KServeServerOptions{};
  options.address = "no-port";
  EXPECT_EQ(KServeServer::Create(frontend, options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options.address = "203.0.113.1:1";  // TEST-NET-3: not an address of this machine
  EXPECT_EQ(KServeServer::Create(frontend, options).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace tessera::coordinator
