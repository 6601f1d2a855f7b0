// llama2.c's tokenizer.bin: int32 max_token_length, then per token a float32 score, an int32 byte
// length and the bytes (no token count: tokens run to the end of the file). Encoding follows
// llama2.c's encode(): optional BOS (id 1), a dummy-prefix " " token when the text is not empty,
// one token per UTF-8 character (byte fallback <0xXX> at ids 3..258 for characters not in the
// vocabulary), then repeatedly merge the adjacent pair whose concatenation is in the vocabulary
// with the highest score, leftmost on ties. Differences, on purpose: a NUL byte is encoded as a
// byte (llama2.c stops at it), invalid UTF-8 becomes U+FFFD first (like every mlkv tokenizer), and
// special-token text ("<s>") is not matched (the file stores BOS as "\n<s>\n"; llama2.c never
// matches it either). Decoding drops BOS / EOS and the dummy-prefix space of the first piece.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "core/check.h"
#include "core/mmap_file.h"
#include "tokenizer/detail.h"
#include "tokenizer/utf8.h"

namespace mlkv::detail {

namespace {

constexpr int32_t kBos = 1, kEos = 2, kFirstByte = 3;
constexpr int32_t kMaxTokens = 1 << 22;

class Llama2cTokenizer final : public Tokenizer {
 public:
  explicit Llama2cTokenizer(const std::string& path) : path_(path) {
    MappedFile file(path);
    const uint8_t* p = file.data();
    const size_t n = file.size();
    MLKV_REQUIRE(n >= 4, path, ": too short for a llama2.c tokenizer.bin (", n, " bytes)");
    int32_t max_len = 0;
    std::memcpy(&max_len, p, 4);
    MLKV_REQUIRE(max_len > 0 && max_len < (1 << 20), path, ": bad max_token_length ", max_len);
    size_t off = 4;
    while (off < n) {
      MLKV_REQUIRE(n - off >= 8, path, ": truncated record header of token ", pieces_.size(),
                   " at byte ", off);
      float score = 0;
      int32_t len = 0;
      std::memcpy(&score, p + off, 4);
      std::memcpy(&len, p + off + 4, 4);
      off += 8;
      MLKV_REQUIRE(len >= 0 && len <= max_len, path, ": token ", pieces_.size(), " has length ",
                   len, " (max_token_length is ", max_len, ")");
      MLKV_REQUIRE(n - off >= static_cast<size_t>(len), path, ": token ", pieces_.size(),
                   " is truncated (", len, " bytes announced, ", n - off, " left)");
      MLKV_REQUIRE(!std::isnan(score), path, ": token ", pieces_.size(), " has a NaN score");
      MLKV_REQUIRE(static_cast<int32_t>(pieces_.size()) < kMaxTokens, path, ": too many tokens");
      pieces_.emplace_back(reinterpret_cast<const char*>(p + off), static_cast<size_t>(len));
      scores_.push_back(score);
      off += len;
    }
    MLKV_REQUIRE(pieces_.size() >= 3, path, ": a llama2.c tokenizer needs at least <unk>, BOS, EOS (",
                 pieces_.size(), " tokens)");
    has_bytes_ = pieces_.size() >= static_cast<size_t>(kFirstByte + 256);
    for (int b = 0; has_bytes_ && b < 256; ++b) {
      has_bytes_ = byte_fallback_value(pieces_[kFirstByte + b]) == b;
    }
    for (size_t id = 0; id < pieces_.size(); ++id) {
      ids_.emplace(pieces_[id], static_cast<int32_t>(id));  // first occurrence wins
    }
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::string clean;
    if (!utf8::is_valid(text)) {
      clean = utf8::sanitize(text);
      text = clean;
    }
    std::vector<int32_t> sym;
    sym.reserve(text.size() + 2);
    if (add_bos) sym.push_back(kBos);
    if (!text.empty()) push_char(" ", sym);  // the dummy prefix
    size_t i = 0;
    while (i < text.size()) {
      size_t start = i;
      utf8::next_code_point(text, i);
      push_char(text.substr(start, i - start), sym);
    }
    merge(sym);
    return sym;
  }

  std::string decode(const std::vector<int32_t>& ids) const override { return decode_ids(*this, ids); }
  std::string token_piece(int32_t id) const override {
    check_id(id, n_vocab());
    return pieces_[id];
  }
  std::string token_bytes(int32_t id) const override {
    check_id(id, n_vocab());
    if (id == kBos || id == kEos) return "";
    if (has_bytes_ && id >= kFirstByte && id < kFirstByte + 256) {
      return std::string(1, static_cast<char>(id - kFirstByte));
    }
    return pieces_[id];
  }
  std::string token_bytes_at(int32_t id, bool at_start) const override {
    std::string b = token_bytes(id);
    bool is_byte = has_bytes_ && id >= kFirstByte && id < kFirstByte + 256;
    if (at_start && !is_byte && !b.empty() && b[0] == ' ') b.erase(0, 1);
    return b;
  }
  int32_t n_vocab() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  std::string kind() const override { return "llama2c"; }

 private:
  void push_char(std::string_view ch, std::vector<int32_t>& sym) const {
    auto it = ids_.find(std::string(ch));
    if (it != ids_.end()) {
      sym.push_back(it->second);
    } else if (has_bytes_) {
      for (char c : ch) sym.push_back(kFirstByte + static_cast<uint8_t>(c));
    } else {
      sym.push_back(0);  // <unk>: the file has no byte pieces to fall back to
    }
  }

  // llama2.c's merge loop (best score first, leftmost on ties) with a heap instead of a rescan.
  void merge(std::vector<int32_t>& sym) const {
    struct Candidate {
      float score;
      int32_t pos, right, left_id, right_id, id;
    };
    auto worse = [](const Candidate& a, const Candidate& b) {
      return a.score != b.score ? a.score < b.score : a.pos > b.pos;
    };
    const auto n = static_cast<int32_t>(sym.size());
    if (n < 2) return;
    std::vector<int32_t> next(n), prev(n);
    for (int32_t i = 0; i < n; ++i) {
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    std::vector<Candidate> heap;
    std::string buf;
    auto push_pair = [&](int32_t p) {
      int32_t q = next[p];
      if (q < 0) return;
      buf.assign(pieces_[sym[p]]);
      buf += pieces_[sym[q]];
      auto it = ids_.find(buf);
      // llama2.c starts its best score at -1e10 and needs strictly more to merge.
      if (it == ids_.end() || !(scores_[it->second] > -1e10f)) return;
      heap.push_back({scores_[it->second], p, q, sym[p], sym[q], it->second});
      std::push_heap(heap.begin(), heap.end(), worse);
    };
    for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), worse);
      Candidate c = heap.back();
      heap.pop_back();
      int32_t p = c.pos, q = c.right;
      if (sym[p] != c.left_id || next[p] != q || sym[q] != c.right_id) continue;  // stale
      sym[p] = c.id;
      sym[q] = -1;
      next[p] = next[q];
      if (next[q] >= 0) prev[next[q]] = p;
      if (prev[p] >= 0) push_pair(prev[p]);
      push_pair(p);
    }
    size_t w = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) sym[w++] = sym[i];
    sym.resize(w);
  }

  std::string path_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> ids_;
  bool has_bytes_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c(const std::string& path) {
  return std::make_unique<Llama2cTokenizer>(path);
}

}  // namespace mlkv::detail
