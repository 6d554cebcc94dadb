// Bandwidth of the kvtransfer transports against memcpy and a raw TCP socket over loopback, all
// measured in the same run. Label perf: prints markdown tables, never asserts on time.
//
// Sizes run from 64 KiB up to TESSERA_KV_PERF_MAX_BYTES (default 256 MiB). Each transfer is one
// Submit + Wait (for TCP: send the bytes, wait for a 1-byte acknowledgement), so small sizes
// include the per-transfer round trip, as a KV migration would see it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kvtransfer/grpc/grpc_transport.h"
#include "kvtransfer/inproc/in_process_transport.h"

namespace tessera::kvtransfer {
namespace {

constexpr uint64_t kKiB = 1024;
constexpr uint64_t kMiB = 1024 * kKiB;

uint64_t MaxBytes() {
  const char* env = std::getenv("TESSERA_KV_PERF_MAX_BYTES");
  if (env == nullptr) return 256 * kMiB;
  const uint64_t value = std::strtoull(env, nullptr, 10);
  return value >= 64 * kKiB ? value : 256 * kMiB;
}

std::string Size(uint64_t bytes) {
  return bytes >= kMiB ? absl::StrCat(bytes / kMiB, " MiB") : absl::StrCat(bytes / kKiB, " KiB");
}

// Runs `once` (one transfer of `bytes`) after a warm-up until ~budget bytes moved (3..2000 times)
// and returns GB/s (1e9 bytes per second); 0 when a transfer failed.
double Measure(uint64_t bytes, const std::function<bool()>& once) {
  if (!once()) return 0;
  const uint64_t budget = 256 * kMiB;
  const int iterations = static_cast<int>(std::clamp<uint64_t>(budget / bytes, 3, 2000));
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) {
    if (!once()) return 0;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(bytes) * iterations / seconds / 1e9;
}

// A sender and a receiver of one kind with `bytes` registered on each side.
struct TransportPair {
  std::unique_ptr<Transport> sender;
  std::unique_ptr<Transport> receiver;
  RegionId src = 0;
  RegionId dst = 0;
  PeerId peer = 0;
};

using Maker = std::function<std::unique_ptr<Transport>(const std::string&)>;

TransportPair Connect(const Maker& make, std::vector<char>& src, std::vector<char>& dst) {
  TransportPair pair;
  pair.sender = make("sender");
  pair.receiver = make("receiver");
  pair.src = *pair.sender->RegisterMemory(src.data(), src.size());
  pair.dst = *pair.receiver->RegisterMemory(dst.data(), dst.size());
  pair.peer = *pair.sender->Connect(*pair.receiver->LocalDescriptor());
  return pair;
}

bool RunTransfer(TransportPair& pair, const std::vector<Segment>& segments) {
  auto transfer = pair.sender->Submit(pair.peer, segments);
  return transfer.ok() && (*transfer)->Wait(absl::Seconds(120)).ok();
}

std::vector<Segment> Contiguous(const TransportPair& pair, uint64_t bytes, uint64_t piece) {
  std::vector<Segment> segments;
  for (uint64_t offset = 0; offset < bytes; offset += piece) {
    segments.push_back(
        Segment{pair.src, offset, pair.dst, offset, std::min(piece, bytes - offset), offset});
  }
  return segments;
}

Maker InProcMaker() {
  auto fabric = InProcessFabric::Create();
  return [fabric](const std::string& name) -> std::unique_ptr<Transport> {
    return *InProcessTransport::Create(fabric, {name});
  };
}

Maker GrpcMaker(size_t max_message_bytes) {
  return [max_message_bytes](const std::string& name) -> std::unique_ptr<Transport> {
    GrpcTransportOptions options;
    options.max_message_bytes = max_message_bytes;
    return *GrpcTransport::Create({name}, options);
  };
}

// Loopback TCP: a receiver thread reads [8-byte length][bytes] into dst and answers one byte.
class TcpLoopback {
 public:
  explicit TcpLoopback(std::vector<char>& dst) : dst_(dst) {
    listener_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    listen(listener_, 1);
    socklen_t len = sizeof(addr);
    getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
    client_ = socket(AF_INET, SOCK_STREAM, 0);
    thread_ = std::thread([this] { Serve(); });
    connected_ = connect(client_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    const int one = 1;
    setsockopt(client_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  ~TcpLoopback() {
    shutdown(client_, SHUT_RDWR);
    close(client_);
    thread_.join();
    close(listener_);
  }

  bool Send(const char* data, uint64_t bytes) {
    if (!connected_ || !WriteAll(client_, reinterpret_cast<const char*>(&bytes), 8) ||
        !WriteAll(client_, data, bytes)) {
      return false;
    }
    char ack = 0;
    return ReadAll(client_, &ack, 1);
  }

 private:
  static bool WriteAll(int fd, const char* data, uint64_t bytes) {
    while (bytes > 0) {
      const ssize_t n = send(fd, data, bytes, MSG_NOSIGNAL);
      if (n <= 0) return false;
      data += n;
      bytes -= n;
    }
    return true;
  }
  static bool ReadAll(int fd, char* data, uint64_t bytes) {
    while (bytes > 0) {
      const ssize_t n = recv(fd, data, bytes, 0);
      if (n <= 0) return false;
      data += n;
      bytes -= n;
    }
    return true;
  }
  void Serve() {
    const int fd = accept(listener_, nullptr, nullptr);
    if (fd < 0) return;
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint64_t bytes = 0;
    while (ReadAll(fd, reinterpret_cast<char*>(&bytes), 8) && bytes <= dst_.size() &&
           ReadAll(fd, dst_.data(), bytes)) {
      const char ack = 1;
      if (!WriteAll(fd, &ack, 1)) break;
    }
    close(fd);
  }

  std::vector<char>& dst_;
  int listener_ = -1;
  int client_ = -1;
  bool connected_ = false;
  std::thread thread_;
};

std::string Ratio(double a, double b) { return b > 0 ? absl::StrFormat("%.2f", a / b) : "-"; }

TEST(TransportPerfTest, BandwidthBySize) {
  const uint64_t max_bytes = MaxBytes();
  std::vector<char> src(max_bytes), dst(max_bytes);
  for (uint64_t i = 0; i < max_bytes; i += 4096) src[i] = static_cast<char>(i >> 12);
  TcpLoopback tcp(dst);
  TransportPair inproc = Connect(InProcMaker(), src, dst);
  TransportPair grpc = Connect(GrpcMaker(4 * kMiB), src, dst);

  std::string table =
      "| size | memcpy GB/s | TCP loopback GB/s | inproc GB/s | grpc GB/s | grpc / TCP | "
      "inproc / memcpy |\n|---|---|---|---|---|---|---|\n";
  for (uint64_t bytes = 64 * kKiB; bytes <= max_bytes; bytes *= 2) {
    const double memcpy_gbps = Measure(bytes, [&] {
      std::memcpy(dst.data(), src.data(), bytes);
      return true;
    });
    const double tcp_gbps = Measure(bytes, [&] { return tcp.Send(src.data(), bytes); });
    const auto inproc_segments = Contiguous(inproc, bytes, bytes);
    const double inproc_gbps = Measure(bytes, [&] { return RunTransfer(inproc, inproc_segments); });
    const auto grpc_segments = Contiguous(grpc, bytes, bytes);
    const double grpc_gbps = Measure(bytes, [&] { return RunTransfer(grpc, grpc_segments); });
    table += absl::StrFormat("| %s | %.2f | %.2f | %.2f | %.2f | %s | %s |\n", Size(bytes),
                             memcpy_gbps, tcp_gbps, inproc_gbps, grpc_gbps,
                             Ratio(grpc_gbps, tcp_gbps), Ratio(inproc_gbps, memcpy_gbps));
    if (bytes >= 1 * kMiB) bytes *= 2;  // x4 past 1 MiB: the small sizes are the interesting ones
  }
  std::printf("\n### kvtransfer bandwidth, one contiguous segment per transfer\n\n%s\n",
              table.c_str());
}

// One 4 KiB segment per KV block-head (16 tokens x 128 head_dim x 2 bytes): what coalescing buys.
TEST(TransportPerfTest, ManySmallSegments) {
  constexpr uint64_t kSegment = 4 * kKiB;
  const uint64_t max_bytes = std::min<uint64_t>(MaxBytes(), 64 * kMiB);
  std::vector<char> src(max_bytes), dst(max_bytes);
  TransportPair inproc = Connect(InProcMaker(), src, dst);
  TransportPair grpc = Connect(GrpcMaker(4 * kMiB), src, dst);
  TransportPair grpc_uncoalesced = Connect(GrpcMaker(kSegment), src, dst);

  std::string table =
      "| transfer | segments | inproc GB/s | grpc GB/s (4 MiB messages) | grpc GB/s (one message "
      "per segment) | grpc, one segment GB/s | coalesced / uncoalesced |\n"
      "|---|---|---|---|---|---|---|\n";
  for (uint64_t bytes : {128 * kKiB, 512 * kKiB, 4 * kMiB, 16 * kMiB, 64 * kMiB}) {
    if (bytes > max_bytes) break;
    const auto a = Contiguous(inproc, bytes, kSegment);
    const auto b = Contiguous(grpc, bytes, kSegment);
    const auto c = Contiguous(grpc_uncoalesced, bytes, kSegment);
    const auto d = Contiguous(grpc, bytes, bytes);
    const double inproc_gbps = Measure(bytes, [&] { return RunTransfer(inproc, a); });
    const double coalesced = Measure(bytes, [&] { return RunTransfer(grpc, b); });
    const double uncoalesced = Measure(bytes, [&] { return RunTransfer(grpc_uncoalesced, c); });
    const double one_segment = Measure(bytes, [&] { return RunTransfer(grpc, d); });
    table += absl::StrFormat("| %s | %d | %.2f | %.2f | %.2f | %.2f | %s |\n", Size(bytes),
                             bytes / kSegment, inproc_gbps, coalesced, uncoalesced, one_segment,
                             Ratio(coalesced, uncoalesced));
  }
  std::printf("\n### kvtransfer, 4 KiB segments (one per KV block-head)\n\n%s\n", table.c_str());
}

}  // namespace
}  // namespace tessera::kvtransfer
