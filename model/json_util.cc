#include "model/json_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tessera::model::internal {
namespace {

using json = nlohmann::json;

// A SAX handler that accepts everything and keeps the first parse error; used only to explain
// why a document failed to parse.
class ErrorRecorder final : public nlohmann::json_sax<json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& ex) override {
    if (!failed_) {
      failed_ = true;
      position_ = position;
      message_ = ex.what();
    }
    return false;
  }

  bool failed() const { return failed_; }
  std::size_t position() const { return position_; }
  const std::string& message() const { return message_; }

 private:
  bool failed_ = false;
  std::size_t position_ = 0;
  std::string message_;
};

}  // namespace

absl::StatusOr<json> ParseJson(absl::string_view text, absl::string_view source) {
  json value = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (!value.is_discarded()) return value;
  ErrorRecorder recorder;
  json::sax_parse(text.begin(), text.end(), &recorder, nlohmann::detail::input_format_t::json,
                  /*strict=*/true);
  if (!recorder.failed()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON"));
  }
  // The parser's message starts with "[json.exception.parse_error.101] ": keep what follows.
  absl::string_view message = recorder.message();
  if (absl::StartsWith(message, "[json.exception.")) {
    const size_t close = message.find("] ");
    if (close != absl::string_view::npos) message.remove_prefix(close + 2);
  }
  // The message quotes the input around the error, which may not be valid UTF-8: keep it ASCII so
  // the error can travel anywhere (JSON responses, gRPC status messages).
  std::string ascii(message);
  for (char& c : ascii) {
    if (static_cast<unsigned char>(c) >= 0x80) c = '?';
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": invalid JSON: ", ascii, " (byte ", recorder.position(), ")"));
}

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    return absl::ErrnoToStatus(error, absl::StrCat(path, ": cannot open: ", std::strerror(error)));
  }
  std::string contents;
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::close(fd);
      return absl::ErrnoToStatus(error,
                                 absl::StrCat(path, ": read failed: ", std::strerror(error)));
    }
    if (n == 0) break;
    contents.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

std::string JsonTypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a number";
    case json::value_t::string:
      return "a string";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    case json::value_t::binary:
      return "binary data";
    case json::value_t::discarded:
      return "invalid JSON";
  }
  return "unknown";
}

std::string DescribeJson(const json& value) {
  if (value.is_null()) return "null";
  constexpr size_t kMaxChars = 60;
  std::string text = value.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
  if (text.size() > kMaxChars) text = absl::StrCat(text.substr(0, kMaxChars), "...");
  return absl::StrCat(JsonTypeName(value), " ", text);
}

namespace {

void AppendPythonJson(const nlohmann::ordered_json& value, int indent, int depth,
                      std::string& out) {
  const auto newline = [&](int level) {
    out.push_back('\n');
    out.append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
  };
  if (value.is_object() || value.is_array()) {
    const bool object = value.is_object();
    if (value.empty()) {
      out += object ? "{}" : "[]";
      return;
    }
    out.push_back(object ? '{' : '[');
    bool first = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      if (!first) out += indent < 0 ? ", " : ",";
      first = false;
      if (indent >= 0) newline(depth + 1);
      if (object) {
        out += nlohmann::ordered_json(it.key()).dump(
            -1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
        out += ": ";
      }
      AppendPythonJson(*it, indent, depth + 1, out);
    }
    if (indent >= 0) newline(depth);
    out.push_back(object ? '}' : ']');
    return;
  }
  if (value.is_number_float()) {
    const double x = value.get<double>();
    if (std::isnan(x)) {
      out += "NaN";
      return;
    }
    if (std::isinf(x)) {
      out += x > 0 ? "Infinity" : "-Infinity";
      return;
    }
  }
  out += value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace

std::string PythonJsonDumps(const nlohmann::ordered_json& value, int indent) {
  std::string out;
  AppendPythonJson(value, indent, 0, out);
  return out;
}

}  // namespace tessera::model::internal
