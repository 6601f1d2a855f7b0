// Token streams over shards and the row rule (data.h).
#include "train/data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "io/token_shard.h"

namespace mlkv::train {

namespace fs = std::filesystem;

TokenStream::TokenStream(const std::vector<std::string>& paths) {
  MLKV_REQUIRE(!paths.empty(), "no token shards given");
  for (const auto& p : paths) {
    auto s = std::make_unique<TokenShard>(p);
    if (shards_.empty()) {
      eos_id_ = s->eos_id();
    } else {
      MLKV_REQUIRE(s->eos_id() == eos_id_, "token shard ", p, " has EOS id ", s->eos_id(), " but ",
                   paths[0], " has ", eos_id_, " (shards of one run must come from one tokenizer)");
    }
    n_vocab_ = std::max(n_vocab_, s->n_vocab());
    offset_.push_back(n_tokens_);
    n_tokens_ += static_cast<int64_t>(s->n_tokens());
    shards_.push_back(std::move(s));
  }
}

TokenStream::~TokenStream() = default;
TokenStream::TokenStream(TokenStream&&) noexcept = default;

void TokenStream::read(int64_t start, int64_t n, int32_t* out) const {
  MLKV_REQUIRE(start >= 0 && n >= 0 && start + n <= n_tokens_, "token range [", start, ", ",
               start + n, ") is outside the data (", n_tokens_, " tokens)");
  // The shard holding `start`: the last one whose offset is <= start.
  size_t i = static_cast<size_t>(std::upper_bound(offset_.begin(), offset_.end(), start) -
                                 offset_.begin()) -
             1;
  while (n > 0) {
    const int64_t local = start - offset_[i];
    const int64_t avail = static_cast<int64_t>(shards_[i]->n_tokens()) - local;
    const int64_t m = std::min(n, avail);
    if (m > 0) {
      shards_[i]->read(static_cast<uint64_t>(local), static_cast<size_t>(m), out);
      out += m;
      start += m;
      n -= m;
    }
    ++i;
  }
}

namespace {

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

RowSource::RowSource(const TokenStream& stream, int64_t begin, int64_t end, int ctx, uint64_t seed,
                     bool shuffle)
    : stream_(&stream), begin_(begin), end_(end), ctx_(ctx), seed_(seed), shuffle_(shuffle) {
  MLKV_REQUIRE(ctx > 0, "context must be positive");
  MLKV_REQUIRE(begin >= 0 && end <= stream.n_tokens() && begin <= end, "bad token range");
  n_rows_ = end - begin >= 1 ? (end - begin - 1) / ctx : 0;
}

const std::vector<int64_t>& RowSource::perm(int64_t epoch) const {
  if (cached_epoch_ != epoch) {
    perm_.resize(static_cast<size_t>(n_rows_));
    for (int64_t i = 0; i < n_rows_; ++i) perm_[static_cast<size_t>(i)] = i;
    uint64_t state = seed_ * 0x2545f4914f6cdd1dull + static_cast<uint64_t>(epoch) + 1;
    for (int64_t i = n_rows_ - 1; i > 0; --i) {
      // Uniform j in [0, i] by multiply-shift (deterministic on every platform).
      const auto r =
          static_cast<unsigned __int128>(splitmix64(state)) * static_cast<uint64_t>(i + 1);
      const auto j = static_cast<int64_t>(r >> 64);
      std::swap(perm_[static_cast<size_t>(i)], perm_[static_cast<size_t>(j)]);
    }
    cached_epoch_ = epoch;
  }
  return perm_;
}

int64_t RowSource::row_of(int64_t g) const {
  MLKV_REQUIRE(n_rows_ > 0, "the data holds no full row of ", ctx_ + 1, " tokens");
  const int64_t epoch = g / n_rows_, i = g % n_rows_;
  return shuffle_ ? perm(epoch)[static_cast<size_t>(i)] : i;
}

void RowSource::fetch(int64_t g, int32_t* out) const {
  stream_->read(begin_ + row_of(g) * ctx_, ctx_ + 1, out);
}

void RowSource::fetch_rows(int64_t g0, int count, int32_t* out) const {
  for (int i = 0; i < count; ++i) fetch(g0 + i, out + int64_t{i} * (ctx_ + 1));
}

DataFingerprint RowSource::fingerprint() const {
  DataFingerprint f;
  f.tokens = end_ - begin_;
  f.rows = n_rows_;
  uint64_t h = 0xcbf29ce484222325ull;
  std::vector<int32_t> buf(size_t{1} << 16);
  for (int64_t at = begin_; at < end_;) {
    const int64_t n = std::min<int64_t>(end_ - at, static_cast<int64_t>(buf.size()));
    stream_->read(at, n, buf.data());
    for (int64_t i = 0; i < n; ++i) {
      h ^= static_cast<uint32_t>(buf[static_cast<size_t>(i)]);
      h *= 0x100000001b3ull;
    }
    at += n;
  }
  uint64_t state = h ^ static_cast<uint64_t>(f.tokens);
  f.hash = splitmix64(state);
  return f;
}

std::string DataFingerprint::hash_hex() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash));
  return buf;
}

DataFiles find_data_files(const std::string& path) {
  DataFiles f;
  if (!fs::is_directory(path)) {
    if (!fs::exists(path)) fail_missing("data path ", path, " does not exist");
    f.train.push_back(path);
    return f;
  }
  const fs::path dir(path);
  if (fs::exists(dir / "meta.json")) {
    const auto meta =
        nlohmann::json::parse(read_text_file((dir / "meta.json").string()), nullptr, false);
    MLKV_REQUIRE(!meta.is_discarded(), (dir / "meta.json").string(), " is not valid JSON");
    auto list = [&](const char* split, std::vector<std::string>* out) {
      if (!meta.contains(split) || !meta[split].contains("shards")) return;
      for (const auto& name : meta[split]["shards"])
        out->push_back((dir / name.get<std::string>()).string());
    };
    list("train", &f.train);
    list("val", &f.val);
    if (meta.contains("tokenizer") && meta["tokenizer"].is_string()) {
      // Written as given to `mlkv tokenize`: absolute, or relative to where that ran (often the
      // data folder's parent).
      const fs::path t = meta["tokenizer"].get<std::string>();
      for (const fs::path& cand : {t, dir / t, dir.parent_path() / t}) {
        if (fs::exists(cand)) {
          f.tokenizer = cand.string();
          break;
        }
      }
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0) {
        if (name.rfind("train_", 0) == 0) f.train.push_back(e.path().string());
        if (name.rfind("val_", 0) == 0) f.val.push_back(e.path().string());
      }
    }
    std::sort(f.train.begin(), f.train.end());
    std::sort(f.val.begin(), f.val.end());
  }
  MLKV_REQUIRE(!f.train.empty(), "no training shards in ", path,
               " (expected train_*.bin or meta.json)");
  // Empty validation shards (a tokenize run with --val-fraction 0) are dropped.
  std::vector<std::string> val;
  for (const auto& p : f.val) {
    if (TokenShard(p).n_tokens() > 0) val.push_back(p);
  }
  f.val = val;
  return f;
}

}  // namespace mlkv::train
