#pragma once
// Where tests find the committed files (tests/reference/...): the source tree they were built
// from, or $TESSERA_SOURCE_DIR when set (binaries built on one machine and run from a copy of the
// tree elsewhere, as scripts/gpu_prebuild.sh's are on the GPU machine).

#include <cstdlib>
#include <string>

namespace tessera::testing {

inline std::string SourceDir() {
  const char* dir = std::getenv("TESSERA_SOURCE_DIR");
  return dir != nullptr && *dir != '\0' ? std::string(dir) : std::string(TESSERA_SOURCE_DIR);
}

}  // namespace tessera::testing
