#include "model/safetensors.h"

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tessera::model {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A fresh directory per test under the test temp dir.
std::string MakeTempDir() {
  const testing::TestInfo* info = testing::UnitTest::GetInstance()->current_test_info();
  const std::string dir = absl::StrCat(testing::TempDir(), "/safetensors_test_",
                                       info->test_suite_name(), "_", info->name(), "_", getpid());
  EXPECT_EQ(system(absl::StrCat("rm -rf '", dir, "' && mkdir -p '", dir, "'").c_str()), 0);
  return dir;
}

void WriteFile(const std::string& path, absl::string_view bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A safetensors image: 8-byte little-endian length (`length` or the header's size), header, data.
std::string RawFile(absl::string_view header, absl::string_view data,
                    std::optional<uint64_t> length = std::nullopt) {
  uint64_t n = length.value_or(header.size());
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return absl::StrCat(out, header, data);
}

absl::Status FromBytesError(const std::string& bytes) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::FromBytes(bytes, "/models/x/model.safetensors");
  EXPECT_FALSE(file.ok());
  return file.status();
}

template <typename T>
std::vector<T> Copy(const TensorView& view) {
  std::vector<T> out(static_cast<size_t>(view.numel()));
  std::memcpy(out.data(), view.data(), view.nbytes());
  return out;
}

TEST(SafetensorsTest, WriteThenReadRoundTripsEveryDtype) {
  const std::string dir = MakeTempDir();
  const std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 42.0f};
  const std::vector<uint16_t> f16 = {F32ToF16(1.0f), F32ToF16(-0.5f), F32ToF16(65504.0f)};
  const std::vector<uint16_t> bf16 = {F32ToBF16(3.0f), F32ToBF16(-1e10f)};
  const std::vector<int64_t> i64 = {-1, 0, int64_t{1} << 40, 7};
  const std::vector<std::pair<std::string, TensorView>> tensors = {
      {"w.f32", TensorView(f32.data(), DataType::kF32, {2, 3})},
      {"w.f16", TensorView(f16.data(), DataType::kF16, {3})},
      {"w.bf16", TensorView(bf16.data(), DataType::kBF16, {1, 2})},
      {"ids.i64", TensorView(i64.data(), DataType::kI64, {2, 2})},
  };
  const std::string path = dir + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  EXPECT_NE(access((path + ".tmp").c_str(), F_OK), 0);  // renamed away

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->header().metadata.at("format"), "pt");
  ASSERT_EQ((*file)->header().tensors.size(), 4u);

  absl::StatusOr<TensorView> a = (*file)->Get("w.f32");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype(), DataType::kF32);
  EXPECT_EQ(a->shape(), (Shape{2, 3}));
  EXPECT_EQ(Copy<float>(*a), f32);
  absl::StatusOr<TensorView> b = (*file)->Get("w.f16");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->dtype(), DataType::kF16);
  EXPECT_EQ(Copy<uint16_t>(*b), f16);
  absl::StatusOr<TensorView> c = (*file)->Get("w.bf16");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->dtype(), DataType::kBF16);
  EXPECT_EQ(c->shape(), (Shape{1, 2}));
  EXPECT_EQ(Copy<uint16_t>(*c), bf16);
  absl::StatusOr<TensorView> d = (*file)->Get("ids.i64");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->dtype(), DataType::kI64);
  EXPECT_EQ(Copy<int64_t>(*d), i64);
}

TEST(SafetensorsTest, WrittenHeaderIsOrderedContiguousAndPaddedToEightBytes) {
  const std::string dir = MakeTempDir();
  const std::vector<float> x = {1, 2, 3};
  const std::vector<float> y = {4};
  const std::string path = dir + "/t.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"zeta", TensorView(x.data(), DataType::kF32, {3})},
                                      {"alpha", TensorView(y.data(), DataType::kF32, {1})}})
                  .ok());
  const std::string bytes = ReadFile(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  ASSERT_EQ(bytes.size(), 8 + n + 16);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind(R"({"zeta":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                         R"("alpha":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                         0),
            0u)
      << header;
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);
}

TEST(SafetensorsTest, ReadsAFileWrittenByTheReferenceLayout) {
  // As safetensors.torch.save_file writes {"a": tensor([1., 2.])}: metadata first, padding.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const float data[2] = {1.0f, 2.0f};
  const std::string bytes =
      RawFile(header, absl::string_view(reinterpret_cast<const char*>(data), 8));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::FromBytes(bytes, "mem");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<TensorView> a = (*file)->Get("a");
  ASSERT_TRUE(a.ok());
  EXPECT_THAT(Copy<float>(*a), ElementsAre(1.0f, 2.0f));
}

TEST(SafetensorsTest, ShardedCheckpointThroughIndex) {
  const std::string dir = MakeTempDir();
  const std::vector<float> a = {1, 2};
  const std::vector<float> b = {3, 4, 5};
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00001-of-00002.safetensors",
                               {{"a", TensorView(a.data(), DataType::kF32, {2})}})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(dir + "/model-00002-of-00002.safetensors",
                               {{"b", TensorView(b.data(), DataType::kF32, {3})}})
                  .ok());
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"metadata": {"total_size": 20}, "weight_map": {
                 "a": "model-00001-of-00002.safetensors",
                 "b": "model-00002-of-00002.safetensors"}})");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("a", "b"));
  EXPECT_EQ((*ckpt)->Describe(), dir);
  absl::StatusOr<TensorView> view = (*ckpt)->Get("b");
  ASSERT_TRUE(view.ok());
  EXPECT_EQ(Copy<float>(*view), b);
  absl::StatusOr<TensorView> missing = (*ckpt)->Get("c");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("\"c\""));
  EXPECT_THAT(missing.status().message(), HasSubstr(dir));
}

TEST(SafetensorsTest, SingleFileCheckpoint) {
  const std::string dir = MakeTempDir();
  const std::vector<float> a = {1, 2};
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors",
                               {{"a", TensorView(a.data(), DataType::kF32, {2})}})
                  .ok());
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_THAT((*ckpt)->Names(), ElementsAre("a"));
}

TEST(SafetensorsTest, EmptyTensorsOverlapNothing) {
  const std::string header =
      R"({"e":{"dtype":"F32","shape":[0,4],"data_offsets":[4,4]},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  EXPECT_TRUE(SafetensorsFile::FromBytes(RawFile(header, std::string(8, '\0')), "mem").ok());
}

// ---- One test per malformed input, showing its message -------------------------------------

TEST(SafetensorsErrorTest, TruncatedFile) {
  const absl::Status s = FromBytesError(std::string(5, '\0'));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("/models/x/model.safetensors: truncated: 5 bytes"));
}

TEST(SafetensorsErrorTest, TruncatedFileOnDisk) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/model.safetensors", "abc");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/model.safetensors");
  EXPECT_THAT(file.status().message(), HasSubstr(dir + "/model.safetensors: truncated"));
}

TEST(SafetensorsErrorTest, HeaderLengthPastEndOfFile) {
  const absl::Status s = FromBytesError(RawFile("{}", "", /*length=*/64));
  EXPECT_THAT(s.message(), HasSubstr("/models/x/model.safetensors: truncated: header length 64 "
                                     "runs past the end of the file (10 bytes)"));
}

TEST(SafetensorsErrorTest, HeaderLengthAboveLimit) {
  const absl::Status s = FromBytesError(RawFile("{}", "", /*length=*/uint64_t{1} << 62));
  EXPECT_THAT(s.message(), HasSubstr("is larger than the limit"));
}

TEST(SafetensorsErrorTest, InvalidJsonHeader) {
  const absl::Status s = FromBytesError(RawFile(R"({"a": {"dtype": "F32",)", ""));
  EXPECT_THAT(s.message(), HasSubstr("/models/x/model.safetensors: invalid JSON"));
  EXPECT_THAT(s.message(), HasSubstr("line 1, column"));
}

TEST(SafetensorsErrorTest, HeaderNotAnObject) {
  const absl::Status s = FromBytesError(RawFile("[1, 2]  ", ""));
  EXPECT_THAT(s.message(), HasSubstr("header must be a JSON object, got an array"));
}

TEST(SafetensorsErrorTest, OverlappingOffsets) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(12, '\0')));
  EXPECT_THAT(s.message(),
              HasSubstr("tensor \"b\" (bytes [4, 12)) overlaps tensor \"a\" (bytes [0, 8))"));
}

TEST(SafetensorsErrorTest, OffsetsOutOfRange) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("/models/x/model.safetensors: tensor \"a\": data_offsets [0, "
                                     "16] run past the end of the data (8 bytes)"));
}

TEST(SafetensorsErrorTest, OffsetsReversed) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("tensor \"a\": data_offsets [8, 0] end before they begin"));
}

TEST(SafetensorsErrorTest, SizeDoesNotMatchShape) {
  const std::string header = R"({"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("tensor \"a\": data_offsets [0, 8] hold 8 bytes but BF16 [2, "
                                     "3] needs 12 bytes"));
}

TEST(SafetensorsErrorTest, ShapeWhoseSizeOverflows) {
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("needs more than 2^64 bytes"));
}

TEST(SafetensorsErrorTest, NegativeShape) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("tensor \"a\": \"shape\" must hold non-negative integers"));
}

TEST(SafetensorsErrorTest, UnknownDtype) {
  const std::string header = R"({"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("/models/x/model.safetensors: tensor \"a\": unsupported "
                                     "safetensors dtype 'F8_E4M3'"));
}

TEST(SafetensorsErrorTest, MissingDataOffsets) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2]}})";
  const absl::Status s = FromBytesError(RawFile(header, std::string(8, '\0')));
  EXPECT_THAT(s.message(), HasSubstr("tensor \"a\": \"data_offsets\" is missing"));
}

TEST(SafetensorsErrorTest, MetadataNotStrings) {
  const std::string header = R"({"__metadata__":{"format":1}})";
  const absl::Status s = FromBytesError(RawFile(header, ""));
  EXPECT_THAT(s.message(), HasSubstr("\"__metadata__\" key \"format\" must be a string"));
}

TEST(SafetensorsErrorTest, MissingTensor) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::FromBytes(RawFile("{}      ", ""), "/models/x/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  absl::StatusOr<TensorView> view = (*file)->Get("model.norm.weight");
  EXPECT_EQ(view.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(view.status().message(),
              HasSubstr("/models/x/model.safetensors: no tensor \"model.norm.weight\""));
}

TEST(SafetensorsErrorTest, MissingFile) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open("/nonexistent/model.safetensors");
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(file.status().message(), HasSubstr("/nonexistent/model.safetensors: cannot open"));
}

TEST(SafetensorsErrorTest, NoWeightsInDirectory) {
  const std::string dir = MakeTempDir();
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr(dir + ": no weights: neither model.safetensors nor "
                              "model.safetensors.index.json exists"));
}

TEST(SafetensorsErrorTest, ShardListedInIndexIsMissing) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(),
              HasSubstr(dir + "/model-00001-of-00002.safetensors: shard listed in " + dir +
                        "/model.safetensors.index.json does not exist"));
}

TEST(SafetensorsErrorTest, TensorListedInIndexIsAbsentFromShard) {
  const std::string dir = MakeTempDir();
  const std::vector<float> a = {1};
  ASSERT_TRUE(WriteSafetensors(dir + "/shard.safetensors",
                               {{"a", TensorView(a.data(), DataType::kF32, {1})}})
                  .ok());
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"a": "shard.safetensors", "b": "shard.safetensors"}})");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ckpt.status().message(), HasSubstr(dir + "/shard.safetensors: no tensor \"b\""));
}

TEST(SafetensorsErrorTest, DuplicateTensorAcrossShards) {
  const std::string dir = MakeTempDir();
  const std::vector<float> a = {1};
  for (const char* shard : {"/s1.safetensors", "/s2.safetensors"}) {
    ASSERT_TRUE(
        WriteSafetensors(dir + shard, {{"a", TensorView(a.data(), DataType::kF32, {1})}}).ok());
  }
  WriteFile(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ckpt.status().message(), HasSubstr("tensor \"a\" is in both " + dir +
                                                 "/s1.safetensors and " + dir + "/s2.safetensors"));
}

TEST(SafetensorsErrorTest, IndexNamingAPathOutsideTheDirectory) {
  const std::string dir = MakeTempDir();
  WriteFile(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": "../../etc/passwd"}})");
  absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> ckpt = SafetensorsCheckpoint::Open(dir);
  EXPECT_THAT(ckpt.status().message(), HasSubstr("\"weight_map\" entry \"a\" names"));
}

TEST(SafetensorsErrorTest, WritingADuplicateName) {
  const std::string dir = MakeTempDir();
  const float x = 1;
  const absl::Status s = WriteSafetensors(
      dir + "/t.safetensors",
      {{"a", TensorView(&x, DataType::kF32, {1})}, {"a", TensorView(&x, DataType::kF32, {1})}});
  EXPECT_THAT(s.message(), HasSubstr("tensor name \"a\" is reserved or given twice"));
}

}  // namespace
}  // namespace tessera::model
