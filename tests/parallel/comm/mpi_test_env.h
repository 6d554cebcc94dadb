// The MpiRuntime of the MPI test executable (initialised by its main()), for MPI-only tests.
#pragma once

#include "parallel/comm/mpi/mpi_runtime.h"

namespace tessera::parallel::testing {

// Null outside the MPI test executable's main().
MpiRuntime* TestMpiRuntime();

}  // namespace tessera::parallel::testing
