// Corpus -> token shards (see corpus.h). Files are processed in order, in batches of units; each
// batch is encoded in parallel (OpenMP, dynamic schedule) and then appended in order, so the
// shards are identical whatever the thread count.
#include "tokenizer/corpus.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/atomic_dir.h"
#include "core/check.h"
#include "core/mmap_file.h"
#include "core/progress.h"
#include "core/timer.h"
#include "io/token_shard.h"

namespace mlkv {

namespace {

constexpr size_t kBatchBytes = 4u << 20;  // text per parallel batch

bool is_blank(std::string_view line) {
  for (char c : line) {
    if (c != ' ' && c != '\t' && c != '\r') return false;
  }
  return true;
}

// Appends a document [b, e) of text, cut into units of at most max_bytes at line breaks.
void emit_document(std::string_view text, size_t b, size_t e, size_t max_bytes,
                   std::vector<DocUnit>& out) {
  // Trim the final newline(s) / trailing blank lines.
  while (e > b && (text[e - 1] == '\n' || text[e - 1] == '\r')) --e;
  if (e <= b || is_blank(text.substr(b, e - b))) return;
  while (e - b > max_bytes) {
    // Cut after the last newline within the limit (or hard at the limit, at a UTF-8 boundary).
    size_t cut = text.rfind('\n', b + max_bytes - 1);
    if (cut == std::string_view::npos || cut < b) {
      cut = b + max_bytes;
      while (cut > b + 1 && (static_cast<uint8_t>(text[cut]) & 0xC0) == 0x80) --cut;
    } else {
      cut += 1;  // keep the newline with the first part
    }
    out.push_back({text.substr(b, cut - b), false});
    b = cut;
  }
  out.push_back({text.substr(b, e - b), true});
}

uint64_t mix64(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

std::string shard_name(const std::string& dir, const char* split, size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s_%03zu.bin", split, index);
  return (std::filesystem::path(dir) / buf).string();
}

// One split's output in folder `dir`: rotates shard files every shard_tokens tokens.
class SplitWriter {
 public:
  SplitWriter(const TokenizeOptions& opt, std::string dir, const char* split, const Tokenizer& tok)
      : opt_(opt),
        dir_(std::move(dir)),
        split_(split),
        dtype_(dtype_for_vocab(tok.n_vocab())),
        n_vocab_(tok.n_vocab()),
        eos_(tok.eos_id()) {}

  void append(const std::vector<int32_t>& ids, bool end_doc) {
    if (!writer_) {
      writer_ = std::make_unique<TokenShardWriter>(shard_name(dir_, split_, paths_.size()), dtype_,
                                                   n_vocab_, eos_);
    }
    writer_->append(ids, end_doc);
    tokens_ += ids.size() + (end_doc ? 1 : 0);
    docs_ += end_doc ? 1 : 0;
    ++units_;
    // Shards end at document ends only (a cut document stays in one file).
    if (end_doc && writer_->n_tokens() >= opt_.shard_tokens) close();
  }
  void close() {
    if (!writer_) return;
    paths_.push_back(writer_->path());
    writer_->finish();
    writer_.reset();
  }
  // An empty split still gets one (empty) shard so that readers find what they expect.
  void close_final() {
    if (paths_.empty() && !writer_) {
      writer_ =
          std::make_unique<TokenShardWriter>(shard_name(dir_, split_, 0), dtype_, n_vocab_, eos_);
    }
    close();
  }
  uint64_t tokens() const { return tokens_; }
  uint64_t docs() const { return docs_; }
  uint64_t units() const { return units_; }
  const std::vector<std::string>& paths() const { return paths_; }
  TokenDtype dtype() const { return dtype_; }

 private:
  const TokenizeOptions& opt_;
  std::string dir_;
  const char* split_;
  TokenDtype dtype_;
  int32_t n_vocab_, eos_;
  std::unique_ptr<TokenShardWriter> writer_;
  std::vector<std::string> paths_;
  uint64_t tokens_ = 0, docs_ = 0, units_ = 0;
};

bool has_suffix(const std::string& s, const char* suffix) {
  size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// --out may be new, an empty folder or an earlier `mlkv tokenize` output (replaced whole): never
// a folder holding anything else.
void check_out_dir(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return;
  MLKV_REQUIRE(fs::is_directory(dir, ec), "tokenize: --out '", dir, "' exists and is not a folder");
  if (fs::is_empty(dir, ec)) return;
  const fs::path meta = fs::path(dir) / "meta.json";
  const auto j = fs::is_regular_file(meta, ec)
                     ? nlohmann::json::parse(read_text_file(meta.string()), nullptr, false)
                     : nlohmann::json();
  MLKV_REQUIRE(j.is_object() && j.value("format", "") == "mlkv token shards", "tokenize: --out '",
               dir, "' exists and is not a token-shard folder (no meta.json of mlkv tokenize): ",
               "refusing to replace it");
}

// Split units the hash split needs on the validation side for its share to come near
// --val-fraction (the held-out count is binomial: about 1/sqrt(units) relative spread), and the
// smallest unit the finer split below cuts to.
constexpr double kMinValUnits = 32;
constexpr size_t kMinUnitBytes = 1024;

// The unit size: --max-doc-bytes, or smaller when the .txt inputs would give too few units for
// the split (e.g. 200 KB of Shakespeare, one document, is 7 units of 32 KiB: a 10% split of them
// held out 33% of the tokens). *units: the units at the smaller size (0 when unchanged).
size_t unit_bytes_for_split(const TokenizeOptions& opt, uint64_t* units) {
  *units = 0;
  if (opt.val_fraction <= 0) return opt.max_doc_bytes;
  std::vector<DocUnit> scratch;
  uint64_t txt_bytes = 0, other_units = 0;
  // Units at a unit size; stops early once there are stop_at.
  auto count = [&](size_t max_bytes, double stop_at) {
    uint64_t n = other_units;
    for (const auto& path : opt.inputs) {
      if (has_suffix(path, ".jsonl") || static_cast<double>(n) >= stop_at) continue;
      MappedFile file(path);
      scratch.clear();
      split_txt_documents(std::string_view(reinterpret_cast<const char*>(file.data()), file.size()),
                          opt.txt_rule, max_bytes, scratch);
      n += scratch.size();
    }
    return n;
  };
  for (const auto& path : opt.inputs) {
    if (has_suffix(path, ".jsonl")) {
      MappedFile file(path);  // one unit per non-blank line, whatever its size
      std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
      for (size_t pos = 0; pos < text.size();) {
        const size_t nl = std::min(text.find('\n', pos), text.size());
        other_units += !is_blank(text.substr(pos, nl - pos));
        pos = nl + 1;
      }
    } else {
      txt_bytes += std::filesystem::file_size(path);
    }
  }
  const size_t max_bytes = opt.max_doc_bytes;
  const double wanted = kMinValUnits / opt.val_fraction;
  if (static_cast<double>(count(max_bytes, wanted)) >= wanted || txt_bytes == 0) return max_bytes;
  const auto finer = std::max<size_t>(kMinUnitBytes, static_cast<size_t>(txt_bytes / wanted));
  if (finer >= max_bytes) return max_bytes;
  *units = count(finer, INFINITY);
  return finer;
}

}  // namespace

TxtDocRule parse_txt_doc_rule(const std::string& s) {
  if (s == "blank2") return TxtDocRule::kBlank2;
  if (s == "blank") return TxtDocRule::kBlank;
  if (s == "line") return TxtDocRule::kLine;
  if (s == "file") return TxtDocRule::kFile;
  fail("unknown document rule '", s, "' (expected blank2, blank, line or file)");
}

const char* txt_doc_rule_name(TxtDocRule r) {
  switch (r) {
    case TxtDocRule::kBlank2: return "blank2";
    case TxtDocRule::kBlank: return "blank";
    case TxtDocRule::kLine: return "line";
    case TxtDocRule::kFile: return "file";
  }
  return "?";
}

void split_txt_documents(std::string_view text, TxtDocRule rule, size_t max_doc_bytes,
                         std::vector<DocUnit>& out) {
  if (max_doc_bytes == 0) max_doc_bytes = 1;
  if (rule == TxtDocRule::kFile) {
    size_t b = 0;
    while (b < text.size()) {  // skip leading blank lines
      size_t nl = text.find('\n', b);
      size_t le = nl == std::string_view::npos ? text.size() : nl;
      if (!is_blank(text.substr(b, le - b))) break;
      b = nl == std::string_view::npos ? text.size() : nl + 1;
    }
    emit_document(text, b, text.size(), max_doc_bytes, out);
    return;
  }
  const size_t need_blank = rule == TxtDocRule::kBlank2 ? 2 : 1;
  size_t doc_start = std::string_view::npos;  // first byte of the current document
  size_t doc_end = 0;                         // end of its last non-blank line (incl. newline)
  size_t blanks = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    size_t line_end = nl == std::string_view::npos ? text.size() : nl;
    size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
    std::string_view line = text.substr(pos, line_end - pos);
    if (is_blank(line)) {
      ++blanks;
      if (doc_start != std::string_view::npos && blanks >= need_blank) {
        emit_document(text, doc_start, doc_end, max_doc_bytes, out);
        doc_start = std::string_view::npos;
      }
    } else {
      blanks = 0;
      if (rule == TxtDocRule::kLine) {
        emit_document(text, pos, next, max_doc_bytes, out);
      } else {
        if (doc_start == std::string_view::npos) doc_start = pos;
        doc_end = next;
      }
    }
    pos = next;
  }
  if (doc_start != std::string_view::npos) emit_document(text, doc_start, doc_end, max_doc_bytes, out);
}

bool is_validation_unit(std::string_view text, uint64_t seed, double fraction) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  uint64_t h = 0xcbf29ce484222325ull ^ mix64(seed);  // FNV-1a over the bytes, then mixed
  for (char c : text) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  h = mix64(h);
  return static_cast<double>(h >> 11) * 0x1.0p-53 < fraction;
}

TokenizeStats tokenize_corpus(const Tokenizer& tok, const TokenizeOptions& opt) {
  MLKV_REQUIRE(!opt.inputs.empty(), "tokenize: no input files");
  MLKV_REQUIRE(opt.val_fraction >= 0 && opt.val_fraction < 1, "tokenize: --val-fraction ",
               opt.val_fraction, " must be in [0, 1)");
  MLKV_REQUIRE(tok.eos_id() >= 0, "tokenize: the tokenizer has no EOS token to separate documents");
  MLKV_REQUIRE(opt.shard_tokens > 0, "tokenize: shard size must be positive");
  MLKV_REQUIRE(opt.max_doc_bytes > 0, "tokenize: --max-doc-bytes must be positive");
  check_out_dir(opt.out_dir);
  std::error_code ec;
  TokenizeStats st;
  for (const auto& in : opt.inputs) {
    MLKV_REQUIRE(std::filesystem::is_regular_file(in, ec), "tokenize: input '", in,
                 "' is not a readable file");
    st.input_bytes += std::filesystem::file_size(in, ec);
  }
  uint64_t planned_units = 0;
  st.unit_bytes = unit_bytes_for_split(opt, &planned_units);
  if (st.unit_bytes != opt.max_doc_bytes && opt.on_note) {
    opt.on_note(cat("tokenize: ", st.input_bytes, " B of text in split units of --max-doc-bytes ",
                    opt.max_doc_bytes, " are too few for --val-fraction ", opt.val_fraction,
                    ": cutting documents at line breaks into units of ", st.unit_bytes,
                    " B instead (", planned_units, " units)"));
  }
  // Shards and meta.json go into a temporary folder that replaces --out whole at the end.
  AtomicDirWriter out(opt.out_dir);
  SplitWriter train(opt, out.path(), "train", tok), val(opt, out.path(), "val", tok);
  Timer timer;
  std::optional<ProgressBar> bar;
  if (opt.progress) bar.emplace("tokenize", static_cast<double>(st.input_bytes) / 1e6, "MB");
  uint64_t done_bytes = 0;
  const bool bos = opt.add_bos && tok.bos_id() >= 0;

  std::vector<DocUnit> units;
  std::vector<std::string> owned;  // JSONL texts (units point into them)
  std::vector<std::vector<int32_t>> encoded;
  for (const auto& path : opt.inputs) {
    MappedFile file(path);
    std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
    units.clear();
    owned.clear();
    const bool is_jsonl = has_suffix(path, ".jsonl");
    if (is_jsonl) {
      size_t pos = 0, line_no = 0;
      while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        size_t end = nl == std::string_view::npos ? text.size() : nl;
        std::string_view line = text.substr(pos, end - pos);
        pos = end + 1;
        ++line_no;
        if (is_blank(line)) continue;
        auto j = nlohmann::json::parse(line, nullptr, false);
        MLKV_REQUIRE(!j.is_discarded(), path, ":", line_no, ": not valid JSON");
        MLKV_REQUIRE(j.is_object() && j.contains(opt.text_field) && j[opt.text_field].is_string(),
                     path, ":", line_no, ": no string field \"", opt.text_field, "\"");
        owned.push_back(j[opt.text_field].get<std::string>());
      }
      for (const auto& s : owned) {
        if (!s.empty()) units.push_back({s, true});
      }
    } else {
      split_txt_documents(text, opt.txt_rule, st.unit_bytes, units);
    }
    // Batches of about kBatchBytes: encode in parallel, append in order.
    size_t i = 0;
    while (i < units.size()) {
      size_t j = i, bytes = 0;
      while (j < units.size() && (j == i || bytes < kBatchBytes)) bytes += units[j++].text.size();
      encoded.assign(j - i, {});
#pragma omp parallel for schedule(dynamic, 8)
      for (size_t k = i; k < j; ++k) {
        bool starts_doc = k == 0 || units[k - 1].ends_document;
        encoded[k - i] = tok.encode(units[k].text, bos && starts_doc);
      }
      for (size_t k = i; k < j; ++k) {
        const DocUnit& u = units[k];
        SplitWriter& w = is_validation_unit(u.text, opt.seed, opt.val_fraction) ? val : train;
        w.append(encoded[k - i], u.ends_document);
      }
      st.units += j - i;
      i = j;
      if (opt.progress) {
        // Progress in input bytes: how far into the file the last unit of the batch ends.
        const DocUnit& last = units[j - 1];
        double frac = is_jsonl ? static_cast<double>(j) / units.size()
                               : static_cast<double>(last.text.data() + last.text.size() -
                                                     text.data()) / std::max<size_t>(text.size(), 1);
        double mb = (static_cast<double>(done_bytes) + frac * text.size()) / 1e6;
        char suffix[96];
        std::snprintf(suffix, sizeof suffix, "%.1f MB/s | %llu tokens",
                      mb / std::max(timer.seconds(), 1e-9),
                      static_cast<unsigned long long>(train.tokens() + val.tokens()));
        bar->update(mb, suffix);
      }
    }
    done_bytes += text.size();
  }
  train.close_final();
  if (opt.val_fraction > 0) val.close_final();
  if (bar) bar->finish();
  st.seconds = timer.seconds();
  st.train_tokens = train.tokens();
  st.val_tokens = val.tokens();
  st.train_docs = train.docs();
  st.val_docs = val.docs();
  st.train_units = train.units();
  st.val_units = val.units();

  auto names = [](const std::vector<std::string>& paths) {
    std::vector<std::string> out;
    for (const auto& p : paths) out.push_back(std::filesystem::path(p).filename().string());
    return out;
  };
  for (const auto& n : names(train.paths())) st.train_shards.push_back(out.destination() + "/" + n);
  for (const auto& n : names(val.paths())) st.val_shards.push_back(out.destination() + "/" + n);
  nlohmann::json meta = {
      {"format", "mlkv token shards"},
      {"version", kShardVersion},
      {"tokenizer", opt.tokenizer_path},
      {"tokenizer_kind", tok.kind()},
      {"n_vocab", tok.n_vocab()},
      {"eos_id", tok.eos_id()},
      {"bos_per_document", bos},
      {"dtype", dtype_name(train.dtype())},
      {"val_fraction", opt.val_fraction},
      {"seed", opt.seed},
      {"txt_doc_rule", txt_doc_rule_name(opt.txt_rule)},
      {"max_doc_bytes", st.unit_bytes},
      {"inputs", opt.inputs},
      {"input_bytes", st.input_bytes},
      {"train",
       {{"shards", names(st.train_shards)},
        {"tokens", st.train_tokens},
        {"docs", st.train_docs},
        {"units", st.train_units}}},
      {"val",
       {{"shards", names(st.val_shards)},
        {"tokens", st.val_tokens},
        {"docs", st.val_docs},
        {"units", st.val_units}}},
  };
  write_text_file((std::filesystem::path(out.path()) / "meta.json").string(), meta.dump(2) + "\n");
  out.commit();
  // Few units on the validation side, or a share far from the fraction: say what was held out.
  const bool few = static_cast<double>(st.val_units) < kMinValUnits / 2;
  const bool far = std::fabs(st.val_share() - opt.val_fraction) > 0.5 * opt.val_fraction;
  if (opt.val_fraction > 0 && (few || far) && opt.on_note) {
    char share[32];
    std::snprintf(share, sizeof share, "%.1f%%", 100.0 * st.val_share());
    opt.on_note(cat("warning: tokenize: ", st.val_units, " of ", st.units,
                    " split units went to validation, ", share,
                    " of the tokens for --val-fraction ", opt.val_fraction,
                    ": the split assigns whole units (.jsonl records, .txt documents cut at ",
                    st.unit_bytes, " B), and few units give a share far from the fraction; ",
                    "more or smaller documents give a closer one"));
  }
  return st;
}

}  // namespace mlkv
