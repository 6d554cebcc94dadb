// The Transport conformance suite (tests/kvtransfer/transport_conformance.h) run against UCX.
#include <memory>

#include "kvtransfer/ucx/ucx_transport.h"
#include "tests/kvtransfer/transport_conformance.h"

namespace tessera::kvtransfer {
namespace {

using testing::TransportConformanceTest;
using testing::TransportFactory;
using testing::TransportFactoryName;

absl::StatusOr<std::unique_ptr<Transport>> MakeUcx(const TransportOptions& base) {
  UcxTransportOptions options;
  options.base = base;
  auto transport = UcxTransport::Create(options);
  if (!transport.ok()) return transport.status();
  return std::unique_ptr<Transport>(*std::move(transport));
}

INSTANTIATE_TEST_SUITE_P(Ucx, TransportConformanceTest,
                         ::testing::Values(TransportFactory{"ucx", &MakeUcx}),
                         TransportFactoryName);

}  // namespace
}  // namespace tessera::kvtransfer
