// `mlkv eval` as a library call: what to evaluate (text files, token shards, zero-shot task files,
// task names looked up in an eval folder) and how (lm-eval's prefix-token rule for rolling
// perplexity, bits-per-byte accounting, task scoring), giving the results document that
// `mlkv eval --json` writes. The CLI, the server and the Python package call evaluate(); the
// pieces below it are exposed for tests. What this is not: option parsing or printing (tools/cli),
// the window arithmetic (perplexity.h) or task rules (tasks.h).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace mlkv::eval {

enum class InputKind { kText, kShard, kTask };

struct EvalInput {
  InputKind kind = InputKind::kText;
  std::string path;  // a task: the resolved .jsonl file
};

// Where task names are looked up: $MLKV_EVAL_DIR, else ../shared/data/eval.
std::string default_eval_dir();
// A task given by name: the file itself, else <eval_dir>/<name>.jsonl, <name>_test.jsonl
// (lambada: lambada_openai_test.jsonl). Throws mlkv::Error naming the task and the folder.
std::string resolve_task(const std::string& name, const std::string& eval_dir);
// Whether the file starts with the token-shard magic (io/token_shard.h).
bool is_shard_file(const std::string& path);
// A positional input: an existing .jsonl file is a task, a shard file a shard, any other file
// text; a name that is no file is a task in eval_dir.
EvalInput classify_input(const std::string& arg, const std::string& eval_dir);
// Whether any input is text or a task (shards alone need a tokenizer only for bits per byte).
bool needs_tokenizer(const std::vector<EvalInput>& inputs);

// The first max_bytes of a text (max_bytes <= 0: all of it), cut back to a UTF-8 boundary.
std::string cut_text(std::string text, int64_t max_bytes);
// Whitespace-separated words (word perplexity's denominator).
int64_t count_words(const std::string& text);
// Bytes the predicted targets s[1 .. 1 + n_pred) stand for. text_start: s[1] is the text's first
// token (SentencePiece drops its dummy space there); skip: an id that is a separator, not text.
int64_t target_bytes(const Tokenizer& tok, const std::vector<int32_t>& s, int64_t n_pred,
                     bool text_start, int32_t skip);

struct EvalOptions {
  int batch = 16;             // sequences per forward pass, > 0
  int ctx = 0;                // tokens fed per window / task request; 0: the model's context
  int stride = 0;             // new targets per perplexity window; 0: the window (disjoint)
  int64_t limit = 0;          // first N task items / perplexity windows of each input; 0: all
  int64_t max_bytes = 0;      // only the first N bytes of each text file; 0: all
  bool bos = false;           // BOS in front of every task context (lm-eval does not)
  bool share_context = true;  // one context pass per task item, forked for its choices
  std::string tmpl;           // force a task template (qa, sciq, plain, lambada); "": by file
  std::string model_name;     // the "model" of the results document (the path given)
  bool progress = false;      // a progress bar per input on stderr (core/progress.h)
  // The KV cache's key and value formats: prefill writes K/V in them and attention reads them
  // back, so perplexity and task scores measure the model with that cache (as llama.cpp's
  // perplexity tool does).
  KvCacheType cache_type;
  // Perplexity inputs only: also score every window with this cache format (the base, e.g. f32)
  // and report how far cache_type's next-token distributions are from the base's ("kl": mean,
  // max and 99th percentile of KL(base || cache_type) per target, the share of targets with the
  // same argmax, the base's loss), as llama.cpp's perplexity --kl-divergence does.
  std::optional<KvCacheType> kl_base;
  // Called with a warning (choices longer than the context); none: not reported.
  std::function<void(const std::string&)> on_warning;
};

// Checks the options alone (batch, limit, ctx, stride); throws mlkv::Error naming the CLI option.
void validate_options(const EvalOptions& opt);

// One input each; the documents are the "results" entries of docs/EVAL.md.
nlohmann::json eval_text(Model& model, const Tokenizer& tok, const std::string& path,
                         const EvalOptions& opt);
nlohmann::json eval_shard(Model& model, const Tokenizer* tok, const std::string& path,
                          const EvalOptions& opt);
nlohmann::json eval_task(Model& model, const Tokenizer& tok, const std::string& path,
                         const EvalOptions& opt);

struct EvalReport {
  std::vector<std::string> names;  // result names in input order: file name, task stem, "x#2"
  nlohmann::json document;         // {"model", "config", "n_params", "kv_bytes_per_token_f32",
                                   //  "settings", "results": {name: {...}}}: `mlkv eval --json`
};

// Evaluates every input in order. tok may be null when every input is a shard (no bits per byte
// then). Throws mlkv::Error for bad options, --ctx beyond the model's context, a tokenizer with
// more ids than the model's vocabulary, a missing tokenizer for text or tasks, unreadable or
// malformed inputs.
EvalReport evaluate(Model& model, const Tokenizer* tok, const std::vector<EvalInput>& inputs,
                    const EvalOptions& opt);

}  // namespace mlkv::eval
