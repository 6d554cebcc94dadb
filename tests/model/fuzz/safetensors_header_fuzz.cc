// libFuzzer target: arbitrary bytes as a whole .safetensors image (SafetensorsFile::FromBytes),
// and as a bare header (ParseSafetensorsHeader). Every input must give a value or a Status; any
// crash, sanitizer report or exception is a bug. Built by scripts/run-fuzz.sh.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto file = tessera::model::SafetensorsFile::FromBytes(bytes, "fuzz.safetensors");
  if (file.ok()) {
    // Every tensor the header lists must be readable, inside the buffer.
    for (const auto& info : (*file)->header().tensors) {
      auto view = (*file)->Get(info.name);
      if (!view.ok()) __builtin_trap();
      const auto* begin = static_cast<const char*>(view->data());
      if (begin < bytes.data() || begin + view->nbytes() > bytes.data() + bytes.size()) {
        __builtin_trap();
      }
      // Touch the first and last bytes so ASan sees any out-of-bounds view.
      if (view->nbytes() > 0) {
        volatile char first = begin[0];
        volatile char last = begin[view->nbytes() - 1];
        (void)first;
        (void)last;
      }
    }
  }
  // The same bytes as a header, with the data size taken from the first byte.
  const uint64_t data_size = size > 0 ? data[0] : 0;
  (void)tessera::model::ParseSafetensorsHeader(bytes, data_size, "fuzz header");
  return 0;
}
