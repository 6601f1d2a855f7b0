// Token shards and the corpus pipeline: write / read back, header validation (wrong magic, wrong
// length, truncation), the document rules, a deterministic train / validation split, and
// tokenize_corpus output that does not depend on the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/mmap_file.h"
#include "io/token_shard.h"
#include "test_util.h"
#include "tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"

namespace mlkv {
namespace {

std::string read_bytes(const std::string& path) { return read_text_file(path); }
void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream(path, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenShard, WriteReadBackBothDtypes) {
  test::TempDir dir;
  for (TokenDtype dt : {TokenDtype::kU16, TokenDtype::kU32}) {
    int32_t n_vocab = dt == TokenDtype::kU16 ? 65536 : 200000;
    std::string path = dir.file(std::string("s_") + dtype_name(dt) + ".bin");
    TokenShardWriter w(path, dt, n_vocab, 7);
    std::vector<int32_t> a = {1, 2, 3, n_vocab - 1}, b = {0, 9};
    w.append(a, true);
    w.append(b, false);
    w.finish();
    TokenShard s(path);
    EXPECT_EQ(s.dtype(), dt);
    EXPECT_EQ(s.n_tokens(), 7u);
    EXPECT_EQ(s.header().n_docs, 1u);
    EXPECT_EQ(s.eos_id(), 7);
    EXPECT_EQ(s.n_vocab(), static_cast<uint32_t>(n_vocab));
    std::vector<int32_t> all(7);
    s.read(0, 7, all.data());
    EXPECT_EQ(all, (std::vector<int32_t>{1, 2, 3, n_vocab - 1, 7, 0, 9}));
    EXPECT_EQ(s.at(3), static_cast<uint32_t>(n_vocab - 1));
    s.validate_tokens();
    EXPECT_NE(error_of([&] { s.read(5, 3, all.data()); }).find("past the end"), std::string::npos);
    EXPECT_EQ(std::filesystem::file_size(path), kShardHeaderBytes + 7 * static_cast<size_t>(dt));
  }
}

TEST(TokenShard, WriterRejectsOutOfRangeIds) {
  test::TempDir dir;
  TokenShardWriter w(dir.file("x.bin"), TokenDtype::kU16, 100, 0);
  std::vector<int32_t> bad = {5, 100};
  EXPECT_NE(error_of([&] { w.append(bad); }).find("out of range"), std::string::npos);
  EXPECT_EQ(w.n_tokens(), 0u);
  EXPECT_NE(error_of([&] { TokenShardWriter(dir.file("y.bin"), TokenDtype::kU16, 70000, 0); }).find("uint16"),
            std::string::npos);
}

TEST(TokenShard, CorruptFilesGiveClearErrors) {
  test::TempDir dir;
  std::string path = dir.file("good.bin");
  TokenShardWriter w(path, TokenDtype::kU16, 1000, 0);
  w.append(std::vector<int32_t>{1, 2, 3, 4}, true);
  w.finish();
  const std::string good = read_bytes(path);

  auto expect_error = [&](const std::string& bytes, const std::string& what) {
    std::string p = dir.file("bad.bin");
    write_bytes(p, bytes);
    std::string msg = error_of([&] { TokenShard s(p); });
    EXPECT_NE(msg.find(what), std::string::npos) << "message: '" << msg << "'";
    EXPECT_NE(msg.find(p), std::string::npos) << "the message names the file: " << msg;
  };
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  expect_error(bad_magic, "wrong magic");
  expect_error(good.substr(0, good.size() - 2), "length mismatch");  // truncated token array
  expect_error(good + "xx", "length mismatch");                       // trailing bytes
  expect_error(good.substr(0, 20), "shorter than");                    // truncated header
  expect_error("", "shorter than");
  std::string bad_version = good;
  bad_version[8] = 9;
  expect_error(bad_version, "version");
  std::string bad_dtype = good;
  bad_dtype[12] = 3;
  expect_error(bad_dtype, "token size");
  std::string huge = good;
  std::memset(&huge[16], 0xFF, 8);  // n_tokens = 2^64 - 1
  expect_error(huge, "length mismatch");
  // A token >= n_vocab is found by validate_tokens().
  std::string bad_token = good;
  bad_token[kShardHeaderBytes] = static_cast<char>(0xFF);
  bad_token[kShardHeaderBytes + 1] = static_cast<char>(0xFF);
  write_bytes(dir.file("tok.bin"), bad_token);
  TokenShard s(dir.file("tok.bin"));
  EXPECT_NE(error_of([&] { s.validate_tokens(); }).find("n_vocab"), std::string::npos);
  EXPECT_NE(error_of([&] { TokenShard x(dir.file("missing.bin")); }).find("missing.bin"), std::string::npos);
}

std::vector<std::string> docs_of(const std::string& text, TxtDocRule rule, size_t max = 1 << 20) {
  std::vector<DocUnit> units;
  split_txt_documents(text, rule, max, units);
  std::vector<std::string> out;
  for (const auto& u : units) out.push_back(std::string(u.text) + (u.ends_document ? "|" : "+"));
  return out;
}

TEST(Corpus, DocumentRules) {
  using V = std::vector<std::string>;
  const std::string t = "\n\np1 a\np1 b\n\np2\n\n\n\nstory2\n  \n\t\nstory3\n";
  EXPECT_EQ(docs_of(t, TxtDocRule::kBlank2), (V{"p1 a\np1 b\n\np2|", "story2|", "story3|"}));
  EXPECT_EQ(docs_of(t, TxtDocRule::kBlank), (V{"p1 a\np1 b|", "p2|", "story2|", "story3|"}));
  EXPECT_EQ(docs_of(t, TxtDocRule::kLine), (V{"p1 a|", "p1 b|", "p2|", "story2|", "story3|"}));
  EXPECT_EQ(docs_of(t, TxtDocRule::kFile), (V{"p1 a\np1 b\n\np2\n\n\n\nstory2\n  \n\t\nstory3|"}));
  // Long documents are cut at line breaks; only the last piece ends the document.
  EXPECT_EQ(docs_of("aaaa\nbbbb\ncccc\n", TxtDocRule::kFile, 10), (V{"aaaa\nbbbb\n+", "cccc|"}));
  EXPECT_EQ(docs_of("abcdefghij", TxtDocRule::kFile, 4), (V{"abcd+", "efgh+", "ij|"}));
}

TEST(Corpus, SplitIsDeterministicAndNearTheFraction) {
  int val = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string doc = "document number " + std::to_string(i);
    bool v = is_validation_unit(doc, 42, 0.1);
    EXPECT_EQ(v, is_validation_unit(doc, 42, 0.1));
    val += v;
  }
  EXPECT_NEAR(val / 20000.0, 0.1, 0.01);
  int moved = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string doc = "d" + std::to_string(i);
    moved += is_validation_unit(doc, 1, 0.5) != is_validation_unit(doc, 2, 0.5);
  }
  EXPECT_GT(moved, 300);  // another seed, another split
  EXPECT_FALSE(is_validation_unit("x", 1, 0.0));
}

TEST(Corpus, TokenizeCorpusRoundTripsAndIgnoresThreadCount) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  test::TempDir dir;
  std::string txt = dir.file("a.txt"), jsonl = dir.file("b.jsonl");
  std::string text;
  for (int i = 0; i < 300; ++i) {
    text += "Story " + std::to_string(i) + " begins.\nIt has two lines, é and 日本.\n\n\n";
  }
  write_bytes(txt, text);
  write_bytes(jsonl, "{\"text\": \"first json doc\"}\n\n{\"text\": \"second\\njson doc\", \"id\": 2}\n");
  TokenizeOptions opt;
  opt.inputs = {txt, jsonl};
  opt.val_fraction = 0.2;
  opt.seed = 7;
  opt.progress = false;
  opt.shard_tokens = 1000;  // several shards
  std::vector<std::string> first_files;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    opt.out_dir = dir.file("out" + std::to_string(threads));
    TokenizeStats st = tokenize_corpus(*tok, opt);
    EXPECT_EQ(st.train_docs + st.val_docs, 302u);
    EXPECT_GT(st.val_docs, 30u);
    EXPECT_GT(st.train_shards.size(), 1u);
    // Read every shard back: the docs, decoded, are the inputs' documents.
    std::vector<std::string> docs;
    uint64_t total = 0;
    std::vector<std::string> files = st.train_shards;
    files.insert(files.end(), st.val_shards.begin(), st.val_shards.end());
    std::string all_bytes;
    for (const auto& f : files) {
      TokenShard s(f);
      EXPECT_EQ(s.dtype(), TokenDtype::kU16);
      EXPECT_EQ(s.eos_id(), 50256);
      s.validate_tokens();
      std::vector<int32_t> ids(s.n_tokens());
      s.read(0, ids.size(), ids.data());
      total += ids.size();
      std::vector<int32_t> cur;
      for (int32_t id : ids) {
        if (id == 50256) {
          docs.push_back(tok->decode(cur));
          cur.clear();
        } else {
          cur.push_back(id);
        }
      }
      EXPECT_TRUE(cur.empty()) << "a shard ends inside a document";
      all_bytes += read_bytes(f);
    }
    EXPECT_EQ(total, st.train_tokens + st.val_tokens);
    EXPECT_EQ(docs.size(), 302u);
    EXPECT_EQ(std::count(docs.begin(), docs.end(), "Story 5 begins.\nIt has two lines, é and 日本."), 1);
    EXPECT_EQ(std::count(docs.begin(), docs.end(), "second\njson doc"), 1);
    first_files.push_back(all_bytes);
    auto meta = nlohmann::json::parse(read_text_file(opt.out_dir + "/meta.json"));
    EXPECT_EQ(meta["train"]["tokens"].get<uint64_t>(), st.train_tokens);
    EXPECT_EQ(meta["dtype"], "uint16");
  }
  EXPECT_EQ(first_files[0], first_files[1]) << "output depends on the thread count";
}

// A corpus that is one long document (200 KB of Shakespeare without double blank lines) gives 7
// units of 32 KiB: a hash split of so few units held out 0, 14 or 33% of the text for a 10%
// split. The units are cut finer then, so the held-out share comes near the fraction, and the
// statistics say what was held out.
TEST(Corpus, FewUnitsAreCutFinerForTheSplit) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  test::TempDir dir;
  write_bytes(dir.file("s.txt"),
              read_text_file(test::shared_path("text/tinyshakespeare.txt")).substr(0, 200000));
  TokenizeOptions opt;
  opt.inputs = {dir.file("s.txt")};
  opt.out_dir = dir.file("out");
  opt.val_fraction = 0.1;
  opt.progress = false;
  const TokenizeStats st = tokenize_corpus(*tok, opt);
  EXPECT_LT(st.unit_bytes, opt.max_doc_bytes);
  EXPECT_GE(st.unit_bytes, 1024u);
  EXPECT_GE(st.units, 150u);
  EXPECT_EQ(st.train_units + st.val_units, st.units);
  EXPECT_NEAR(st.val_share(), 0.1, 0.04)
      << st.val_tokens << " of " << st.train_tokens + st.val_tokens;
  auto meta = nlohmann::json::parse(read_text_file(opt.out_dir + "/meta.json"));
  EXPECT_EQ(meta["max_doc_bytes"].get<size_t>(), st.unit_bytes);
  EXPECT_EQ(meta["val"]["units"].get<uint64_t>(), st.val_units);
  EXPECT_EQ(meta["val"]["tokens"].get<uint64_t>(), st.val_tokens);
  // Without a split the units stay as asked.
  opt.val_fraction = 0;
  opt.out_dir = dir.file("out0");
  EXPECT_EQ(tokenize_corpus(*tok, opt).unit_bytes, opt.max_doc_bytes);
}

// --out appears whole: an earlier output is replaced (no shard of it survives), a folder holding
// anything else is refused and left alone, and nothing but --out is left in its parent.
TEST(Corpus, OutputFolderIsReplacedWholeOrRefused) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  test::TempDir dir;
  std::string text;
  for (int i = 0; i < 200; ++i) text += "Document " + std::to_string(i) + " is here.\n\n\n";
  write_bytes(dir.file("a.txt"), text);
  TokenizeOptions opt;
  opt.inputs = {dir.file("a.txt")};
  opt.out_dir = dir.file("data");
  opt.progress = false;
  opt.shard_tokens = 100;  // many shards
  const size_t many = tokenize_corpus(*tok, opt).train_shards.size();
  ASSERT_GT(many, 3u);
  opt.shard_tokens = 100000;  // one shard: the others must be gone
  const TokenizeStats st = tokenize_corpus(*tok, opt);
  ASSERT_EQ(st.train_shards.size(), 1u);
  EXPECT_EQ(st.train_shards[0], std::filesystem::absolute(dir.file("data/train_000.bin")).string());
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(opt.out_dir))
    files += e.is_regular_file();
  EXPECT_EQ(files, 2u);  // train_000.bin, meta.json
  size_t entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.str())) ++entries;
  EXPECT_EQ(entries, 2u);  // a.txt, data: no temporary folder left
  std::filesystem::create_directories(dir.file("mine"));
  write_bytes(dir.file("mine/notes.txt"), "keep me");
  opt.out_dir = dir.file("mine");
  const std::string msg = error_of([&] { tokenize_corpus(*tok, opt); });
  EXPECT_NE(msg.find("not a token-shard folder"), std::string::npos) << msg;
  EXPECT_EQ(read_text_file(dir.file("mine/notes.txt")), "keep me");
}

TEST(Corpus, BadJsonlNamesFileAndLine) {
  MLKV_REQUIRE_SHARED();
  auto tok = load_tokenizer(test::shared_path("tokenizers/gpt2"));
  test::TempDir dir;
  write_bytes(dir.file("bad.jsonl"), "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  TokenizeOptions opt;
  opt.inputs = {dir.file("bad.jsonl")};
  opt.out_dir = dir.file("out");
  opt.progress = false;
  std::string msg = error_of([&] { tokenize_corpus(*tok, opt); });
  EXPECT_NE(msg.find("bad.jsonl:2"), std::string::npos) << msg;
}

}  // namespace
}  // namespace mlkv
