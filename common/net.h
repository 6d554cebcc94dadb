#pragma once
// Host and address vocabulary shared by the processes that listen for or dial each other: the
// coordinator, workers, rendezvous stores and KV transports.

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera {

// "localhost", any 127.0.0.0/8 address, or ::1 (bracketed or not).
bool IsLoopbackHost(absl::string_view host);
// "", 0.0.0.0 or :: (bracketed or not): every interface, to listen on, never to dial.
bool IsWildcardHost(absl::string_view host);
// "host:port", an IPv6 host in brackets ("[::1]:8000").
std::string HostPort(absl::string_view host, int port);
// The host of "host:port" ("[::1]:8000" -> "::1"), and of a gRPC peer URI ("ipv4:10.0.0.2:5000"
// -> "10.0.0.2", "ipv6:%5B::1%5D:5000" -> "::1"). Without a colon: the whole string.
std::string HostOf(absl::string_view address);
// gethostname(), or "" where it fails.
std::string ThisHostName();
// The first address of `host` (a name or a literal; empty: ThisHostName()) that a socket here
// binds, as a literal. kFailedPrecondition naming the host when it does not resolve, or when
// none of its addresses is this machine's.
absl::StatusOr<std::string> BindableAddress(const std::string& host);
// Whether `host` is a literal address of this machine (BindableAddress of it). Names: false.
bool IsLocalAddress(const std::string& host);
// Where to listen for peers that reach this process the way it reaches `peer`: `peer`'s own
// loopback address when `peer` is loopback (127.0.0.1 for "localhost"), else every interface.
std::string ListenHostFor(absl::string_view peer);
// What to tell peers on `peer`'s side to dial: `peer`'s loopback address when `peer` is loopback;
// else this machine's address on the route to `peer` (LocalAddressToward), unless that fails or
// is itself loopback (a hostname mapped to 127.0.1.1): then ThisHostName() ("localhost" if none).
std::string AdvertiseHostToward(const std::string& peer);
// The address of this machine's interface that reaches `host` (a name or a literal address): the
// one a peer on that network can dial back. Nothing is sent (a UDP socket is connected, and its
// local address read, as vLLM's get_ip() does).
absl::StatusOr<std::string> LocalAddressToward(const std::string& host);

}  // namespace tessera
