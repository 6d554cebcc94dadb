// KServeServer over FakeFrontend, driven through gRPC on loopback with the generated C++ stub:
// server and model metadata, API keys, unary ModelInfer and its parameters, bad requests.
#include "coordinator/api/kserve_server.h"

#include <functional>
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
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "tests/await.h"
#include "tests/coordinator/api/kserve_test_util.h"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::coordinator::kserve_test {
namespace {

using ::testing::HasSubstr;

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

// vLLM's SamplingParams.structured_outputs (and its older name guided_decoding) in
// sampling_parameters, as the Triton vLLM backend passes them.
TEST_F(KServeTest, SamplingParametersCarryStructuredOutputs) {
  using Kind = model::StructuredOutput::Kind;
  Req r;
  r.sampling = R"({"max_tokens": 2, "structured_outputs": {"choice": ["a", "b"]}})";
  ModelInferResponse response;
  grpc::Status status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(frontend_.last_request().sampling.structured_output,
            (model::StructuredOutput{Kind::kChoice, R"(["a","b"])"}));
  r.sampling = R"({"max_tokens": 2, "guided_decoding": {"json": {"type": "object"}}})";
  status = Infer(Build(r), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(frontend_.last_request().sampling.structured_output.kind, Kind::kJsonSchema);
  for (const char* bad :
       {R"({"structured_outputs": {"grammar": "a"}})", R"({"structured_outputs": [1]})",
        R"({"guided_decoding": {"json": {"type": "string", "pattern": "(a"}}})",
        R"({"structured_outputs": {"json_object": true, "choice": ["a"]}})"}) {
    r.sampling = bad;
    status = Infer(Build(r), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << bad;
    EXPECT_THAT(status.error_message(),
                ::testing::AnyOf(HasSubstr("structured_outputs"), HasSubstr("guided_decoding")))
        << bad;
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

}  // namespace
}  // namespace tessera::coordinator::kserve_test
