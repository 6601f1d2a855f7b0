// Evaluation on a loaded Engine: batched log-likelihood of (context, continuation) pairs - the
// primitive of lm-evaluation-harness's `loglikelihood` - and `mlkv eval` as a call (perplexity of
// texts and token shards, zero-shot tasks) returning its results document. What this is not: the
// task rules themselves (docs/EVAL.md) or printing.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mlkv/model.h"

namespace mlkv {

struct LoglikelihoodRequest {
  std::vector<int32_t> context;       // at least one token
  std::vector<int32_t> continuation;  // at least one token
};

struct LoglikelihoodResult {
  double logprob = 0;        // sum of log p over the continuation's tokens, nats
  bool greedy = true;        // every continuation token was the argmax of its row
  int n_tokens = 0;          // continuation tokens scored
  int truncated_tokens = 0;  // leading continuation tokens not scored (the continuation alone
                             // was longer than max_ctx; they were read as context)
};

struct LoglikelihoodOptions {
  int batch = 16;                  // requests per forward pass, > 0
  int max_ctx = 0;                 // most tokens fed per request (cut from the left); 0: n_ctx
  std::string cache_type = "f32";  // as GenerationOptions::cache_type
};

// Scores every request as lm-evaluation-harness's loglikelihood does: the model reads context +
// continuation[:-1]. Consecutive requests with the same context share one pass over it. Results
// are index-aligned with requests. Throws mlkv::Error for an empty context or continuation, an id
// outside the vocabulary or bad options.
std::vector<LoglikelihoodResult> loglikelihood(Engine& engine,
                                               const std::vector<LoglikelihoodRequest>& requests,
                                               const LoglikelihoodOptions& opt = {});

struct EvaluateOptions {
  // What to evaluate, as `mlkv eval`'s positional arguments: text files, token shards, task files
  // (.jsonl) or task names (piqa, arc_easy, sciq, hellaswag, lambada_openai, ...).
  std::vector<std::string> inputs;
  std::string eval_dir = "";   // where task names are looked up; "": $MLKV_EVAL_DIR or
                               // ../shared/data/eval
  int batch = 16;              // sequences per forward pass, > 0
  int ctx = 0;                 // tokens per window / task request; 0: the model's context
  int stride = 0;              // new targets per perplexity window; 0: the window
  int64_t limit = 0;           // first N task items / windows of each input; 0: all
  int64_t max_bytes = 0;       // first N bytes of each text file; 0: all
  bool bos = false;            // BOS in front of every task context
  bool share_context = true;   // one context pass per task item, forked for its choices
  std::string tmpl = "";       // force a task template (qa, sciq, plain, lambada); "": by file
  std::string cache_type = "f32";
  std::string model_name = "";  // the "model" field of the document
  // Called with each warning (choices longer than the context); empty: not reported.
  std::function<void(const std::string&)> on_warning = {};
};

// Evaluates every input in order with the engine's model and tokenizer and returns the document
// `mlkv eval --json` writes (JSON text: model, config, n_params, kv_bytes_per_token_f32, settings,
// results). Throws mlkv::Error for no inputs, bad options, a missing tokenizer for text or tasks,
// unreadable or malformed inputs.
std::string evaluate(Engine& engine, const EvaluateOptions& opt);

}  // namespace mlkv
