#include "coordinator/api/api_keys.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace tessera::coordinator::api {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(ApiKeysTest, WithoutKeysEverythingIsAllowed) {
  const ApiKeys none;
  EXPECT_FALSE(none.enabled());
  EXPECT_TRUE(none.Allows(""));
  EXPECT_TRUE(none.Allows("Bearer anything"));
}

TEST(ApiKeysTest, OnlyABearerOfAConfiguredKeyIsAllowed) {
  const ApiKeys keys({"s3cret", "other"});
  EXPECT_TRUE(keys.enabled());
  EXPECT_TRUE(keys.Allows("Bearer s3cret"));
  EXPECT_TRUE(keys.Allows("bEaReR other"));
  for (const char* bad : {"", "Bearer", "Bearer ", "Bearer s3cre", "Bearer s3crett", "s3cret",
                          "Basic s3cret", "Bearer  s3cret", "Bearer s3cret ", "Token other"}) {
    EXPECT_FALSE(keys.Allows(bad)) << "'" << bad << "'";
  }
}

TEST(ApiKeysTest, ValidateNamesTheFlagAndPositionButNotTheKey) {
  EXPECT_TRUE(ApiKeys::Validate({}, "--api-key").ok());
  EXPECT_TRUE(ApiKeys::Validate({"a-b_c.D~1"}, "--api-key").ok());
  const absl::Status empty = ApiKeys::Validate({"fine", ""}, "--api-key");
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(empty.message()), HasSubstr("--api-key: key 2 is empty"));
  const absl::Status space = ApiKeys::Validate({"has space"}, "TESSERA_API_KEY");
  EXPECT_THAT(std::string(space.message()), HasSubstr("TESSERA_API_KEY: key 1 holds whitespace"));
  EXPECT_THAT(std::string(space.message()), Not(HasSubstr("has space")));
}

}  // namespace
}  // namespace tessera::coordinator::api
