// BPE encoding and decoding (see bpe.h). The merge loop is the usual one: repeatedly merge the
// adjacent pair with the lowest merge rank, leftmost first on ties, using a heap over candidate
// pairs so that long words stay O(n log n).
#include "tokenizer/bpe.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <atomic>

#include "core/check.h"
#include "tokenizer/detail.h"
#include "tokenizer/utf8.h"

namespace mlkv {

namespace {

constexpr int32_t kMaxVocab = 1 << 22;  // 4M ids: above any real vocabulary; bounds allocations
constexpr size_t kMaxCachedWord = 256;  // longer words are rare and not worth caching

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

// Word -> ids cache, one per thread and tokenizer, so encoding threads never share a lock or a
// cache line. A thread keeps the caches of its last few tokenizers (keyed by a unique instance id,
// never by address); a cache that grows past its bound is cleared (natural text has a small
// working set).
class BpeTokenizer::WordCache {
 public:
  using Map = std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>>;
  static Map& for_tokenizer(uint64_t owner) {
    struct Slot {
      uint64_t owner = 0;
      Map map;
    };
    thread_local std::array<Slot, 4> slots;
    thread_local size_t next_slot = 0;
    for (auto& s : slots) {
      if (s.owner == owner) {
        if (s.map.size() >= kMaxEntries) s.map.clear();
        return s.map;
      }
    }
    Slot& s = slots[next_slot++ % slots.size()];
    s.owner = owner;
    Map().swap(s.map);
    return s.map;
  }

 private:
  static constexpr size_t kMaxEntries = 1 << 18;
};

namespace {
std::atomic<uint64_t> g_next_instance{1};
}  // namespace

BpeTokenizer::BpeTokenizer(BpeSpec spec)
    : source_(std::move(spec.source)),
      normalizer_(std::move(spec.normalizer)),
      pre_tokenizer_(std::move(spec.pre_tokenizer)),
      byte_fallback_(spec.byte_fallback),
      fuse_unk_(spec.fuse_unk),
      ignore_merges_(spec.ignore_merges),
      decode_first_(spec.decode_first),
      bos_id_(spec.bos_id),
      eos_id_(spec.eos_id),
      instance_(g_next_instance.fetch_add(1)) {
  if (!normalizer_) normalizer_ = std::make_unique<Normalizer>();
  if (!pre_tokenizer_) pre_tokenizer_ = std::make_unique<PreTokenizer>();
  byte_level_ = pre_tokenizer_->byte_level();

  // Ids: the vocabulary plus added tokens; the largest id fixes n_vocab.
  int32_t max_id = -1;
  for (const auto& [piece, id] : spec.vocab) {
    MLKV_REQUIRE(id >= 0 && id < kMaxVocab, source_, ": vocabulary id ", id, " of '", piece,
                 "' is out of range");
    max_id = std::max(max_id, id);
  }
  for (const auto& t : spec.added) {
    MLKV_REQUIRE(t.id >= 0 && t.id < kMaxVocab, source_, ": added token id ", t.id, " of '",
                 t.content, "' is out of range");
    max_id = std::max(max_id, t.id);
  }
  MLKV_REQUIRE(max_id >= 0, source_, ": empty vocabulary");
  pieces_.assign(static_cast<size_t>(max_id) + 1, std::string());
  bytes_.assign(pieces_.size(), std::string());
  std::vector<bool> seen(pieces_.size(), false);
  piece_ids_.reserve(spec.vocab.size());
  text_ids_.reserve(spec.vocab.size());
  for (const auto& [piece, id] : spec.vocab) {
    MLKV_REQUIRE(!seen[id], source_, ": vocabulary id ", id, " is used by two pieces");
    seen[id] = true;
    pieces_[id] = piece;
    piece_ids_.emplace(piece, id);
    std::string bytes;
    if (byte_level_ && utf8::byte_level_to_bytes(piece, &bytes)) {
      bytes_[id] = bytes;
    } else if (int b = detail::byte_fallback_value(piece); b >= 0) {
      bytes_[id] = std::string(1, static_cast<char>(b));
    } else {
      bytes_[id] = piece;
      if (!byte_level_) {
        for (const auto& [from, to] : spec.decode_replace) bytes_[id] = replace_all(bytes_[id], from, to);
      }
    }
    text_ids_.emplace(byte_level_ ? bytes_[id] : piece, id);
  }
  for (const auto& t : spec.added) {
    pieces_[t.id] = t.content;
    bytes_[t.id] = t.content;
    piece_ids_.emplace(t.content, t.id);
    (t.normalized ? normalized_added_ : raw_added_).add(t);  // as Hugging Face splits them
  }

  for (int b = 0; b < 256; ++b) {
    byte_ids_[b] = -1;
    byte_fallback_ids_[b] = -1;
    if (byte_level_) {
      auto it = piece_ids_.find(utf8::bytes_to_byte_level(std::string(1, static_cast<char>(b))));
      if (it != piece_ids_.end()) byte_ids_[b] = it->second;
    }
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = piece_ids_.find(name);
    if (it != piece_ids_.end()) byte_fallback_ids_[b] = it->second;
  }
  if (!spec.unk_token.empty()) {
    auto it = piece_ids_.find(spec.unk_token);
    MLKV_REQUIRE(it != piece_ids_.end(), source_, ": unk_token '", spec.unk_token,
                 "' is not in the vocabulary");
    unk_id_ = it->second;
  }

  size_t cap = 16;
  while (cap < 2 * spec.merges.size()) cap *= 2;
  merges_.assign(cap, MergeSlot{});
  merge_shift_ = 64 - __builtin_ctzll(cap);
  for (size_t r = 0; r < spec.merges.size(); ++r) {
    const auto& [a, b] = spec.merges[r];
    auto ia = piece_ids_.find(a), ib = piece_ids_.find(b), im = piece_ids_.find(a + b);
    MLKV_REQUIRE(ia != piece_ids_.end() && ib != piece_ids_.end(), source_, ": merge ", r, " ('", a,
                 "' '", b, "') uses a piece that is not in the vocabulary");
    MLKV_REQUIRE(im != piece_ids_.end(), source_, ": merge ", r, " ('", a, "' '", b,
                 "') produces '", a + b, "', which is not in the vocabulary");
    // A pair listed twice keeps its first (best) rank.
    const uint64_t key = pair_key(ia->second, ib->second);
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;
    while (merges_[i].key != kEmptyKey && merges_[i].key != key) i = (i + 1) & (cap - 1);
    if (merges_[i].key == kEmptyKey) merges_[i] = {key, static_cast<int32_t>(r), im->second};
  }
}

BpeTokenizer::~BpeTokenizer() = default;

const BpeTokenizer::MergeSlot* BpeTokenizer::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = pair_key(left, right);
  const size_t mask = merges_.size() - 1;
  for (size_t i = (key * 0x9E3779B97F4A7C15ull) >> merge_shift_;; i = (i + 1) & mask) {
    const MergeSlot& s = merges_[i];
    if (s.key == key) return &s;
    if (s.key == kEmptyKey) return nullptr;
  }
}

int32_t BpeTokenizer::checked(int32_t id) const {
  detail::check_id(id, n_vocab());
  return id;
}

std::string BpeTokenizer::token_piece(int32_t id) const { return pieces_[checked(id)]; }
std::string BpeTokenizer::token_bytes(int32_t id) const { return bytes_[checked(id)]; }

std::string BpeTokenizer::token_bytes_at(int32_t id, bool at_start) const {
  const std::string& b = bytes_[checked(id)];
  if (!at_start || b.empty()) return b;
  if (decode_first_ == BpeSpec::FirstPiece::kStripOneSpace && b[0] == ' ') return b.substr(1);
  if (decode_first_ == BpeSpec::FirstPiece::kDropSpaces && detail::byte_fallback_value(pieces_[id]) < 0) {
    return replace_all(b, " ", "");
  }
  return b;
}

int32_t BpeTokenizer::piece_to_id(std::string_view piece) const {
  auto it = piece_ids_.find(std::string(piece));
  return it == piece_ids_.end() ? -1 : it->second;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  return detail::decode_ids(*this, ids);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool add_bos) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  if (utf8::is_valid(text)) {
    encode_raw(text, ids);
  } else {
    encode_raw(utf8::sanitize(text), ids);
  }
  return ids;
}

// Raw text: cut out the added tokens that match before normalization.
void BpeTokenizer::encode_raw(std::string_view s, std::vector<int32_t>& ids) const {
  if (raw_added_.empty()) {
    encode_normalized(s, true, ids);
    return;
  }
  std::vector<AddedTokenMatcher::Part> parts;
  raw_added_.split(s, parts);
  for (const auto& p : parts) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      encode_normalized(s.substr(p.begin, p.end - p.begin), p.begin == 0, ids);
    }
  }
}

// Normalize, then cut out the added tokens that match normalized text.
void BpeTokenizer::encode_normalized(std::string_view s, bool at_start,
                                     std::vector<int32_t>& ids) const {
  std::string norm;
  if (normalizer_->apply(s, &norm)) s = norm;
  if (normalized_added_.empty()) {
    encode_plain(s, at_start, ids);
    return;
  }
  std::vector<AddedTokenMatcher::Part> parts;
  normalized_added_.split(s, parts);
  for (const auto& p : parts) {
    if (p.id >= 0) {
      ids.push_back(p.id);
    } else {
      encode_plain(s.substr(p.begin, p.end - p.begin), at_start && p.begin == 0, ids);
    }
  }
}

// Pre-tokenize a segment that holds no added token and BPE each word.
void BpeTokenizer::encode_plain(std::string_view s, bool at_start, std::vector<int32_t>& ids) const {
  if (s.empty()) return;
  std::string prefixed;
  if (pre_tokenizer_->add_prefix_space() && s[0] != ' ') {
    prefixed.reserve(s.size() + 1);
    prefixed += ' ';
    prefixed += s;
    s = prefixed;
  } else if (pre_tokenizer_->metaspace()) {
    const std::string& rep = pre_tokenizer_->meta_replacement();
    prefixed = replace_all(s, " ", rep);
    auto scheme = pre_tokenizer_->meta_prepend();
    bool prepend = scheme == PreTokenizer::Prepend::kAlways ||
                   (scheme == PreTokenizer::Prepend::kFirst && at_start);
    if (prepend && prefixed.compare(0, rep.size(), rep) != 0) prefixed.insert(0, rep);
    s = prefixed;
  }
  std::vector<PreTokenizer::Span> words;
  words.reserve(s.size() / 4 + 1);
  pre_tokenizer_->split(s, words);
  for (auto [b, e] : words) encode_word(s.substr(b, e - b), ids);
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& ids) const {
  if (byte_level_ && word.size() == 1 && byte_ids_[static_cast<uint8_t>(word[0])] >= 0) {
    ids.push_back(byte_ids_[static_cast<uint8_t>(word[0])]);
    return;
  }
  if (ignore_merges_) {
    auto it = text_ids_.find(std::string(word));
    if (it != text_ids_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (word.size() > kMaxCachedWord) {
    bpe(word, ids);
    return;
  }
  WordCache::Map& cache = WordCache::for_tokenizer(instance_);
  auto it = cache.find(word);
  if (it != cache.end()) {
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    return;
  }
  size_t start = ids.size();
  bpe(word, ids);
  cache.emplace(std::string(word), std::vector<int32_t>(ids.begin() + start, ids.end()));
}

// The symbols a word starts from: single bytes (byte-level) or characters, with unknown
// characters going to byte-fallback pieces, else the unk token, else dropped (as Hugging Face does).
void BpeTokenizer::initial_symbols(std::string_view word, std::vector<int32_t>& syms) const {
  syms.clear();
  if (byte_level_) {
    for (char c : word) {
      int32_t id = byte_ids_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        syms.push_back(id);
      } else if (unk_id_ >= 0 && !(fuse_unk_ && !syms.empty() && syms.back() == unk_id_)) {
        syms.push_back(unk_id_);
      }
    }
    return;
  }
  std::string ch;
  size_t i = 0;
  while (i < word.size()) {
    size_t start = i;
    utf8::next_code_point(word, i);
    ch.assign(word.substr(start, i - start));
    auto it = text_ids_.find(ch);
    if (it != text_ids_.end()) {
      syms.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        for (char c : ch) syms.push_back(byte_fallback_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id_ >= 0 && !(fuse_unk_ && !syms.empty() && syms.back() == unk_id_)) {
      syms.push_back(unk_id_);
    }
  }
}

void BpeTokenizer::bpe(std::string_view word, std::vector<int32_t>& ids) const {
  struct Candidate {
    int32_t rank, pos, id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<int32_t> sym, next, prev;
  thread_local std::vector<Candidate> heap;  // a min-heap through std::push_heap / pop_heap
  initial_symbols(word, sym);
  const auto n = static_cast<int32_t>(sym.size());
  if (n <= 1) {
    ids.insert(ids.end(), sym.begin(), sym.end());
    return;
  }
  next.resize(n);
  prev.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    next[i] = i + 1 < n ? i + 1 : -1;
    prev[i] = i - 1;
  }
  heap.clear();
  auto push_pair = [&](int32_t p) {
    int32_t q = next[p];
    if (q < 0) return;
    const MergeSlot* m = find_merge(sym[p], sym[q]);
    if (m == nullptr) return;
    heap.push_back({m->rank, p, m->id});
    std::push_heap(heap.begin(), heap.end(), std::greater<>());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>());
    Candidate c = heap.back();
    heap.pop_back();
    int32_t p = c.pos, q = next[p];
    if (sym[p] < 0 || q < 0) continue;  // p was merged away, or has no right neighbour now
    const MergeSlot* m = find_merge(sym[p], sym[q]);
    if (m == nullptr || m->id != c.id) continue;  // stale candidate
    sym[p] = c.id;
    sym[q] = -1;
    next[p] = next[q];
    if (next[q] >= 0) prev[next[q]] = p;
    if (prev[p] >= 0) push_pair(prev[p]);
    push_pair(p);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) ids.push_back(sym[i]);
}

}  // namespace mlkv
