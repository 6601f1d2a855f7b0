// Zero-shot tasks from JSONL files in llm-foundry's layout, scored the way lm-evaluation-harness
// scores them (docs/EVAL.md has the templates and rules):
//  - multiple choice: {"query", "choices", "gold"}; every choice is a continuation " " + choice of
//    the templated query; acc = highest summed log-likelihood, acc_norm = highest log-likelihood
//    per character of the choice;
//  - LAMBADA: {"text"} (target = the last space-separated word) or {"context", "continuation"};
//    acc = the whole target is the greedy continuation; perplexity = exp(-mean log-likelihood of
//    the target).
// Context and continuation are encoded together and split at the context's token count, after
// moving the context's trailing whitespace into the continuation (lm-eval's _encode_pair).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace mlkv::eval {

enum class TaskKind { kMultipleChoice, kLambada };

// One item after templating: the prompt, and per choice the continuation text (delimiter
// included) and the bare choice (whose length normalises acc_norm).
struct TaskDoc {
  std::string context;
  std::vector<std::string> continuations;
  std::vector<std::string> choices;
  int gold = 0;
};

struct Task {
  std::string name;  // file stem: "piqa", "lambada_openai_test", ...
  std::string path;
  std::string tmpl;  // "qa", "plain" or "lambada"
  TaskKind kind = TaskKind::kMultipleChoice;
  std::vector<TaskDoc> docs;
};

// Template names: "qa" (lm-eval's "Question: ...\nAnswer:" prompts: piqa, arc_*),
// "plain" (the query as written: sciq, hellaswag), "lambada"; "" picks by file name and content.
// Applies one template to a query (exposed for tests).
std::string apply_template(const std::string& tmpl, const std::string& query);
// The template a file gets when none is given.
std::string default_template(const std::string& stem, const std::string& first_query);

// Reads a task file. limit > 0 keeps the first `limit` items. Throws mlkv::Error naming the file
// and line for malformed records.
Task load_task(const std::string& path, const std::string& tmpl = "", int64_t limit = 0);

// LAMBADA's split of {"text"}: context = everything before the last space, continuation = " " +
// the last word (lm-eval's `text.split(' ')[:-1]|join(' ')` and `' ' + text.split(' ')[-1]`).
std::pair<std::string, std::string> lambada_split(const std::string& text);

// lm-eval's _encode_pair: trailing whitespace of context moves to the front of continuation, the
// concatenation is encoded whole, and its tokens after the context's own token count are the
// continuation. An empty context becomes {prefix_token}. add_bos prepends the BOS id to the
// context.
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok,
                                                                  std::string_view context,
                                                                  std::string_view continuation,
                                                                  int32_t prefix_token,
                                                                  bool add_bos = false);

struct TaskOptions {
  int batch = 16;             // sequences per forward pass
  bool add_bos = false;       // prepend BOS to every context (lm-eval does not for causal models)
  int32_t prefix_token = -1;  // for empty contexts; -1: the tokenizer's BOS, else its EOS
  bool share_context = true;
  int max_ctx = 0;  // most tokens fed per request (lm-eval's max_length); 0: the model's context
  KvCacheType cache_type;  // the KV cache's formats
  std::function<void(int64_t done, int64_t total)> on_progress;  // items
};

struct Metric {
  std::string name;
  double value;
  double stderr_value;
};

struct TaskResult {
  std::string name, path, tmpl;
  int64_t n_items = 0;
  int64_t n_requests = 0;
  int64_t n_truncated = 0;  // requests whose continuation alone overflowed the context
  double seconds = 0;
  std::vector<Metric> metrics;
  // Per item: the predicted choice (acc), and for LAMBADA the target's log-likelihood.
  std::vector<int> predictions;
  std::vector<double> target_loglik;
  const Metric* find(const std::string& name) const;
};

TaskResult run_task(Model& model, const Tokenizer& tok, const Task& task, const TaskOptions& opt);

}  // namespace mlkv::eval
