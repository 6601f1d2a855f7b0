// `mlkv eval MODEL INPUT...`: perplexity of text files and token shards (sliding window, token
// perplexity and bits per byte) and zero-shot tasks from llm-foundry JSONL files (acc, acc_norm,
// LAMBADA accuracy and perplexity), scored as lm-evaluation-harness does. See docs/EVAL.md.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "io/hf_model.h"
#include "core/mmap_file.h"
#include "core/progress.h"
#include "kernels/threads.h"
#include "core/timer.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "io/token_shard.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace mlkv::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct EvalArgs {
  std::string model, tokenizer, json_path, eval_dir, tmpl;
  std::vector<std::string> inputs, texts, shards, tasks;
  int64_t limit = 0, max_bytes = 0;
  int batch = 16, ctx = 0, stride = 0, threads = 0;
  bool bos = false, no_share = false;
};

enum class InputKind { kText, kShard, kTask };

struct Input {
  InputKind kind;
  std::string path;
};

std::string default_eval_dir() {
  const char* env = std::getenv("MLKV_EVAL_DIR");
  return env != nullptr ? env : "../shared/data/eval";
}

// A task given by name: the file itself, else <eval dir>/<name>.jsonl (lambada, lambada_openai:
// lambada_openai_test.jsonl).
std::string resolve_task(const std::string& name, const std::string& eval_dir) {
  if (fs::is_regular_file(name)) return name;
  std::vector<std::string> candidates = {name + ".jsonl", name + "_test.jsonl"};
  if (name == "lambada") candidates.push_back("lambada_openai_test.jsonl");
  for (const std::string& c : candidates) {
    const fs::path p = fs::path(eval_dir) / c;
    if (fs::is_regular_file(p)) return p.string();
  }
  fail("task '", name, "' is neither a file nor a task in '", eval_dir,
       "' (set --eval-dir or MLKV_EVAL_DIR)");
}

bool is_shard_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[sizeof kShardMagic] = {};
  f.read(magic, sizeof magic);
  return f.gcount() == static_cast<std::streamsize>(sizeof magic) &&
         std::memcmp(magic, kShardMagic, sizeof magic) == 0;
}

Input classify(const std::string& arg, const std::string& eval_dir) {
  if (fs::is_regular_file(arg)) {
    if (arg.size() > 6 && arg.compare(arg.size() - 6, 6, ".jsonl") == 0)
      return {InputKind::kTask, arg};
    if (is_shard_file(arg)) return {InputKind::kShard, arg};
    return {InputKind::kText, arg};
  }
  return {InputKind::kTask, resolve_task(arg, eval_dir)};
}

// The first max_bytes of a text, cut back to a UTF-8 character boundary.
std::string cut_text(std::string text, int64_t max_bytes) {
  if (max_bytes <= 0 || static_cast<int64_t>(text.size()) <= max_bytes) return text;
  size_t n = static_cast<size_t>(max_bytes);
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) --n;
  text.resize(n);
  return text;
}

int64_t count_words(const std::string& text) {
  int64_t n = 0;
  bool in_word = false;
  for (char ch : text) {
    const bool space =
        ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f';
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

eval::PerplexityOptions ppl_options(const EvalArgs& a, ProgressBar* bar) {
  eval::PerplexityOptions o;
  o.window = a.ctx;
  o.stride = a.stride;
  o.batch = a.batch;
  o.limit = a.limit;
  o.on_progress = [bar](int64_t done, int64_t total) {
    bar->update(static_cast<double>(done));
    (void)total;
  };
  return o;
}

json ppl_json(const eval::PerplexityResult& r, int64_t n_bytes, int64_t n_words, int window,
              int stride) {
  json j = {{"kind", "perplexity"},
            {"n_windows", r.n_windows},
            {"window", window},
            {"stride", stride},
            {"n_tokens", r.n_tokens},
            {"loss", r.loss()},
            {"token_perplexity", r.token_perplexity()},
            {"seconds", r.seconds},
            {"tokens_per_s", r.seconds > 0 ? static_cast<double>(r.n_tokens) / r.seconds : 0.0}};
  if (n_bytes > 0) {
    j["n_bytes"] = n_bytes;
    j["bits_per_byte"] = eval::bits_per_byte(r.nll, n_bytes);
    j["byte_perplexity"] = std::exp(r.nll / static_cast<double>(n_bytes));
  }
  if (n_words > 0) {
    j["n_words"] = n_words;
    j["word_perplexity"] = std::exp(r.nll / static_cast<double>(n_words));
  }
  return j;
}

// Bytes the predicted targets s[1..1+n_pred) stand for. text_start: s[1] is the text's first token
// (SentencePiece drops its dummy space there); skip: an id that is a separator, not text.
int64_t target_bytes(const Tokenizer& tok, const std::vector<int32_t>& s, int64_t n_pred,
                     bool text_start, int32_t skip) {
  int64_t n = 0;
  for (int64_t i = 1; i <= n_pred && i < static_cast<int64_t>(s.size()); ++i) {
    const int32_t id = s[static_cast<size_t>(i)];
    if (id == skip) continue;
    n += static_cast<int64_t>(tok.token_bytes_at(id, text_start && i == 1).size());
  }
  return n;
}

json eval_text(Model& model, const Tokenizer& tok, const std::string& path, const EvalArgs& a) {
  const std::string text = cut_text(read_text_file(path), a.max_bytes);
  MLKV_REQUIRE(!text.empty(), "text file '", path, "' is empty");
  std::vector<int32_t> s;
  // lm-eval's rolling perplexity: a prefix token (BOS, else EOS) so the first token is predicted.
  const int32_t prefix = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
  if (prefix >= 0) s.push_back(prefix);
  const std::vector<int32_t> ids = tok.encode(text, false);
  s.insert(s.end(), ids.begin(), ids.end());
  const int window = a.ctx > 0 ? a.ctx : model.config().n_ctx;
  const int stride = a.stride > 0 ? a.stride : window;
  const int64_t n_windows = static_cast<int64_t>(
      eval::make_windows(static_cast<int64_t>(s.size()), window, stride).size());
  ProgressBar bar(fs::path(path).filename().string(),
                  static_cast<double>(a.limit > 0 ? std::min(a.limit, n_windows) : n_windows),
                  "windows");
  const eval::PerplexityResult r = eval::stream_perplexity(model, s, ppl_options(a, &bar));
  bar.finish();
  // Bytes: the whole text when every token was predicted (lm-eval's bits_per_byte); otherwise the
  // bytes of the predicted tokens.
  const bool whole = prefix >= 0 && r.n_tokens == static_cast<int64_t>(ids.size());
  const int64_t n_bytes =
      whole ? static_cast<int64_t>(text.size()) : target_bytes(tok, s, r.n_tokens, prefix >= 0, -1);
  json j = ppl_json(r, n_bytes, whole ? count_words(text) : 0, window, stride);
  j["input"] = "text";
  j["path"] = path;
  j["prefix_token"] = prefix;
  return j;
}

json eval_shard(Model& model, const Tokenizer* tok, const std::string& path, const EvalArgs& a) {
  TokenShard shard(path);
  const ModelConfig& c = model.config();
  MLKV_REQUIRE(shard.n_vocab() <= static_cast<uint32_t>(c.n_vocab), "shard '", path,
               "' holds ids up to ", shard.n_vocab(), " but the model's vocabulary has ",
               c.n_vocab);
  const int window = a.ctx > 0 ? a.ctx : c.n_ctx;
  const int stride = a.stride > 0 ? a.stride : window;
  // Documents in a shard are separated by EOS: the stream starts with that separator, so the
  // first document is predicted like every other one.
  const int32_t prefix = shard.eos_id() >= 0
                             ? shard.eos_id()
                             : (c.bos_token_id >= 0 ? c.bos_token_id : c.eos_token_id);
  uint64_t n_read = shard.n_tokens();
  if (a.limit > 0) {
    n_read = std::min<uint64_t>(
        n_read, static_cast<uint64_t>(a.limit) * static_cast<uint64_t>(stride) + window + 1);
  }
  std::vector<int32_t> body(static_cast<size_t>(n_read));
  shard.read(0, body.size(), body.data());
  std::vector<int32_t> s;
  s.reserve(body.size() + 1);
  if (prefix >= 0) s.push_back(prefix);
  s.insert(s.end(), body.begin(), body.end());
  const int64_t n_windows = static_cast<int64_t>(
      eval::make_windows(static_cast<int64_t>(s.size()), window, stride).size());
  ProgressBar bar(fs::path(path).filename().string(),
                  static_cast<double>(a.limit > 0 ? std::min(a.limit, n_windows) : n_windows),
                  "windows");
  const eval::PerplexityResult r = eval::stream_perplexity(model, s, ppl_options(a, &bar));
  bar.finish();
  const int64_t n_bytes =
      tok != nullptr ? target_bytes(*tok, s, r.n_tokens, false, shard.eos_id()) : 0;
  json j = ppl_json(r, n_bytes, 0, window, stride);
  j["input"] = "shard";
  j["path"] = path;
  j["prefix_token"] = prefix;
  return j;
}

json eval_task(Model& model, const Tokenizer& tok, const std::string& path, const EvalArgs& a) {
  const eval::Task task = eval::load_task(path, a.tmpl, a.limit);
  ProgressBar bar(task.name, static_cast<double>(task.docs.size()), "items");
  eval::TaskOptions o;
  o.batch = a.batch;
  o.add_bos = a.bos;
  o.share_context = !a.no_share;
  o.max_ctx = a.ctx;
  o.on_progress = [&bar](int64_t done, int64_t) { bar.update(static_cast<double>(done)); };
  const eval::TaskResult r = eval::run_task(model, tok, task, o);
  bar.finish();
  if (r.n_truncated > 0) {
    std::fprintf(
        stderr,
        "mlkv: warning: %s: %lld choice(s) longer than the context; their first tokens were "
        "read as context, unscored\n",
        task.name.c_str(), static_cast<long long>(r.n_truncated));
  }
  json j = {{"kind", task.kind == eval::TaskKind::kLambada ? "lambada" : "multiple_choice"},
            {"input", "task"},
            {"path", path},
            {"template", r.tmpl},
            {"n", r.n_items},
            {"n_requests", r.n_requests},
            {"n_truncated", r.n_truncated},
            {"seconds", r.seconds},
            {"items_per_s", r.seconds > 0 ? static_cast<double>(r.n_items) / r.seconds : 0.0}};
  for (const eval::Metric& m : r.metrics) {
    j[m.name] = m.value;
    j[m.name + "_stderr"] = m.stderr_value;
  }
  return j;
}

void print_row(const std::string& name, const char* metric, double v, double se,
               const std::string& extra) {
  if (std::isnan(se)) {
    std::printf("%-28s %-16s %12.4f %10s  %s\n", name.c_str(), metric, v, "", extra.c_str());
  } else {
    std::printf("%-28s %-16s %12.4f %10.4f  %s\n", name.c_str(), metric, v, se, extra.c_str());
  }
}

void print_result(const std::string& name, const json& j) {
  char extra[160];
  if (j["input"] == "task") {
    std::snprintf(extra, sizeof extra, "n=%lld, %.1f items/s, template %s",
                  static_cast<long long>(j["n"].get<int64_t>()), j["items_per_s"].get<double>(),
                  j["template"].get<std::string>().c_str());
    bool first = true;
    for (const char* m : {"acc", "acc_norm", "perplexity"}) {
      if (!j.contains(m)) continue;
      print_row(first ? name : "", m, j[m].get<double>(),
                j[std::string(m) + "_stderr"].get<double>(), first ? extra : "");
      first = false;
    }
    return;
  }
  std::snprintf(extra, sizeof extra, "%lld tokens, %lld windows of %d (stride %d), %.0f tok/s",
                static_cast<long long>(j["n_tokens"].get<int64_t>()),
                static_cast<long long>(j["n_windows"].get<int64_t>()), j["window"].get<int>(),
                j["stride"].get<int>(), j["tokens_per_s"].get<double>());
  print_row(name, "token_perplexity", j["token_perplexity"].get<double>(), NAN, extra);
  print_row("", "loss", j["loss"].get<double>(), NAN, "");
  if (j.contains("bits_per_byte"))
    print_row("", "bits_per_byte", j["bits_per_byte"].get<double>(), NAN, "");
  if (j.contains("word_perplexity"))
    print_row("", "word_perplexity", j["word_perplexity"].get<double>(), NAN, "");
}

void run_eval(const EvalArgs& a) {
  set_num_threads(a.threads);
  MLKV_REQUIRE(a.batch > 0, "--batch must be positive (got ", a.batch, ")");
  MLKV_REQUIRE(a.limit >= 0, "--limit must not be negative");
  MLKV_REQUIRE(a.ctx >= 0 && a.stride >= 0, "--ctx and --stride must not be negative");
  const std::string eval_dir = a.eval_dir.empty() ? default_eval_dir() : a.eval_dir;
  std::vector<Input> inputs;
  for (const auto& s : a.inputs) inputs.push_back(classify(s, eval_dir));
  for (const auto& s : a.texts) inputs.push_back({InputKind::kText, s});
  for (const auto& s : a.shards) inputs.push_back({InputKind::kShard, s});
  for (const auto& s : a.tasks) inputs.push_back({InputKind::kTask, resolve_task(s, eval_dir)});
  MLKV_REQUIRE(!inputs.empty(),
               "nothing to evaluate: give text files, token shards or tasks (e.g. piqa, "
               "lambada_openai, wikitext2_test.txt)");

  Model model = Model(load_model(a.model));
  const ModelConfig& c = model.config();
  MLKV_REQUIRE(a.ctx <= c.n_ctx, "--ctx ", a.ctx, " is longer than the model's context (", c.n_ctx,
               ")");
  std::unique_ptr<Tokenizer> tok;
  bool need_tok = false;
  for (const Input& in : inputs) need_tok = need_tok || in.kind != InputKind::kShard;
  const std::string tok_path = a.tokenizer.empty() ? a.model : a.tokenizer;
  if (need_tok) {
    tok = load_tokenizer(tok_path);
    MLKV_REQUIRE(tok->n_vocab() <= c.n_vocab, "the tokenizer has ", tok->n_vocab(),
                 " ids but the model's vocabulary has only ", c.n_vocab);
  } else {
    try {
      tok = load_tokenizer(tok_path);  // only for bits per byte of shards
    } catch (const Error&) {
      tok.reset();
    }
  }

  json results = json::object();
  std::vector<std::string> order;
  for (const Input& in : inputs) {
    std::string name = fs::path(in.path).filename().string();
    if (in.kind == InputKind::kTask) name = fs::path(in.path).stem().string();
    for (int k = 2; results.contains(name); ++k)
      name = cat(fs::path(in.path).stem().string(), "#", k);
    json j = in.kind == InputKind::kTask    ? eval_task(model, *tok, in.path, a)
             : in.kind == InputKind::kShard ? eval_shard(model, tok.get(), in.path, a)
                                            : eval_text(model, *tok, in.path, a);
    results[name] = j;
    order.push_back(name);
  }

  std::printf("model: %s (%s, %lld params, %lld KV bytes/token f32)\n", a.model.c_str(),
              c.summary().c_str(), static_cast<long long>(c.n_params()),
              static_cast<long long>(c.kv_bytes_per_token(4)));
  std::printf("%-28s %-16s %12s %10s\n", "input", "metric", "value", "stderr");
  for (const std::string& name : order) print_result(name, results[name]);

  if (!a.json_path.empty()) {
    json out = {{"model", a.model},
                {"config", c.summary()},
                {"n_params", c.n_params()},
                {"kv_bytes_per_token_f32", c.kv_bytes_per_token(4)},
                {"settings",
                 {{"batch", a.batch},
                  {"ctx", a.ctx > 0 ? a.ctx : c.n_ctx},
                  {"stride", a.stride},
                  {"limit", a.limit},
                  {"bos", a.bos},
                  {"share_context", !a.no_share},
                  {"threads", num_threads()},
                  {"max_bytes", a.max_bytes}}},
                {"results", results}};
    write_text_file(a.json_path, out.dump(2) + "\n");
  }
}

}  // namespace

void add_eval_commands(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* cmd = app.add_subcommand("eval",
                                 "Perplexity (text files, token shards) and zero-shot tasks "
                                 "(llm-foundry JSONL, lm-eval scoring)");
  cmd->add_option("model", a->model, "Model folder or llama2.c .bin")->required();
  cmd->add_option("inputs", a->inputs,
                  "Text files, token shards, task files (.jsonl) or task names (piqa, arc_easy, "
                  "sciq, hellaswag, "
                  "lambada_openai, ... looked up in --eval-dir)");
  cmd->add_option("--text", a->texts, "A text file for perplexity (repeatable)");
  cmd->add_option("--shard", a->shards, "A token shard for perplexity (repeatable)");
  cmd->add_option("--task", a->tasks, "A task file or name (repeatable)");
  cmd->add_option("--eval-dir", a->eval_dir,
                  "Where task names are looked up (default $MLKV_EVAL_DIR or ../shared/data/eval)");
  cmd->add_option(
      "--template", a->tmpl,
      "Prompt template for every task: qa, sciq, plain, lambada (default: by file name)");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer file or folder (default: next to the model)");
  cmd->add_option("--limit", a->limit,
                  "Only the first N items of each task / N windows of each text");
  cmd->add_option("--max-bytes", a->max_bytes, "Only the first N bytes of each text file");
  cmd->add_option("--batch", a->batch, "Sequences scored together per forward pass")
      ->capture_default_str();
  cmd->add_option(
      "--ctx", a->ctx,
      "Most tokens fed per perplexity window / per task request (default: the model's context)");
  cmd->add_option("--stride", a->stride,
                  "New tokens predicted per window (default: the window, disjoint windows)");
  cmd->add_flag("--bos", a->bos,
                "Prepend BOS to every task context (lm-eval does not; llama2.c models want it)");
  cmd->add_flag("--no-share", a->no_share,
                "Run every choice's context separately (for checking the shared pass)");
  cmd->add_option("--json", a->json_path, "Write the results as JSON to this file");
  cmd->add_option("-t,--threads", a->threads, "Threads (default: all cores)");
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace mlkv::cli
