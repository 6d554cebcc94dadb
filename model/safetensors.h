// Reading and writing the safetensors format (an 8-byte little-endian header length, a JSON
// header, then the tensor bytes), memory-mapped, single-file or sharded through
// model.safetensors.index.json. Every malformed input is an error naming the file, the tensor or
// key, and what is wrong; nothing crashes. Thread-safety: const methods may be called from any
// thread; the mapping lives as long as the object.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"
#include "model/weights.h"

namespace tessera::model {

struct SafetensorsTensorInfo {
  std::string name;
  DataType dtype = DataType::kF32;
  Shape shape;
  uint64_t begin = 0;  // offsets into the data section (after the header)
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsTensorInfo> tensors;   // sorted by begin offset
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// Parses and validates a header: JSON object, known dtypes, non-negative shapes whose byte size
// equals end - begin, offsets within `data_size`, no two tensors overlapping. `source` names the
// file in errors. This is the fuzzed entry point.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view header_json,
                                                         uint64_t data_size,
                                                         absl::string_view source);

// One mapped .safetensors file.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses an in-memory image of a file (the whole file: length, header, data). The bytes must
  // outlive the object. Used by the fuzzer and tests.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromBytes(absl::string_view bytes,
                                                                    std::string source);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const SafetensorsHeader& header() const { return header_; }
  const std::string& path() const { return path_; }
  // kNotFound naming the tensor and the file when absent.
  absl::StatusOr<TensorView> Get(absl::string_view name) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;  // munmap'd in the destructor when non-null
  size_t mapping_size_ = 0;
  const char* data_ = nullptr;  // start of the data section
  SafetensorsHeader header_;
};

// A Hugging Face model directory's weights: DIR/model.safetensors, or the shards listed by
// DIR/model.safetensors.index.json ("weight_map": tensor -> file). A tensor named by the index but
// missing from its shard, a shard file that does not exist, or a tensor present in two files is an
// error at Open.
class SafetensorsCheckpoint final : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& model_dir);

  absl::StatusOr<TensorView> Get(absl::string_view name) const override;
  std::vector<std::string> Names() const override;
  std::string Describe() const override { return model_dir_; }

 private:
  std::string model_dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*, std::less<>> index_;
};

// Writes `tensors` (contiguous host views) in safetensors format, in the given order, with
// optional `__metadata__`. Writes to a temporary file then renames, so readers never see half a
// file.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, TensorView>>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera::model
