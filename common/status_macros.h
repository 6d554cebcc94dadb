// Status propagation helpers used at every module boundary (absl::Status / absl::StatusOr).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define TESSERA_RETURN_IF_ERROR(expr)                                   \
  do {                                                                  \
    if (::absl::Status tessera_status = (expr); !tessera_status.ok()) { \
      return tessera_status;                                            \
    }                                                                   \
  } while (false)

#define TESSERA_STATUS_CONCAT_INNER_(x, y) x##y
#define TESSERA_STATUS_CONCAT_(x, y) TESSERA_STATUS_CONCAT_INNER_(x, y)

// `TESSERA_ASSIGN_OR_RETURN(auto x, MakeX());` declares/assigns `x` from a StatusOr, or returns
// its error status from the enclosing function.
#define TESSERA_ASSIGN_OR_RETURN(lhs, rexpr) \
  TESSERA_ASSIGN_OR_RETURN_IMPL_(TESSERA_STATUS_CONCAT_(tessera_statusor_, __LINE__), lhs, rexpr)

#define TESSERA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                   \
  if (!statusor.ok()) {                                      \
    return std::move(statusor).status();                     \
  }                                                          \
  lhs = *std::move(statusor)
