// The BPE model of the tokenizer: byte-pair merges by rank, as `tokenizers` applies them.
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "model/tokenizer_internal.h"

namespace tessera::model::internal {
namespace {

struct Symbol {
  int32_t id;
  int32_t prev;  // -1: none
  int32_t next;  // -1: none
  bool removed;
};

struct QueuedMerge {
  int32_t rank;
  int32_t pos;
  int32_t new_id;
};

// Lowest rank first, then leftmost: the order of `tokenizers`' Merge.
struct LaterMerge {
  bool operator()(const QueuedMerge& a, const QueuedMerge& b) const {
    if (a.rank != b.rank) return a.rank > b.rank;
    return a.pos > b.pos;
  }
};

}  // namespace

BpeModel::BpeModel(absl::flat_hash_map<std::string, int32_t> vocab,
                   const std::vector<std::array<int32_t, 3>>& merges, Options options)
    : vocab_(std::move(vocab)), options_(options) {
  byte_ids_.fill(-1);
  if (options_.byte_level) {
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(std::string(1, static_cast<char>(b)));
      if (it != vocab_.end()) byte_ids_[b] = it->second;
    }
  }
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    // A repeated pair takes its last rank, as `tokenizers`' map does.
    merges_[PairKey(merges[rank][0], merges[rank][1])] =
        MergeInfo{static_cast<int32_t>(rank), merges[rank][2]};
  }
}

void BpeModel::EncodeWord(absl::string_view word, std::vector<int32_t>& ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    absl::ReaderMutexLock lock(&cache_mutex_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids.size();
  MergeWord(word, ids);
  if (cacheable) {
    absl::MutexLock lock(&cache_mutex_);
    // A full cache keeps what it has: the frequent words came first.
    if (cache_.size() < kMaxCacheEntries) {
      cache_.try_emplace(word, ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end());
    }
  }
}

void BpeModel::MergeWord(absl::string_view word, std::vector<int32_t>& ids) const {
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  auto add = [&symbols](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    if (!symbols.empty()) symbols.back().next = index;
    symbols.push_back(Symbol{id, index - 1, -1, false});
  };
  // Units not in the vocabulary become the unknown token (fused when asked) or, without one, are
  // dropped: both as `tokenizers` does.
  bool pending_unk = false;
  auto unit = [&](int32_t id) {
    if (id >= 0) {
      if (pending_unk) add(*options_.unk_id);
      pending_unk = false;
      add(id);
      return;
    }
    if (!options_.unk_id.has_value()) return;
    if (pending_unk && !options_.fuse_unk) add(*options_.unk_id);
    pending_unk = true;
  };
  if (options_.byte_level) {
    for (char c : word) unit(byte_ids_[static_cast<unsigned char>(c)]);
  } else {
    size_t pos = 0;
    while (pos < word.size()) {
      const size_t begin = pos;
      DecodeUtf8(word, pos);
      auto it = vocab_.find(word.substr(begin, pos - begin));
      unit(it == vocab_.end() ? -1 : it->second);
    }
  }
  if (pending_unk) add(*options_.unk_id);

  std::priority_queue<QueuedMerge, std::vector<QueuedMerge>, LaterMerge> queue;
  auto push_pair = [&](int32_t pos) {
    const Symbol& left = symbols[pos];
    if (left.next < 0) return;
    auto it = merges_.find(PairKey(left.id, symbols[left.next].id));
    if (it != merges_.end()) queue.push(QueuedMerge{it->second.rank, pos, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) push_pair(i);

  while (!queue.empty()) {
    const QueuedMerge top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.removed || left.next < 0) continue;
    Symbol& right = symbols[left.next];
    // Skip entries made stale by earlier merges of either side.
    auto it = merges_.find(PairKey(left.id, right.id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    left.id = top.new_id;
    right.removed = true;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) push_pair(left.prev);
    push_pair(top.pos);
  }
  for (const Symbol& symbol : symbols) {
    if (!symbol.removed) ids.push_back(symbol.id);
  }
}

}  // namespace tessera::model::internal
