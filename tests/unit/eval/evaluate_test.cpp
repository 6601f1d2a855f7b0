// The lm-eval pieces of src/eval/evaluate.h: task resolution and input classification, text
// cutting, word counts, bits-per-byte accounting, option checks, and evaluate() on the real tiny
// model of the shared data (the results document, name de-duplication, errors).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "eval/evaluate.h"
#include "io/hf_model.h"
#include "io/token_shard.h"

namespace mlkv::eval {
namespace {

namespace fs = std::filesystem;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

void write_file(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

// A temporary folder removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("mlkv_eval_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// Every id's text is id bytes long; at the start of a text one byte less (a dummy-prefix space).
class LengthTokenizer : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view, bool) const override { return {}; }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  std::string token_piece(int32_t id) const override { return token_bytes(id); }
  std::string token_bytes(int32_t id) const override { return std::string(id, 'x'); }
  std::string token_bytes_at(int32_t id, bool at_start) const override {
    return std::string(at_start && id > 0 ? id - 1 : id, 'x');
  }
  int32_t n_vocab() const override { return 100; }
  std::string kind() const override { return "test"; }
};

TEST(Evaluate, CutTextAndCountWords) {
  EXPECT_EQ(cut_text("hello", 0), "hello");
  EXPECT_EQ(cut_text("hello", 9), "hello");
  EXPECT_EQ(cut_text("hello", 3), "hel");
  // "h\xC3\xA9llo": cutting inside the two-byte e-acute goes back to before it.
  EXPECT_EQ(cut_text("h\xC3\xA9llo", 2), "h");
  EXPECT_EQ(cut_text("h\xC3\xA9llo", 3), "h\xC3\xA9");
  EXPECT_EQ(count_words(""), 0);
  EXPECT_EQ(count_words("  one two\tthree\n\nfour \r\n"), 4);
  EXPECT_EQ(count_words("x"), 1);
}

TEST(Evaluate, TargetBytes) {
  const LengthTokenizer tok;
  const std::vector<int32_t> s = {0, 3, 5, 7, 2};
  EXPECT_EQ(target_bytes(tok, s, 4, false, -1), 3 + 5 + 7 + 2);
  EXPECT_EQ(target_bytes(tok, s, 2, false, -1), 3 + 5);         // only the predicted targets
  EXPECT_EQ(target_bytes(tok, s, 4, true, -1), 2 + 5 + 7 + 2);  // s[1] starts the text
  EXPECT_EQ(target_bytes(tok, s, 4, false, 7), 3 + 5 + 2);      // a separator is not text
  EXPECT_EQ(target_bytes(tok, s, 99, false, -1), 17);           // never past the stream
}

TEST(Evaluate, ResolveAndClassify) {
  TempDir t;
  const fs::path d = t.path;
  write_file(d / "piqa.jsonl", "{}\n");
  write_file(d / "arc_test.jsonl", "{}\n");
  write_file(d / "lambada_openai_test.jsonl", "{}\n");
  write_file(d / "notes.txt", "some text");
  std::string shard(kShardHeaderBytes, '\0');
  std::copy(kShardMagic, kShardMagic + sizeof kShardMagic, shard.begin());
  write_file(d / "data.bin", shard);
  write_file(d / "short.bin", "MLKV");

  EXPECT_EQ(resolve_task("piqa", d.string()), (d / "piqa.jsonl").string());
  EXPECT_EQ(resolve_task("arc", d.string()), (d / "arc_test.jsonl").string());
  EXPECT_EQ(resolve_task("lambada", d.string()), (d / "lambada_openai_test.jsonl").string());
  const std::string file = (d / "notes.txt").string();
  EXPECT_EQ(resolve_task(file, "/nonexistent"), file);
  EXPECT_EQ(error_of([&] { resolve_task("hellaswag", d.string()); }),
            "task 'hellaswag' is neither a file nor a task in '" + d.string() +
                "' (set --eval-dir or MLKV_EVAL_DIR)");

  EXPECT_TRUE(is_shard_file((d / "data.bin").string()));
  EXPECT_FALSE(is_shard_file((d / "short.bin").string()));
  EXPECT_FALSE(is_shard_file(file));
  EXPECT_EQ(classify_input((d / "piqa.jsonl").string(), "/x").kind, InputKind::kTask);
  EXPECT_EQ(classify_input((d / "data.bin").string(), "/x").kind, InputKind::kShard);
  EXPECT_EQ(classify_input(file, "/x").kind, InputKind::kText);
  EXPECT_EQ(classify_input((d / "short.bin").string(), "/x").kind, InputKind::kText);
  const EvalInput named = classify_input("piqa", d.string());
  EXPECT_EQ(named.kind, InputKind::kTask);
  EXPECT_EQ(named.path, (d / "piqa.jsonl").string());

  EXPECT_FALSE(needs_tokenizer({}));
  EXPECT_FALSE(needs_tokenizer({{InputKind::kShard, "a"}}));
  EXPECT_TRUE(needs_tokenizer({{InputKind::kShard, "a"}, {InputKind::kText, "b"}}));
  EXPECT_TRUE(needs_tokenizer({{InputKind::kTask, "a"}}));
}

TEST(Evaluate, OptionErrors) {
  EvalOptions o;
  EXPECT_NO_THROW(validate_options(o));
  o.batch = 0;
  EXPECT_EQ(error_of([&] { validate_options(o); }), "--batch must be positive (got 0)");
  o = {};
  o.limit = -1;
  EXPECT_EQ(error_of([&] { validate_options(o); }), "--limit must not be negative");
  o = {};
  o.stride = -2;
  EXPECT_EQ(error_of([&] { validate_options(o); }), "--ctx and --stride must not be negative");
}

// evaluate() on the real llama2.c model: the text document follows lm-eval's rules (BOS prefix,
// every token predicted, bits per byte over the file's bytes) and names repeat as "name#2".
TEST(Evaluate, TextOnTheRealModel) {
  const std::string dir = std::string(MLKV_SHARED_DIR) + "/data/models/aidreams260K";
  if (!fs::exists(dir + "/aidreams260K.bin")) GTEST_SKIP() << "shared data not found";
  Model model(load_model(dir + "/aidreams260K.bin"));
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(dir + "/tok512.bin");
  TempDir t;
  const std::string text = "once upon a time there was a little dog. it liked to run.";
  const std::string path = (t.path / "story.txt").string();
  write_file(path, text);

  EvalOptions o;
  o.ctx = 16;
  o.stride = 8;
  o.model_name = "tiny";
  const EvalReport rep =
      evaluate(model, tok.get(), {{InputKind::kText, path}, {InputKind::kText, path}}, o);
  EXPECT_EQ(rep.names, (std::vector<std::string>{"story.txt", "story#2"}));
  const nlohmann::json& d = rep.document;
  EXPECT_EQ(d["model"], "tiny");
  EXPECT_EQ(d["config"], model.config().summary());
  EXPECT_EQ(d["settings"]["ctx"], 16);
  EXPECT_EQ(d["settings"]["stride"], 8);
  const nlohmann::json& r = d["results"]["story.txt"];
  EXPECT_EQ(r["input"], "text");
  EXPECT_EQ(r["prefix_token"], tok->bos_id());
  const int64_t n_ids = static_cast<int64_t>(tok->encode(text, false).size());
  EXPECT_EQ(r["n_tokens"], n_ids);  // every token predicted once
  EXPECT_EQ(r["n_bytes"], static_cast<int64_t>(text.size()));
  EXPECT_EQ(r["n_words"], count_words(text));
  const double nll = r["loss"].get<double>() * static_cast<double>(n_ids);
  EXPECT_NEAR(r["bits_per_byte"].get<double>(),
              nll / (std::log(2.0) * static_cast<double>(text.size())), 1e-9);
  EXPECT_EQ(d["results"]["story#2"]["loss"], r["loss"]);

  // With a window limit not every token is predicted: the bytes are those of the targets.
  o.limit = 1;
  const nlohmann::json one =
      evaluate(model, tok.get(), {{InputKind::kText, path}}, o).document["results"]["story.txt"];
  EXPECT_EQ(one["n_windows"], 1);
  EXPECT_EQ(one["n_tokens"], 16);
  EXPECT_FALSE(one.contains("n_words"));
  EXPECT_LT(one["n_bytes"].get<int64_t>(), static_cast<int64_t>(text.size()));

  o = {};
  o.ctx = 129;
  EXPECT_EQ(error_of([&] {
              evaluate(model, tok.get(), {{InputKind::kText, path}}, o);
            }),
            "--ctx 129 is longer than the model's context (128)");
  EXPECT_EQ(error_of([&] {
              evaluate(model, nullptr, {{InputKind::kText, path}}, {});
            }),
            "evaluating text or tasks needs a tokenizer");
  write_file(path, "");
  EXPECT_NE(error_of([&] {
              evaluate(model, tok.get(), {{InputKind::kText, path}}, {});
            }).find("is empty"),
            std::string::npos);
}

}  // namespace
}  // namespace mlkv::eval
