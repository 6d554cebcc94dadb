// Grammar::Compile: a JSON schema (or a choice list) to the node tree of
// structured_output_internal.h. Every refusal names the schema location as a JSON pointer.
#include <algorithm>
#include <array>
#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "model/json_util.h"
#include "model/regex_dfa.h"
#include "model/structured_output.h"
#include "model/structured_output_internal.h"
#include "nlohmann/json.hpp"

namespace tessera::model {

using internal::GrammarNode;
using internal::NodeType;
using nlohmann::json;

namespace {

// Keywords that constrain values in ways the grammar does not express: refused, never ignored.
constexpr std::array<const char*, 21> kUnsupported = {"minimum",
                                                      "maximum",
                                                      "exclusiveMinimum",
                                                      "exclusiveMaximum",
                                                      "multipleOf",
                                                      "patternProperties",
                                                      "propertyNames",
                                                      "minProperties",
                                                      "maxProperties",
                                                      "contains",
                                                      "minContains",
                                                      "maxContains",
                                                      "not",
                                                      "if",
                                                      "then",
                                                      "else",
                                                      "dependentRequired",
                                                      "dependentSchemas",
                                                      "dependencies",
                                                      "unevaluatedProperties",
                                                      "unevaluatedItems"};

// Keywords that only describe: ignored wherever they appear.
constexpr std::array<const char*, 16> kAnnotations = {
    "title",       "description",     "default",          "examples",     "$schema", "$id",
    "$comment",    "deprecated",      "readOnly",         "writeOnly",    "format",  "$defs",
    "definitions", "contentEncoding", "contentMediaType", "discriminator"};

bool IsAnnotation(const std::string& key) {
  return std::find_if(kAnnotations.begin(), kAnnotations.end(),
                      [&](const char* k) { return key == k; }) != kAnnotations.end();
}

std::string Compact(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// A key's text between its quotes, as Compact writes it.
std::string EscapedKey(const std::string& key) {
  const std::string quoted = Compact(json(key));
  return quoted.substr(1, quoted.size() - 2);
}

std::string Child(const std::string& pointer, absl::string_view token) {
  std::string escaped;
  for (char c : token) {
    if (c == '~') {
      escaped += "~0";
    } else if (c == '/') {
      escaped += "~1";
    } else {
      escaped += c;
    }
  }
  return absl::StrCat(pointer, "/", escaped);
}

}  // namespace

class GrammarBuilder {
 public:
  explicit GrammarBuilder(const json* document) : document_(document), grammar_(new Grammar()) {}

  std::unique_ptr<Grammar> Finish(const GrammarNode* root) {
    grammar_->root_ = root;
    return std::move(grammar_);
  }

  GrammarNode* New(NodeType type) {
    GrammarNode& node = grammar_->nodes_->nodes.emplace_back();
    node.type = type;
    return &node;
  }

  GrammarNode* Literals(std::vector<std::string> literals) {
    GrammarNode* node = New(NodeType::kLiterals);
    std::sort(literals.begin(), literals.end());
    literals.erase(std::unique(literals.begin(), literals.end()), literals.end());
    node->literals = std::move(literals);
    return node;
  }

  // Any JSON value.
  const GrammarNode* Any() {
    if (any_ != nullptr) return any_;
    GrammarNode* any = New(NodeType::kUnion);
    any_ = any;
    GrammarNode* object = New(NodeType::kObject);
    object->additional = any;
    GrammarNode* array = New(NodeType::kArray);
    array->items = any;
    any->alternatives = {object, array, New(NodeType::kString), New(NodeType::kNumber),
                         Literals({"true", "false", "null"})};
    return any_;
  }

  const GrammarNode* AnyObject() {
    GrammarNode* object = New(NodeType::kObject);
    object->additional = Any();
    return object;
  }

  absl::StatusOr<const GrammarNode*> Compile(const json& schema, const std::string& at, int depth);

  // No union may reach itself through unions alone: its parse would never read a byte.
  absl::Status CheckUnionCycles() const {
    absl::flat_hash_map<const GrammarNode*, int> color;  // 1: on the path, 2: done
    std::function<bool(const GrammarNode*)> cyclic = [&](const GrammarNode* node) {
      if (node->type != NodeType::kUnion) return false;
      int& c = color[node];
      if (c == 1) return true;
      if (c == 2) return false;
      c = 1;
      for (const GrammarNode* alt : node->alternatives) {
        if (cyclic(alt)) return true;
      }
      color[node] = 2;
      return false;
    };
    for (const GrammarNode& node : grammar_->nodes_->nodes) {
      if (cyclic(&node)) {
        return absl::InvalidArgumentError(
            "json_schema: a $ref cycle that reads nothing (a schema that is only a reference to "
            "itself)");
      }
    }
    // How many schemas a value may be, through nested unions (acyclic now).
    absl::flat_hash_map<const GrammarNode*, int64_t> leaves;
    std::function<int64_t(const GrammarNode*)> count = [&](const GrammarNode* node) -> int64_t {
      if (node->type != NodeType::kUnion) return 1;
      if (const auto it = leaves.find(node); it != leaves.end()) return it->second;
      int64_t n = 0;
      for (const GrammarNode* alt : node->alternatives) {
        n = std::min<int64_t>(n + count(alt), int64_t{1} << 40);
      }
      leaves[node] = n;
      return n;
    };
    for (const GrammarNode& node : grammar_->nodes_->nodes) {
      if (count(&node) > kMaxAlternatives) {
        return absl::InvalidArgumentError(absl::StrCat("json_schema: a value may be any of ",
                                                       count(&node),
                                                       " schemas (anyOf, oneOf and type "
                                                       "lists, nested); at most ",
                                                       kMaxAlternatives, " are supported"));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<const GrammarNode*> Ref(const std::string& ref, const std::string& at, int depth);
  absl::StatusOr<const GrammarNode*> Typed(const std::string& type, const json& schema,
                                           const std::string& at, int depth);
  absl::StatusOr<const GrammarNode*> Object(const json& schema, const std::string& at, int depth);
  absl::StatusOr<const GrammarNode*> Array(const json& schema, const std::string& at, int depth);

  const json* document_;
  std::unique_ptr<Grammar> grammar_;
  const GrammarNode* any_ = nullptr;
  absl::flat_hash_map<std::string, const GrammarNode*> refs_;
};

namespace {

absl::Status Error(const std::string& at, auto&&... parts) {
  return absl::InvalidArgumentError(
      absl::StrCat("json_schema: ", at.empty() ? "the schema" : at, ": ", parts...));
}

absl::StatusOr<int32_t> Count(const json& schema, const char* key, const std::string& at,
                              int32_t fallback) {
  const auto it = schema.find(key);
  if (it == schema.end()) return fallback;
  if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > INT32_MAX) {
    return Error(Child(at, key), "must be a non-negative integer, got ",
                 internal::DescribeJson(*it));
  }
  return static_cast<int32_t>(it->get<int64_t>());
}

}  // namespace

absl::StatusOr<const GrammarNode*> GrammarBuilder::Compile(const json& schema,
                                                           const std::string& at, int depth) {
  if (depth > 64) return Error(at, "nested more than 64 schemas deep");
  if (schema.is_boolean()) {
    if (schema.get<bool>()) return Any();
    return Error(at, "the schema false accepts no value");
  }
  if (!schema.is_object()) {
    return Error(at, "a schema must be an object or a boolean, got ",
                 internal::DescribeJson(schema));
  }
  for (const char* keyword : kUnsupported) {
    if (schema.contains(keyword)) {
      return Error(Child(at, keyword), "the keyword '", keyword,
                   "' is not supported in structured outputs");
    }
  }
  if (const auto it = schema.find("uniqueItems"); it != schema.end() && *it != json(false)) {
    return Error(Child(at, "uniqueItems"),
                 "the keyword 'uniqueItems' is not supported in structured outputs");
  }
  if (const auto it = schema.find("$ref"); it != schema.end()) {
    for (const auto& [key, value] : schema.items()) {
      if (key != "$ref" && !IsAnnotation(key)) {
        return Error(at, "'", key, "' alongside $ref is not supported");
      }
    }
    if (!it->is_string()) {
      return Error(Child(at, "$ref"), "must be a string, got ", internal::DescribeJson(*it));
    }
    return Ref(it->get<std::string>(), Child(at, "$ref"), depth);
  }
  if (const auto it = schema.find("const"); it != schema.end()) return Literals({Compact(*it)});
  if (const auto it = schema.find("enum"); it != schema.end()) {
    if (!it->is_array() || it->empty()) {
      return Error(Child(at, "enum"), "must be a non-empty array, got ",
                   internal::DescribeJson(*it));
    }
    std::vector<std::string> literals;
    for (const json& value : *it) literals.push_back(Compact(value));
    return Literals(std::move(literals));
  }
  for (const char* keyword : {"anyOf", "oneOf", "allOf"}) {
    const auto it = schema.find(keyword);
    if (it == schema.end()) continue;
    const std::string here = Child(at, keyword);
    if (!it->is_array() || it->empty()) {
      return Error(here, "must be a non-empty array of schemas, got ", internal::DescribeJson(*it));
    }
    for (const char* other : {"type", "properties", "items", "anyOf", "oneOf", "allOf"}) {
      if (other != std::string(keyword) && schema.contains(other)) {
        return Error(at, "'", keyword, "' alongside '", other, "' is not supported");
      }
    }
    if (std::string(keyword) == "allOf") {
      if (it->size() != 1) return Error(here, "allOf of more than one schema is not supported");
      return Compile((*it)[0], Child(here, "0"), depth + 1);
    }
    GrammarNode* node = New(NodeType::kUnion);
    for (size_t i = 0; i < it->size(); ++i) {
      TESSERA_ASSIGN_OR_RETURN(const GrammarNode* alt,
                               Compile((*it)[i], Child(here, std::to_string(i)), depth + 1));
      node->alternatives.push_back(alt);
    }
    return node;
  }
  std::vector<std::string> types;
  if (const auto it = schema.find("type"); it != schema.end()) {
    if (it->is_string()) {
      types.push_back(it->get<std::string>());
    } else if (it->is_array() && !it->empty() &&
               std::all_of(it->begin(), it->end(), [](const json& t) { return t.is_string(); })) {
      for (const json& t : *it) types.push_back(t.get<std::string>());
    } else {
      return Error(Child(at, "type"), "must be a type name or a non-empty list of them, got ",
                   internal::DescribeJson(*it));
    }
  } else if (schema.contains("properties") || schema.contains("additionalProperties") ||
             schema.contains("required")) {
    types.push_back("object");
  } else if (schema.contains("items") || schema.contains("prefixItems") ||
             schema.contains("minItems") || schema.contains("maxItems")) {
    types.push_back("array");
  } else if (schema.contains("minLength") || schema.contains("maxLength") ||
             schema.contains("pattern")) {
    types.push_back("string");
  } else {
    return Any();
  }
  if (types.size() == 1) return Typed(types[0], schema, at, depth);
  GrammarNode* node = New(NodeType::kUnion);
  for (const std::string& type : types) {
    TESSERA_ASSIGN_OR_RETURN(const GrammarNode* alt, Typed(type, schema, at, depth));
    node->alternatives.push_back(alt);
  }
  return node;
}

absl::StatusOr<const GrammarNode*> GrammarBuilder::Typed(const std::string& type,
                                                         const json& schema, const std::string& at,
                                                         int depth) {
  if (type == "object") return Object(schema, at, depth);
  if (type == "array") return Array(schema, at, depth);
  if (type == "string") {
    GrammarNode* node = New(NodeType::kString);
    TESSERA_ASSIGN_OR_RETURN(node->min_length, Count(schema, "minLength", at, 0));
    TESSERA_ASSIGN_OR_RETURN(node->max_length, Count(schema, "maxLength", at, INT32_MAX));
    if (node->min_length > node->max_length) {
      return Error(at, "minLength ", node->min_length, " exceeds maxLength ", node->max_length);
    }
    if (const auto it = schema.find("pattern"); it != schema.end()) {
      if (!it->is_string()) {
        return Error(Child(at, "pattern"), "must be a string, got ", internal::DescribeJson(*it));
      }
      absl::StatusOr<std::shared_ptr<const RegexDfa>> dfa =
          RegexDfa::Compile(it->get<std::string>(), /*search=*/true);
      if (!dfa.ok()) return Error(Child(at, "pattern"), dfa.status().message());
      node->pattern = *std::move(dfa);
    }
    return node;
  }
  if (type == "number") return New(NodeType::kNumber);
  if (type == "integer") return New(NodeType::kInteger);
  if (type == "boolean") return Literals({"true", "false"});
  if (type == "null") return Literals({"null"});
  return Error(Child(at, "type"), "unknown type '", type,
               "' (object, array, string, number, integer, boolean or null)");
}

absl::StatusOr<const GrammarNode*> GrammarBuilder::Object(const json& schema, const std::string& at,
                                                          int depth) {
  GrammarNode* node = New(NodeType::kObject);
  const auto properties = schema.find("properties");
  if (properties != schema.end() && !properties->is_object()) {
    return Error(Child(at, "properties"), "must be an object, got ",
                 internal::DescribeJson(*properties));
  }
  const bool has_properties = properties != schema.end() && !properties->empty();
  if (const auto it = schema.find("additionalProperties"); it != schema.end()) {
    if (*it != json(false)) {
      TESSERA_ASSIGN_OR_RETURN(node->additional,
                               Compile(*it, Child(at, "additionalProperties"), depth + 1));
    }
  } else if (!has_properties) {
    node->additional = Any();
  }
  std::vector<std::pair<std::string, const GrammarNode*>> keys;
  if (has_properties) {
    for (const auto& [name, value] : properties->items()) {
      TESSERA_ASSIGN_OR_RETURN(const GrammarNode* value_node,
                               Compile(value, Child(Child(at, "properties"), name), depth + 1));
      keys.emplace_back(name, value_node);
    }
  }
  std::vector<std::string> required;
  if (const auto it = schema.find("required"); it != schema.end()) {
    if (!it->is_array() ||
        !std::all_of(it->begin(), it->end(), [](const json& r) { return r.is_string(); })) {
      return Error(Child(at, "required"), "must be an array of property names, got ",
                   internal::DescribeJson(*it));
    }
    for (const json& r : *it) {
      const std::string name = r.get<std::string>();
      const bool known =
          std::any_of(keys.begin(), keys.end(), [&](const auto& k) { return k.first == name; });
      if (!known) {
        if (node->additional == nullptr) {
          return Error(Child(at, "required"), "requires '", name,
                       "', which is not in properties and additionalProperties is false");
        }
        keys.emplace_back(name, node->additional);
      }
      required.push_back(name);
    }
  }
  if (keys.size() > static_cast<size_t>(kMaxObjectProperties)) {
    return Error(Child(at, "properties"), "has ", keys.size(), " properties; at most ",
                 kMaxObjectProperties, " are supported");
  }
  for (auto& [name, value] : keys) name = EscapedKey(name);
  std::sort(keys.begin(), keys.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [name, value] : keys) {
    node->keys.push_back(name);
    node->key_values.push_back(value);
  }
  for (const std::string& name : required) {
    const size_t i = static_cast<size_t>(
        std::lower_bound(node->keys.begin(), node->keys.end(), EscapedKey(name)) -
        node->keys.begin());
    node->required[i / 64] |= uint64_t{1} << (i % 64);
  }
  return node;
}

absl::StatusOr<const GrammarNode*> GrammarBuilder::Array(const json& schema, const std::string& at,
                                                         int depth) {
  GrammarNode* node = New(NodeType::kArray);
  const json* prefix = nullptr;
  const json* rest = nullptr;
  std::string rest_at;
  if (const auto it = schema.find("prefixItems"); it != schema.end()) prefix = &*it;
  if (const auto it = schema.find("items"); it != schema.end()) {
    if (it->is_array()) {  // draft 4 to 2019-09 tuples: items [...] then additionalItems
      prefix = &*it;
      if (const auto more = schema.find("additionalItems"); more != schema.end()) {
        rest = &*more;
        rest_at = Child(at, "additionalItems");
      }
    } else {
      rest = &*it;
      rest_at = Child(at, "items");
    }
  } else if (schema.contains("additionalItems")) {
    return Error(Child(at, "additionalItems"), "is only supported after a list of items");
  }
  if (prefix != nullptr) {
    if (!prefix->is_array()) {
      return Error(Child(at, "prefixItems"), "must be an array of schemas, got ",
                   internal::DescribeJson(*prefix));
    }
    for (size_t i = 0; i < prefix->size(); ++i) {
      TESSERA_ASSIGN_OR_RETURN(
          const GrammarNode* item,
          Compile((*prefix)[i], Child(Child(at, "prefixItems"), std::to_string(i)), depth + 1));
      node->prefix_items.push_back(item);
    }
  }
  if (rest == nullptr) {
    node->items = Any();
  } else if (*rest != json(false)) {
    TESSERA_ASSIGN_OR_RETURN(node->items, Compile(*rest, rest_at, depth + 1));
  }
  TESSERA_ASSIGN_OR_RETURN(node->min_items, Count(schema, "minItems", at, 0));
  TESSERA_ASSIGN_OR_RETURN(node->max_items, Count(schema, "maxItems", at, INT32_MAX));
  if (node->min_items > node->max_items) {
    return Error(at, "minItems ", node->min_items, " exceeds maxItems ", node->max_items);
  }
  if (node->items == nullptr) {
    node->max_items =
        std::min<int32_t>(node->max_items, static_cast<int32_t>(node->prefix_items.size()));
    if (node->min_items > node->max_items) {
      return Error(at, "minItems ", node->min_items, " needs more items than the ",
                   node->prefix_items.size(), " it allows");
    }
  }
  return node;
}

absl::StatusOr<const GrammarNode*> GrammarBuilder::Ref(const std::string& ref,
                                                       const std::string& at, int depth) {
  if (const auto it = refs_.find(ref); it != refs_.end()) return it->second;
  if (ref.empty() || ref[0] != '#') {
    return Error(at, "'", ref, "' is not a reference into this schema (#/...)");
  }
  const json* target = document_;
  if (ref.size() > 1) {
    if (ref[1] != '/') return Error(at, "'", ref, "' is not a JSON pointer (#/...)");
    for (absl::string_view token : absl::StrSplit(absl::string_view(ref).substr(2), '/')) {
      std::string name = absl::StrReplaceAll(token, {{"~1", "/"}, {"~0", "~"}});
      if (target->is_object() && target->contains(name)) {
        target = &(*target)[name];
      } else {
        return Error(at, "'", ref, "' names nothing in this schema");
      }
    }
  }
  // A placeholder first, so that the target may refer back to it (recursive schemas).
  GrammarNode* node = New(NodeType::kUnion);
  refs_.emplace(ref, node);
  TESSERA_ASSIGN_OR_RETURN(const GrammarNode* resolved, Compile(*target, ref.substr(1), depth + 1));
  if (resolved == node) return Error(at, "'", ref, "' refers only to itself");
  node->alternatives = {resolved};
  return node;
}

absl::StatusOr<StructuredOutput> StructuredOutputFromVllmParams(absl::string_view json_text) {
  TESSERA_ASSIGN_OR_RETURN(json params, internal::ParseJson(json_text, "structured_outputs"));
  if (!params.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected an object, got ", internal::DescribeJson(params)));
  }
  StructuredOutput out;
  std::vector<std::string> given;
  for (const auto& [key, value] : params.items()) {
    if (value.is_null() || value == json(false)) continue;
    if (key == "json") {
      if (value.is_string()) {
        out = {StructuredOutput::Kind::kJsonSchema, value.get<std::string>()};
      } else if (value.is_object() || value.is_boolean()) {
        out = {StructuredOutput::Kind::kJsonSchema, value.dump()};
      } else {
        return absl::InvalidArgumentError(absl::StrCat(
            "json: expected a JSON schema (an object), got ", internal::DescribeJson(value)));
      }
    } else if (key == "json_object") {
      out = {StructuredOutput::Kind::kJsonObject, ""};
    } else if (key == "choice") {
      out = {StructuredOutput::Kind::kChoice, value.dump()};
    } else if (key == "regex") {
      if (!value.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("regex: expected a string, got ", internal::DescribeJson(value)));
      }
      out = {StructuredOutput::Kind::kRegex, value.get<std::string>()};
    } else if (key == "grammar" || key == "structural_tag") {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " is not supported (json, json_object, choice and regex are)"));
    } else if (key == "backend" || key == "disable_fallback" || key == "disable_any_whitespace" ||
               key == "disable_additional_properties" || key == "whitespace_pattern" ||
               key == "backend_was_auto") {
      continue;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown field '", key, "'"));
    }
    given.push_back(key);
  }
  if (given.size() > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(given[0], " and ", given[1], " both given; give one"));
  }
  return out;
}

Grammar::Grammar() : nodes_(std::make_unique<Nodes>()) {}
Grammar::~Grammar() = default;

absl::StatusOr<std::shared_ptr<const Grammar>> Grammar::Compile(const StructuredOutput& spec) {
  switch (spec.kind) {
    case StructuredOutput::Kind::kNone:
      return absl::InvalidArgumentError("structured output: no grammar asked for");
    case StructuredOutput::Kind::kJsonObject: {
      GrammarBuilder builder(nullptr);
      const GrammarNode* root = builder.AnyObject();
      return std::shared_ptr<const Grammar>(builder.Finish(root));
    }
    case StructuredOutput::Kind::kJsonSchema: {
      TESSERA_ASSIGN_OR_RETURN(json schema, internal::ParseJson(spec.spec, "json_schema"));
      GrammarBuilder builder(&schema);
      TESSERA_ASSIGN_OR_RETURN(const GrammarNode* root, builder.Compile(schema, "", 0));
      TESSERA_RETURN_IF_ERROR(builder.CheckUnionCycles());
      return std::shared_ptr<const Grammar>(builder.Finish(root));
    }
    case StructuredOutput::Kind::kRegex: {
      TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<const RegexDfa> dfa,
                               RegexDfa::Compile(spec.spec, /*search=*/false));
      GrammarBuilder builder(nullptr);
      GrammarNode* root = builder.New(NodeType::kRegex);
      root->pattern = std::move(dfa);
      std::unique_ptr<Grammar> grammar = builder.Finish(root);
      grammar->leading_whitespace_ = false;
      return std::shared_ptr<const Grammar>(std::move(grammar));
    }
    case StructuredOutput::Kind::kChoice: {
      TESSERA_ASSIGN_OR_RETURN(json choices, internal::ParseJson(spec.spec, "choice"));
      if (!choices.is_array() || choices.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "choice: must be a non-empty list of strings, got ", internal::DescribeJson(choices)));
      }
      std::vector<std::string> literals;
      for (const json& choice : choices) {
        if (!choice.is_string() || choice.get<std::string>().empty()) {
          return absl::InvalidArgumentError(
              absl::StrCat("choice: every choice must be a non-empty string, got ",
                           internal::DescribeJson(choice)));
        }
        literals.push_back(choice.get<std::string>());
      }
      GrammarBuilder builder(nullptr);
      const GrammarNode* root = builder.Literals(std::move(literals));
      std::unique_ptr<Grammar> grammar = builder.Finish(root);
      grammar->leading_whitespace_ = false;
      return std::shared_ptr<const Grammar>(std::move(grammar));
    }
  }
  return absl::InvalidArgumentError("structured output: unknown kind");
}

}  // namespace tessera::model
