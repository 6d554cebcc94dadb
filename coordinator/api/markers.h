// Text markers in streamed model output (<think>, <tool_call>, [TOOL_CALLS]), shared by the
// streaming parsers of reasoning.h and tool_calls.h.
#pragma once

#include <algorithm>
#include <cstddef>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace tessera::coordinator::api {

// The longest end of `text` that is a proper beginning of `marker`: what a stream must hold back,
// since the next piece may complete the marker.
inline size_t MarkerPrefixAtEnd(absl::string_view text, absl::string_view marker) {
  for (size_t n = std::min(text.size(), marker.size() - 1); n > 0; --n) {
    if (absl::EndsWith(text, marker.substr(0, n))) return n;
  }
  return 0;
}

}  // namespace tessera::coordinator::api
