// inference.GRPCInferenceService (KServe v2 / Triton gRPC) over a coordinator::Frontend, with the
// text-generation tensors of Triton's vLLM backend (kserve_schema.h lists them). tritonclient,
// perf_analyzer and genai-perf talk to it unchanged.
//
// The served model is Frontend::model(): one model, version "1", decoupled (the vLLM backend's
// model_transaction_policy). Methods:
//   ServerLive / ServerReady      Frontend::Live() / Frontend::Ready()
//   ModelReady                    Ready() for the served model (version "" or "1"), false for
//                                 any other name (as Triton answers, without an error)
//   ServerMetadata                name "tessera", `server_version`, extensions
//   ModelMetadata / ModelConfig   the schema; unknown model: INVALID_ARGUMENT "Request for unknown
//                                 model: 'X' is not found" (Triton's wording and code)
//   ModelInfer                    unary: runs the request to its end and answers with the whole
//                                 text, as a non-streamed vLLM-backend response. Triton itself
//                                 refuses ModelInfer on decoupled models; tessera serves it, since
//                                 one request has exactly one non-streamed answer. `stream` is
//                                 accepted and only changes the exclude_input_in_output default.
//   ModelStreamInfer              decoupled: any number of requests on one stream, run
//                                 concurrently; each response carries its request's id and the
//                                 parameter triton_final_response (true on the request's last
//                                 one). stream=true: one response per GenerateEvent (a text delta);
//                                 stream=false: one response with the whole text. The last
//                                 response always carries data, so tritonclient's
//                                 enable_empty_final_response changes nothing. A failed request
//                                 gets one response with error_message set (and its id and
//                                 triton_final_response=true in infer_response); the stream stays
//                                 open for the others.
//   ModelStatistics               counts of successful/failed requests and their time
//   RepositoryIndex               the served model, READY or UNAVAILABLE
// Errors use absl codes mapped 1:1 to gRPC codes; messages name the field. With api_keys, every
// method but ServerLive and ServerReady answers UNAUTHENTICATED unless the call's "authorization"
// metadata is "Bearer KEY" with a configured key.
//
// Threads: gRPC's sync server gives each call a thread. A stream's thread reads requests; each
// request runs on a thread of its own that reads its GenerateStream and writes responses; writes
// to one stream are serialized by a mutex, and a blocked write (a slow client) holds back only its
// stream's requests, whose tokens wait in the Frontend. A client that cancels the call (or a
// failed write) cancels every request of the stream; a half-closed stream is finished once its
// requests are. The call's deadline becomes each request's GenerateRequest::deadline (and the
// request parameter "timeout", in microseconds, shortens it).
//
// Thread-safe. `frontend` must outlive the service; destroy the service only after the grpc::Server
// that runs it has shut down.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "coordinator/api/api_keys.h"
#include "coordinator/frontend.h"
#include "inference/grpc_service.grpc.pb.h"

namespace tessera::coordinator {

struct KServeServiceOptions {
  std::string server_version = "0.1.0";  // ServerMetadata.version
  // Requests in flight on one ModelStreamInfer call; more are answered RESOURCE_EXHAUSTED (each
  // running request holds a thread).
  int max_requests_per_stream = 256;
  // How often waiting threads look at cancellation and shutdown.
  absl::Duration poll_interval = absl::Milliseconds(50);
  // Keys a call must present in its "authorization" metadata (api_keys.h); empty: open. Every
  // method but ServerLive and ServerReady (and the gRPC health service) checks it.
  std::vector<std::string> api_keys;
};

class KServeService final : public inference::GRPCInferenceService::Service {
 public:
  KServeService(Frontend& frontend, KServeServiceOptions options);

  grpc::Status ServerLive(grpc::ServerContext* context, const inference::ServerLiveRequest* request,
                          inference::ServerLiveResponse* response) override;
  grpc::Status ServerReady(grpc::ServerContext* context,
                           const inference::ServerReadyRequest* request,
                           inference::ServerReadyResponse* response) override;
  grpc::Status ModelReady(grpc::ServerContext* context, const inference::ModelReadyRequest* request,
                          inference::ModelReadyResponse* response) override;
  grpc::Status ServerMetadata(grpc::ServerContext* context,
                              const inference::ServerMetadataRequest* request,
                              inference::ServerMetadataResponse* response) override;
  grpc::Status ModelMetadata(grpc::ServerContext* context,
                             const inference::ModelMetadataRequest* request,
                             inference::ModelMetadataResponse* response) override;
  grpc::Status ModelConfig(grpc::ServerContext* context,
                           const inference::ModelConfigRequest* request,
                           inference::ModelConfigResponse* response) override;
  grpc::Status ModelInfer(grpc::ServerContext* context, const inference::ModelInferRequest* request,
                          inference::ModelInferResponse* response) override;
  grpc::Status ModelStreamInfer(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<inference::ModelStreamInferResponse, inference::ModelInferRequest>*
          stream) override;
  grpc::Status ModelStatistics(grpc::ServerContext* context,
                               const inference::ModelStatisticsRequest* request,
                               inference::ModelStatisticsResponse* response) override;
  grpc::Status RepositoryIndex(grpc::ServerContext* context,
                               const inference::RepositoryIndexRequest* request,
                               inference::RepositoryIndexResponse* response) override;

  // Called by the request runners: counts for ModelStatistics.
  void RecordRequest(bool ok, absl::Duration elapsed);

 private:
  Frontend& frontend_;
  // OK, or UNAUTHENTICATED when keys are configured and the call's metadata names none.
  grpc::Status Authorize(const grpc::ServerContext& context) const;

  const KServeServiceOptions options_;
  const api::ApiKeys keys_;
  std::atomic<uint64_t> success_count_{0};
  std::atomic<uint64_t> success_ns_{0};
  std::atomic<uint64_t> fail_count_{0};
  std::atomic<uint64_t> fail_ns_{0};
  std::atomic<uint64_t> last_inference_ms_{0};
};

}  // namespace tessera::coordinator
