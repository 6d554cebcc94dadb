#include "common/net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace tessera {
namespace {

absl::string_view Unbracketed(absl::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    return host.substr(1, host.size() - 2);
  }
  return host;
}

}  // namespace

bool IsLoopbackHost(absl::string_view host) {
  host = Unbracketed(host);
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

bool IsWildcardHost(absl::string_view host) {
  host = Unbracketed(host);
  return host.empty() || host == "0.0.0.0" || host == "::";
}

std::string HostPort(absl::string_view host, int port) {
  const bool bare_ipv6 = host.find(':') != absl::string_view::npos && host.front() != '[';
  return absl::StrCat(bare_ipv6 ? "[" : "", host, bare_ipv6 ? "]" : "", ":", port);
}

std::string HostOf(absl::string_view peer) {
  std::string decoded(peer);
  for (absl::string_view scheme : {"ipv4:", "ipv6:"}) {
    if (absl::StartsWith(peer, scheme)) {
      // gRPC's peer URIs percent-encode the brackets ("ipv6:%5B::1%5D:5000").
      decoded = absl::StrReplaceAll(peer.substr(scheme.size()),
                                    {{"%5B", "["}, {"%5D", "]"}, {"%5b", "["}, {"%5d", "]"}});
    }
  }
  absl::string_view address = decoded;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    return std::string(
        address.substr(1, close == absl::string_view::npos ? absl::string_view::npos : close - 1));
  }
  const size_t colon = address.rfind(':');
  // More than one colon without brackets: a bare IPv6 address, no port.
  if (colon == absl::string_view::npos || address.find(':') != colon) return std::string(address);
  return std::string(address.substr(0, colon));
}

std::string ThisHostName() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) name[0] = '\0';
  return name;
}

namespace {

// BindableAddress, resolving with `flags` (AI_NUMERICHOST: literals only).
absl::StatusOr<std::string> FirstBindable(const std::string& host, int flags) {
  const std::string name = host.empty() ? ThisHostName() : std::string(Unbracketed(host));
  if (name.empty()) return absl::FailedPreconditionError("this machine has no hostname");
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags;
  addrinfo* found = nullptr;
  if (const int rc = getaddrinfo(name.c_str(), nullptr, &hints, &found); rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("host '", name, "' does not resolve (", gai_strerror(rc), ")"));
  }
  std::string address;
  for (const addrinfo* a = found; a != nullptr && address.empty(); a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    char text[NI_MAXHOST] = {};
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getnameinfo(a->ai_addr, a->ai_addrlen, text, sizeof(text), nullptr, 0, NI_NUMERICHOST) ==
            0) {
      address = text;
    }
    close(fd);
  }
  freeaddrinfo(found);
  if (address.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("no address of host '", name, "' is on this machine"));
  }
  return address;
}

}  // namespace

absl::StatusOr<std::string> BindableAddress(const std::string& host) {
  return FirstBindable(host, 0);
}

bool IsLocalAddress(const std::string& host) {
  return !host.empty() && FirstBindable(host, AI_NUMERICHOST).ok();
}

std::string ListenHostFor(absl::string_view peer) {
  if (!IsLoopbackHost(peer)) return "0.0.0.0";
  peer = Unbracketed(peer);
  return peer == "localhost" ? "127.0.0.1" : std::string(peer);
}

std::string AdvertiseHostToward(const std::string& peer) {
  if (IsLoopbackHost(peer)) return ListenHostFor(peer);
  absl::StatusOr<std::string> local = LocalAddressToward(peer);
  if (local.ok() && !IsLoopbackHost(*local)) return *local;
  const std::string name = ThisHostName();
  return name.empty() ? "localhost" : name;
}

absl::StatusOr<std::string> LocalAddressToward(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  const std::string name(Unbracketed(host));
  if (const int rc = getaddrinfo(name.c_str(), "9", &hints, &found); rc != 0) {
    return absl::NotFoundError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
    const int fd = socket(a->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = std::strerror(errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t length = sizeof(local);
    char text[INET6_ADDRSTRLEN] = {};
    const bool ok =
        connect(fd, a->ai_addr, a->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) == 0 &&
        inet_ntop(
            local.ss_family,
            local.ss_family == AF_INET
                ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr)
                : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr),
            text, sizeof(text)) != nullptr;
    if (!ok) error = std::strerror(errno);
    close(fd);
    if (ok) {
      freeaddrinfo(found);
      return std::string(text);
    }
  }
  freeaddrinfo(found);
  return absl::UnavailableError(absl::StrCat("no route from this machine to ", host, ": ", error));
}

}  // namespace tessera
