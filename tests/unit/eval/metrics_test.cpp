// Scoring rules and statistics (src/eval/metrics.h) on hand-made numbers with known answers, and
// task files / templates (src/eval/tasks.h) on hand-written JSONL.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"

namespace mlkv::eval {
namespace {

namespace fs = std::filesystem;

// A long right answer with a lower total log-likelihood but a higher one per character: acc
// picks the short wrong answer, acc_norm the long right one.
TEST(EvalMetrics, AccAndAccNormDifferOnCraftedCase) {
  const std::vector<double> ll = {-6.0, -9.0};  // choice 0 more likely in total
  const std::vector<int64_t> chars = {3, 30};   // -2.0 vs -0.3 per character
  const ChoiceScores s = score_choices(ll, chars);
  EXPECT_EQ(s.pred, 0);
  EXPECT_EQ(s.pred_norm, 1);
  // They agree when the lengths are equal.
  const ChoiceScores t = score_choices({-6.0, -9.0}, {10, 10});
  EXPECT_EQ(t.pred, 0);
  EXPECT_EQ(t.pred_norm, 0);
}

TEST(EvalMetrics, TiesGoToTheFirstChoice) {
  EXPECT_EQ(argmax_first({-1.0, -1.0, -2.0}), 0);
  EXPECT_EQ(argmax_first({-3.0, -1.0, -1.0}), 1);
  const ChoiceScores s = score_choices({-4.0, -2.0}, {4, 2});  // -1 per char each
  EXPECT_EQ(s.pred, 1);
  EXPECT_EQ(s.pred_norm, 0);
}

TEST(EvalMetrics, Utf8LengthCountsCharacters) {
  EXPECT_EQ(utf8_length("hello"), 5);
  EXPECT_EQ(utf8_length("h\xC3\xA9llo"), 5);  // é: 2 bytes, 1 character
  EXPECT_EQ(utf8_length("\xE2\x82\xAC"
                        "5"),
            2);                                   // €5
  EXPECT_EQ(utf8_length("\xF0\x9F\x98\x80"), 1);  // an emoji, 4 bytes
  EXPECT_EQ(utf8_length(""), 0);
}

TEST(EvalMetrics, MeanAndStderr) {
  const std::vector<double> v = {1, 0, 1, 0};
  EXPECT_DOUBLE_EQ(mean(v), 0.5);
  // Sample stddev (ddof 1) = sqrt(1/3); stderr = that / sqrt(4).
  EXPECT_NEAR(mean_stderr(v), std::sqrt(1.0 / 3.0) / 2.0, 1e-15);
  EXPECT_EQ(mean_stderr({1.0}), 0.0);
}

TEST(EvalMetrics, PerplexityAndBootstrap) {
  const std::vector<double> ll = {-1.0, -2.0, -3.0, -2.0};
  EXPECT_NEAR(perplexity(ll), std::exp(2.0), 1e-12);
  const double se = perplexity_bootstrap_stderr(ll, 2000, 7);
  EXPECT_GT(se, 0.5);
  EXPECT_LT(se, 5.0);
  EXPECT_EQ(se, perplexity_bootstrap_stderr(ll, 2000, 7));  // seeded: deterministic
  EXPECT_NEAR(perplexity_bootstrap_stderr({-1.0, -1.0, -1.0}), 0.0, 1e-9);
}

TEST(EvalMetrics, BitsPerByte) {
  // 1000 bytes with a total NLL of 1000 ln 2 nats is exactly 1 bit per byte.
  EXPECT_NEAR(bits_per_byte(1000 * std::log(2.0), 1000), 1.0, 1e-12);
  EXPECT_NEAR(bits_per_byte(3.0, 2), 3.0 / (2 * std::log(2.0)), 1e-12);
}

TEST(EvalWindows, HandWorkedExamples) {
  auto eq = [](const std::vector<Window>& w, std::vector<std::array<int64_t, 3>> want) {
    ASSERT_EQ(w.size(), want.size());
    for (size_t i = 0; i < w.size(); ++i) {
      EXPECT_EQ(w[i].begin, want[i][0]) << i;
      EXPECT_EQ(w[i].split, want[i][1]) << i;
      EXPECT_EQ(w[i].end, want[i][2]) << i;
    }
  };
  // Disjoint windows (stride = window): every later window has one token of context, as
  // lm-eval's rolling windows.
  eq(make_windows(10, 4, 4), {{0, 1, 5}, {4, 5, 9}, {5, 9, 10}});
  eq(make_windows(10, 4, 2), {{0, 1, 5}, {2, 5, 7}, {4, 7, 9}, {5, 9, 10}});
  eq(make_windows(3, 8, 8), {{0, 1, 3}});
  EXPECT_TRUE(make_windows(1, 8, 8).empty());
  EXPECT_THROW(make_windows(10, 4, 5), Error);
  EXPECT_THROW(make_windows(10, 4, 0), Error);
  // Every target once, never more than `window` tokens fed.
  for (int w : {1, 3, 8}) {
    for (int st = 1; st <= w; ++st) {
      int64_t next = 1;
      for (const Window& win : make_windows(50, w, st)) {
        EXPECT_EQ(win.split, next);
        EXPECT_LE(win.end - 1 - win.begin, w);
        EXPECT_LT(win.begin, win.split);
        next = win.end;
      }
      EXPECT_EQ(next, 50);
    }
  }
}

TEST(EvalTasks, Templates) {
  // PIQA's llm-foundry query ends with a newline, ARC's does not; lm-eval's prompt is the same.
  EXPECT_EQ(apply_template("qa", "Question: How do I boil an egg?\n"),
            "Question: How do I boil an egg?\nAnswer:");
  EXPECT_EQ(apply_template("qa", "Question: Which is a gas?"),
            "Question: Which is a gas?\nAnswer:");
  EXPECT_EQ(apply_template("qa", "Question: q\nAnswer:"), "Question: q\nAnswer:");
  // SciQ: lm-eval keeps the newline before "Question:" when the support is empty.
  EXPECT_EQ(apply_template("sciq", "Some support.\nQuestion: q\nAnswer:"),
            "Some support.\nQuestion: q\nAnswer:");
  EXPECT_EQ(apply_template("sciq", "Question: q\nAnswer:"), "\nQuestion: q\nAnswer:");
  EXPECT_EQ(apply_template("plain", "Roof shingle removal: A man is on a roof. he"),
            "Roof shingle removal: A man is on a roof. he");
  EXPECT_THROW(apply_template("nope", "x"), Error);
  EXPECT_EQ(default_template("piqa", ""), "qa");
  EXPECT_EQ(default_template("arc_easy", ""), "qa");
  EXPECT_EQ(default_template("arc_challenge", ""), "qa");
  EXPECT_EQ(default_template("sciq", ""), "sciq");
  EXPECT_EQ(default_template("hellaswag", ""), "plain");
  EXPECT_EQ(default_template("lambada_openai_test", ""), "lambada");
  EXPECT_EQ(default_template("my_quiz", "Question: x"), "qa");
  EXPECT_EQ(default_template("my_story", "Once upon"), "plain");
}

TEST(EvalTasks, LambadaSplit) {
  EXPECT_EQ(lambada_split("the cat sat on the mat"),
            std::make_pair(std::string("the cat sat on the"), std::string(" mat")));
  // Only spaces separate words: the newline stays inside the context.
  EXPECT_EQ(lambada_split("he said\n\"go home"),
            std::make_pair(std::string("he said\n\"go"), std::string(" home")));
  EXPECT_EQ(lambada_split("word"), std::make_pair(std::string(""), std::string(" word")));
}

class TaskFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / cat("mlkv_eval_tasks_", ::getpid());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }
  fs::path dir_;
};

TEST_F(TaskFiles, MultipleChoice) {
  const std::string p = write(
      "piqa_mini.jsonl",
      "{\"query\": \"Question: open a jar\\n\", \"choices\": [\"twist\", \"pull\"], \"gold\": 0}\n"
      "\n"
      "{\"query\": \"Question: cool tea\", \"choices\": [\"wait\", \"h\\u00e9at\"], \"gold\": "
      "1}\n");
  const Task t = load_task(p);
  EXPECT_EQ(t.name, "piqa_mini");
  EXPECT_EQ(t.tmpl, "qa");
  EXPECT_EQ(t.kind, TaskKind::kMultipleChoice);
  ASSERT_EQ(t.docs.size(), 2u);
  EXPECT_EQ(t.docs[0].context, "Question: open a jar\nAnswer:");
  EXPECT_EQ(t.docs[0].continuations, (std::vector<std::string>{" twist", " pull"}));
  EXPECT_EQ(t.docs[1].choices[1],
            "h\xC3\xA9"
            "at");
  EXPECT_EQ(t.docs[1].gold, 1);
  EXPECT_EQ(load_task(p, "", 1).docs.size(), 1u);
  EXPECT_EQ(load_task(p, "plain").docs[1].context, "Question: cool tea");
}

TEST_F(TaskFiles, LambadaBothLayouts) {
  const Task a = load_task(write("lambada_a.jsonl", "{\"text\": \"she opened the door\"}\n"));
  const Task b = load_task(
      write("lambada_b.jsonl", "{\"context\": \"she opened the\", \"continuation\": \"door\"}\n"));
  for (const Task* t : {&a, &b}) {
    EXPECT_EQ(t->kind, TaskKind::kLambada);
    EXPECT_EQ(t->docs[0].context, "she opened the");
    EXPECT_EQ(t->docs[0].continuations[0], " door");
    EXPECT_EQ(t->docs[0].choices[0], "door");
  }
  // A split that already carries the space keeps it once; the file name does not matter.
  const Task c = load_task(
      write("cloze.jsonl", "{\"context\": \"she opened the \", \"continuation\": \"door\"}\n"));
  EXPECT_EQ(c.kind, TaskKind::kLambada);
  EXPECT_EQ(c.docs[0].continuations[0], "door");
}

TEST_F(TaskFiles, BadRecordsNameFileAndLine) {
  auto msg = [&](const std::string& name, const std::string& text) {
    try {
      load_task(write(name, text));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(msg("t1.jsonl", "{\"query\": \"Q\", \"choices\": [\"a\"], \"gold\": 0}\n{oops\n")
                .find("t1.jsonl:2: not valid JSON"),
            std::string::npos);
  EXPECT_NE(msg("t2.jsonl", "{\"query\": \"Q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}\n")
                .find("gold 2 is not a choice"),
            std::string::npos);
  EXPECT_NE(
      msg("t3.jsonl", "{\"query\": \"Q\", \"choices\": [], \"gold\": 0}\n").find("non-empty list"),
      std::string::npos);
  EXPECT_NE(msg("t4.jsonl", "{\"query\": 3, \"choices\": [\"a\"], \"gold\": 0}\n")
                .find("'query' must be a string"),
            std::string::npos);
  EXPECT_NE(msg("t5.jsonl", "\n\n").find("holds no items"), std::string::npos);
  EXPECT_THROW(load_task((dir_ / "missing.jsonl").string()), Error);
}

}  // namespace
}  // namespace mlkv::eval
