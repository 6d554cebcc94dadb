// The kvtransfer::Transport conformance suite: one set of behaviours, every implementation.
//
// CMake target: tessera_kvtransfer_conformance (static library; link it and GTest::gtest_main).
// Header:       "tests/kvtransfer/transport_conformance.h"
//
// Usage, in an implementation's test file:
//
//   INSTANTIATE_TEST_SUITE_P(Ucx, TransportConformanceTest,
//       ::testing::Values(TransportFactory{"ucx", [](const TransportOptions& o) { ... }}),
//       TransportFactoryName);
//
// Every test makes two transports with the factory (a sender "sender" and a receiver "receiver";
// the factory must let them reach each other) and destroys them before it ends. A factory that
// cannot create its transport here (no fabric, no device) should return kUnavailable: the tests
// then GTEST_SKIP(). Every wait is bounded; random data is seeded and the seed printed on failure.
#pragma once

#include <functional>
#include <memory>
#include <ostream>
#include <string>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kvtransfer/transport.h"

namespace tessera::kvtransfer::testing {

struct TransportFactory {
  std::string name;  // a valid gtest name: letters, digits, underscores
  std::function<absl::StatusOr<std::unique_ptr<Transport>>(const TransportOptions&)> create;
};

inline std::ostream& operator<<(std::ostream& os, const TransportFactory& factory) {
  return os << factory.name;
}

// For INSTANTIATE_TEST_SUITE_P's name generator argument.
std::string TransportFactoryName(const ::testing::TestParamInfo<TransportFactory>& info);

class TransportConformanceTest : public ::testing::TestWithParam<TransportFactory> {
 protected:
  // The options the suite passes (peer_timeout short, so that dead-peer tests end quickly).
  static TransportOptions Options(const std::string& name);
  // Creates a transport with the parameter's factory; nullptr on failure (a test failure) or when
  // the factory returned kUnavailable (skip_reason_ says why; the test then skips).
  std::unique_ptr<Transport> Make(const std::string& name);
  std::string skip_reason_;
};

}  // namespace tessera::kvtransfer::testing
