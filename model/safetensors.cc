#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/memory/memory.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "nlohmann/json.hpp"

namespace tessera::model {
namespace {

using json = nlohmann::json;
using internal::DescribeJson;

// The reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderSize = 100'000'000;
// Real tensors have a handful of dimensions; this bounds what a malicious header can ask for.
constexpr size_t kMaxRank = 32;
constexpr absl::string_view kMetadataKey = "__metadata__";
constexpr absl::string_view kIndexFile = "model.safetensors.index.json";
constexpr absl::string_view kSingleFile = "model.safetensors";

uint64_t ReadLittleEndian64(const char* bytes) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[i]);
  return value;
}

absl::Status ErrnoError(int error, absl::string_view path, absl::string_view what) {
  return absl::ErrnoToStatus(error, absl::StrCat(path, ": ", what, ": ", std::strerror(error)));
}

absl::Status TensorError(absl::string_view source, absl::string_view tensor,
                         absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": tensor \"", tensor, "\": ", what));
}

// Reads a non-negative integer that fits `limit`, or returns false.
bool ReadUnsigned(const json& value, uint64_t limit, uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
  } else if (value.is_number_integer()) {
    const int64_t signed_value = value.get<int64_t>();
    if (signed_value < 0) return false;
    out = static_cast<uint64_t>(signed_value);
  } else {
    return false;
  }
  return out <= limit;
}

absl::StatusOr<SafetensorsTensorInfo> ParseTensorEntry(const std::string& name, const json& entry,
                                                       uint64_t data_size,
                                                       absl::string_view source) {
  if (!entry.is_object()) {
    return TensorError(source, name,
                       absl::StrCat("entry must be an object, got ", DescribeJson(entry)));
  }
  SafetensorsTensorInfo info;
  info.name = name;
  const auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return TensorError(source, name,
                       dtype_it == entry.end() ? std::string("\"dtype\" is missing")
                                               : absl::StrCat("\"dtype\" must be a string, got ",
                                                              DescribeJson(*dtype_it)));
  }
  absl::StatusOr<DataType> dtype = DataTypeFromSafetensors(dtype_it->get_ref<const std::string&>());
  if (!dtype.ok()) return TensorError(source, name, dtype.status().message());
  info.dtype = *dtype;

  const auto shape_it = entry.find("shape");
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return TensorError(source, name,
                       shape_it == entry.end() ? std::string("\"shape\" is missing")
                                               : absl::StrCat("\"shape\" must be an array, got ",
                                                              DescribeJson(*shape_it)));
  }
  if (shape_it->size() > kMaxRank) {
    return TensorError(
        source, name,
        absl::StrCat("\"shape\" has ", shape_it->size(), " dimensions (at most ", kMaxRank, ")"));
  }
  uint64_t numel = 1;
  bool numel_overflow = false;
  for (const json& dim : *shape_it) {
    uint64_t size = 0;
    if (!ReadUnsigned(dim, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), size)) {
      return TensorError(
          source, name,
          absl::StrCat("\"shape\" must hold non-negative integers, got ", DescribeJson(*shape_it)));
    }
    info.shape.push_back(static_cast<int64_t>(size));
    numel_overflow = numel_overflow || __builtin_mul_overflow(numel, size, &numel);
  }

  const auto offsets_it = entry.find("data_offsets");
  uint64_t begin = 0;
  uint64_t end = 0;
  const uint64_t max = std::numeric_limits<uint64_t>::max();
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
      !ReadUnsigned((*offsets_it)[0], max, begin) || !ReadUnsigned((*offsets_it)[1], max, end)) {
    return TensorError(source, name,
                       offsets_it == entry.end()
                           ? std::string("\"data_offsets\" is missing")
                           : absl::StrCat("\"data_offsets\" must be [begin, end] with "
                                          "non-negative integers, got ",
                                          DescribeJson(*offsets_it)));
  }
  if (begin > end) {
    return TensorError(source, name,
                       absl::StrCat("data_offsets [", begin, ", ", end, "] end before they begin"));
  }
  uint64_t nbytes = 0;
  const bool overflow =
      numel_overflow || __builtin_mul_overflow(numel, DataTypeSize(info.dtype), &nbytes);
  if (overflow || nbytes != end - begin) {
    return TensorError(
        source, name,
        absl::StrCat("data_offsets [", begin, ", ", end, "] hold ", end - begin, " bytes but ",
                     DataTypeToSafetensors(info.dtype), " ", ShapeToString(info.shape), " needs ",
                     overflow ? std::string("more than 2^64") : absl::StrCat(nbytes), " bytes"));
  }
  if (end > data_size) {
    return TensorError(source, name,
                       absl::StrCat("data_offsets [", begin, ", ", end,
                                    "] run past the end of the data (", data_size, " bytes)"));
  }
  info.begin = begin;
  info.end = end;
  return info;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const json& metadata,
                                                                 absl::string_view source) {
  if (!metadata.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": \"", kMetadataKey,
                                                   "\" must be an object of strings, got ",
                                                   DescribeJson(metadata)));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"", kMetadataKey, "\" key \"", key,
                                                     "\" must be a string, got ",
                                                     DescribeJson(value)));
    }
    out[key] = value.get<std::string>();
  }
  return out;
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(absl::string_view header_json,
                                                         uint64_t data_size,
                                                         absl::string_view source) {
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(header_json, source));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header must be a JSON object, got ", DescribeJson(root)));
  }
  SafetensorsHeader header;
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      TESSERA_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(entry, source));
      continue;
    }
    TESSERA_ASSIGN_OR_RETURN(SafetensorsTensorInfo info,
                             ParseTensorEntry(name, entry, data_size, source));
    header.tensors.push_back(std::move(info));
  }
  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  // Empty tensors occupy no bytes and overlap nothing.
  const SafetensorsTensorInfo* previous = nullptr;
  for (const SafetensorsTensorInfo& info : header.tensors) {
    if (info.begin == info.end) continue;
    if (previous != nullptr && info.begin < previous->end) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor \"", info.name, "\" (bytes [", info.begin, ", ", info.end,
                       ")) overlaps tensor \"", previous->name, "\" (bytes [", previous->begin,
                       ", ", previous->end, "))"));
    }
    previous = &info;
  }
  return header;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromBytes(absl::string_view bytes,
                                                                            std::string source) {
  if (bytes.size() < 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": truncated: ", bytes.size(), " bytes, too short for the 8-byte header length"));
  }
  const uint64_t header_size = ReadLittleEndian64(bytes.data());
  const uint64_t available = bytes.size() - 8;
  if (header_size > kMaxHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", header_size,
                                                   " is larger than the limit of ", kMaxHeaderSize,
                                                   " bytes"));
  }
  if (header_size > available) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": truncated: header length ",
                                                   header_size, " runs past the end of the file (",
                                                   bytes.size(), " bytes)"));
  }
  const absl::string_view header_text = bytes.substr(8, header_size);
  const uint64_t data_size = available - header_size;
  TESSERA_ASSIGN_OR_RETURN(SafetensorsHeader header,
                           ParseSafetensorsHeader(header_text, data_size, source));
  auto file = absl::WrapUnique(new SafetensorsFile());
  file->path_ = std::move(source);
  file->data_ = bytes.data() + 8 + header_size;
  file->header_ = std::move(header);
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, path, "cannot open");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    return ErrnoError(error, path, "fstat failed");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": truncated: ", size, " bytes, too short for the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int mmap_error = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) return ErrnoError(mmap_error, path, "mmap failed");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      FromBytes(absl::string_view(static_cast<const char*>(mapping), size), path);
  if (!file.ok()) {
    ::munmap(mapping, size);
    return file.status();
  }
  (*file)->mapping_ = mapping;
  (*file)->mapping_size_ = size;
  return file;
}

absl::StatusOr<TensorView> SafetensorsFile::Get(absl::string_view name) const {
  for (const SafetensorsTensorInfo& info : header_.tensors) {
    if (info.name == name) {
      return TensorView(data_ + info.begin, info.dtype, info.shape);
    }
  }
  return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", name, "\""));
}

namespace {

// Reads the index's weight_map: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  TESSERA_ASSIGN_OR_RETURN(std::string text, internal::ReadFileToString(index_path));
  TESSERA_ASSIGN_OR_RETURN(json root, internal::ParseJson(text, index_path));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": must hold a JSON object, got ", DescribeJson(root)));
  }
  const auto map_it = root.find("weight_map");
  if (map_it == root.end() || !map_it->is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        index_path, ": \"weight_map\" must be an object (tensor name -> file name), got ",
        map_it == root.end() ? std::string("nothing") : DescribeJson(*map_it)));
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, file] : map_it->items()) {
    if (!file.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" entry \"",
                                                     tensor, "\" must be a file name, got ",
                                                     DescribeJson(file)));
    }
    const std::string& name = file.get_ref<const std::string&>();
    // Shards sit next to the index: no paths that could leave the directory.
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": \"weight_map\" entry \"",
                                                     tensor, "\" names \"", name,
                                                     "\", which is not a file name in the "
                                                     "model directory"));
    }
    weight_map[tensor] = name;
  }
  return weight_map;
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> SafetensorsCheckpoint::Open(
    const std::string& model_dir) {
  auto checkpoint = absl::WrapUnique(new SafetensorsCheckpoint());
  checkpoint->model_dir_ = model_dir;
  const std::string single_path = absl::StrCat(model_dir, "/", kSingleFile);
  const std::string index_path = absl::StrCat(model_dir, "/", kIndexFile);
  std::map<std::string, std::string> weight_map;  // empty for a single file
  // Like transformers, a single model.safetensors wins over an index.
  if (FileExists(single_path)) {
    TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                             SafetensorsFile::Open(single_path));
    checkpoint->files_.push_back(std::move(file));
  } else if (FileExists(index_path)) {
    TESSERA_ASSIGN_OR_RETURN(weight_map, ReadWeightMap(index_path));
    std::set<std::string> shards;
    for (const auto& [tensor, shard] : weight_map) shards.insert(shard);
    for (const std::string& shard : shards) {
      const std::string shard_path = absl::StrCat(model_dir, "/", shard);
      if (!FileExists(shard_path)) {
        return absl::NotFoundError(
            absl::StrCat(shard_path, ": shard listed in ", index_path, " does not exist"));
      }
      TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                               SafetensorsFile::Open(shard_path));
      checkpoint->files_.push_back(std::move(file));
    }
  } else {
    return absl::NotFoundError(absl::StrCat(model_dir, ": no weights: neither ", kSingleFile,
                                            " nor ", kIndexFile, " exists"));
  }
  // Every tensor of every file, each in exactly one file.
  for (const std::unique_ptr<SafetensorsFile>& file : checkpoint->files_) {
    for (const SafetensorsTensorInfo& info : file->header().tensors) {
      const auto [it, inserted] = checkpoint->index_.emplace(info.name, file.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("tensor \"", info.name, "\" is in both ",
                                                       it->second->path(), " and ", file->path()));
      }
    }
  }
  for (const auto& [tensor, shard] : weight_map) {
    const std::string shard_path = absl::StrCat(model_dir, "/", shard);
    const auto it = checkpoint->index_.find(tensor);
    if (it == checkpoint->index_.end()) {
      return absl::NotFoundError(absl::StrCat(shard_path, ": no tensor \"", tensor, "\", which ",
                                              index_path, " lists there"));
    }
    if (it->second->path() != shard_path) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": lists tensor \"", tensor,
                                                     "\" in ", shard_path, " but it is in ",
                                                     it->second->path()));
    }
  }
  return checkpoint;
}

absl::StatusOr<TensorView> SafetensorsCheckpoint::Get(absl::string_view name) const {
  const auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(absl::StrCat(model_dir_, ": no tensor \"", name, "\""));
  }
  return it->second->Get(name);
}

std::vector<std::string> SafetensorsCheckpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, file] : index_) names.push_back(name);
  return names;
}

namespace {

absl::Status WriteAll(int fd, const char* data, size_t size, const std::string& path) {
  while (size > 0) {
    const size_t chunk = std::min<size_t>(size, size_t{1} << 30);
    const ssize_t written = ::write(fd, data, chunk);
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, path, "write failed");
    }
    data += written;
    size -= static_cast<size_t>(written);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> BuildHeader(
    const std::string& path, const std::vector<std::pair<std::string, TensorView>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[std::string(kMetadataKey)] = metadata;
  std::set<absl::string_view> names;
  uint64_t offset = 0;
  for (const auto& [name, view] : tensors) {
    if (name == kMetadataKey || !names.insert(name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor name \"", name, "\" is reserved or given twice"));
    }
    if (view.device().type != DeviceType::kCpu || !view.is_contiguous() ||
        (view.data() == nullptr && view.numel() != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", name,
                                                     "\" must be a contiguous host view, got ",
                                                     view.DebugString()));
    }
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = std::string(DataTypeToSafetensors(view.dtype()));
    entry["shape"] = std::vector<int64_t>(view.shape().begin(), view.shape().end());
    entry["data_offsets"] = {offset, offset + view.nbytes()};
    offset += view.nbytes();
    header[name] = std::move(entry);
  }
  std::string text = header.dump(-1, ' ', /*ensure_ascii=*/false,
                                 nlohmann::ordered_json::error_handler_t::replace);
  // As the reference implementation does: pad with spaces so the data starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, TensorView>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  TESSERA_ASSIGN_OR_RETURN(std::string header, BuildHeader(path, tensors, metadata));
  const std::string tmp_path = absl::StrCat(path, ".tmp");
  const int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError(errno, tmp_path, "cannot create");
  auto write_everything = [&]() -> absl::Status {
    char length[8];
    uint64_t size = header.size();
    for (char& byte : length) {
      byte = static_cast<char>(size & 0xff);
      size >>= 8;
    }
    TESSERA_RETURN_IF_ERROR(WriteAll(fd, length, sizeof(length), tmp_path));
    TESSERA_RETURN_IF_ERROR(WriteAll(fd, header.data(), header.size(), tmp_path));
    for (const auto& [name, view] : tensors) {
      TESSERA_RETURN_IF_ERROR(
          WriteAll(fd, static_cast<const char*>(view.data()), view.nbytes(), tmp_path));
    }
    return absl::OkStatus();
  };
  absl::Status status = write_everything();
  if (::close(fd) != 0 && status.ok()) status = ErrnoError(errno, tmp_path, "close failed");
  if (status.ok() && ::rename(tmp_path.c_str(), path.c_str()) != 0) {
    status = ErrnoError(errno, path, absl::StrCat("rename from ", tmp_path, " failed"));
  }
  if (!status.ok()) ::unlink(tmp_path.c_str());
  return status;
}

}  // namespace tessera::model
