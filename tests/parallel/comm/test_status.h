// Status assertions for the comm tests (Debian's GoogleTest has no absl::Status matchers).
#pragma once

#include "absl/status/status.h"
#include "gtest/gtest.h"

#define COMM_EXPECT_OK(expr)                                    \
  do {                                                          \
    const ::absl::Status comm_expect_status = (expr);           \
    EXPECT_TRUE(comm_expect_status.ok()) << comm_expect_status; \
  } while (false)

#define COMM_ASSERT_OK(expr)                                    \
  do {                                                          \
    const ::absl::Status comm_assert_status = (expr);           \
    ASSERT_TRUE(comm_assert_status.ok()) << comm_assert_status; \
  } while (false)

#define COMM_EXPECT_CODE(expr, expected_code)                                    \
  do {                                                                           \
    const ::absl::Status comm_expect_status = (expr);                            \
    EXPECT_EQ(comm_expect_status.code(), (expected_code)) << comm_expect_status; \
  } while (false)
