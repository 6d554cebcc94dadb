// libFuzzer target: the UCX transport's wire formats (kvtransfer/ucx/wire.h) — what a peer sends
// before anything reaches UCX. The first byte picks the decoder; the rest is its input. Decoding
// must never crash, leak or read out of bounds, and a decoded descriptor must survive a round trip.
// Built and run by scripts/run-fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "absl/strings/string_view.h"
#include "kvtransfer/ucx/wire.h"

namespace w = tessera::kvtransfer::ucx_wire;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 6) {
    case 0: {
      auto d = w::DecodeDescriptor(bytes);
      if (d.ok()) {
        auto again = w::DecodeDescriptor(w::EncodeDescriptor(*d));
        if (!again.ok() || again->name != d->name || again->worker_address != d->worker_address ||
            again->regions.size() != d->regions.size()) {
          std::abort();  // a descriptor that does not survive its own encoding
        }
      }
      break;
    }
    case 1:
      (void)w::DecodeHello(bytes);
      break;
    case 2:
      (void)w::DecodeHelloAck(bytes);
      break;
    case 3:
      (void)w::DecodeData(bytes);
      break;
    case 4:
      (void)w::DecodeAck(bytes);
      break;
    default:
      (void)w::DecodeBye(bytes);
      break;
  }
  return 0;
}
