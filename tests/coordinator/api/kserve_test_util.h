// The KServe service tests' shared pieces: a KServeServer over FakeFrontend on loopback with
// the generated C++ stub (KServeTest), request builders and response readers.
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "coordinator/api/kserve_server.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "inference/grpc_service.grpc.pb.h"
#include "tests/coordinator/fake_frontend.h"

namespace tessera::coordinator::kserve_test {

using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;
using testing::FakeFrontend;

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

inline std::string RawBytes(const std::string& value) {
  std::string raw;
  const uint32_t n = static_cast<uint32_t>(value.size());
  for (int i = 0; i < 4; ++i) raw.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return raw + value;
}

inline void AddBytes(ModelInferRequest* request, const std::string& name, const std::string& value,
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

inline void AddBool(ModelInferRequest* request, const std::string& name, bool value, bool raw) {
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

inline ModelInferRequest Build(const Req& r) {
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

inline int OutputIndex(const ModelInferResponse& response, const std::string& name) {
  for (int i = 0; i < response.outputs_size(); ++i) {
    if (response.outputs(i).name() == name) return i;
  }
  return -1;
}

inline uint32_t Le32(const std::string& raw, size_t pos) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(raw[pos + i]);
  return v;
}

inline std::optional<std::string> BytesOutput(const ModelInferResponse& response,
                                              const std::string& name) {
  const int i = OutputIndex(response, name);
  if (i < 0 || i >= response.raw_output_contents_size()) return std::nullopt;
  const std::string& raw = response.raw_output_contents(i);
  if (raw.size() < 4 || Le32(raw, 0) != raw.size() - 4) return std::nullopt;
  return raw.substr(4);
}

inline std::optional<uint32_t> U32Output(const ModelInferResponse& response,
                                         const std::string& name) {
  const int i = OutputIndex(response, name);
  if (i < 0 || response.raw_output_contents(i).size() != 4) return std::nullopt;
  return Le32(response.raw_output_contents(i), 0);
}

inline std::vector<int32_t> I32Output(const ModelInferResponse& response, const std::string& name) {
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
inline std::optional<bool> FinalFlag(const ModelInferResponse& response) {
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
inline std::map<std::string, std::vector<ModelStreamInferResponse>> ReadUntilFinal(
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

}  // namespace tessera::coordinator::kserve_test
