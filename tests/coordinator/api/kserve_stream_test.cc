// KServeServer over FakeFrontend: decoupled ModelStreamInfer (one response per token, many
// requests on one stream, errors, cancellation, shedding) and the server around the service
// (message limits, statistics, gRPC health, reflection, shutdown; generic calls for the last).
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
  EXPECT_TRUE(tessera::testing::Await([&] { return frontend_.cancelled.load() == 3; }))
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
  ASSERT_TRUE(tessera::testing::Await([&] { return frontend_.generated.load() == 1; }));
  context.TryCancel();
  call.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(tessera::testing::Await([&] { return frontend_.cancelled.load() == 1; }));
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
  ASSERT_TRUE(tessera::testing::Await([&] { return frontend_.generated.load() == 1; }));
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
}  // namespace tessera::coordinator::kserve_test
