// evaluate() and its pieces: input resolution, lm-eval's prefix rule, bits-per-byte accounting,
// one results document per input. See evaluate.h.
#include "eval/evaluate.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/check.h"
#include "core/mmap_file.h"
#include "core/progress.h"
#include "kernels/threads.h"
#include "eval/metrics.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "io/token_shard.h"

namespace mlkv::eval {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string default_eval_dir() {
  const char* env = std::getenv("MLKV_EVAL_DIR");
  return env != nullptr ? env : "../shared/data/eval";
}

std::string resolve_task(const std::string& name, const std::string& eval_dir) {
  if (fs::is_regular_file(name)) return name;
  std::vector<std::string> candidates = {name + ".jsonl", name + "_test.jsonl"};
  if (name == "lambada") candidates.push_back("lambada_openai_test.jsonl");
  for (const std::string& c : candidates) {
    const fs::path p = fs::path(eval_dir) / c;
    if (fs::is_regular_file(p)) return p.string();
  }
  fail_missing("task '", name, "' is neither a file nor a task in '", eval_dir,
       "' (set --eval-dir or MLKV_EVAL_DIR)");
}

bool is_shard_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[sizeof kShardMagic] = {};
  f.read(magic, sizeof magic);
  return f.gcount() == static_cast<std::streamsize>(sizeof magic) &&
         std::memcmp(magic, kShardMagic, sizeof magic) == 0;
}

EvalInput classify_input(const std::string& arg, const std::string& eval_dir) {
  if (fs::is_regular_file(arg)) {
    if (arg.size() > 6 && arg.compare(arg.size() - 6, 6, ".jsonl") == 0)
      return {InputKind::kTask, arg};
    if (is_shard_file(arg)) return {InputKind::kShard, arg};
    return {InputKind::kText, arg};
  }
  return {InputKind::kTask, resolve_task(arg, eval_dir)};
}

bool needs_tokenizer(const std::vector<EvalInput>& inputs) {
  return std::any_of(inputs.begin(), inputs.end(),
                     [](const EvalInput& in) { return in.kind != InputKind::kShard; });
}

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

void validate_options(const EvalOptions& opt) {
  MLKV_REQUIRE(opt.batch > 0, "--batch must be positive (got ", opt.batch, ")");
  MLKV_REQUIRE(opt.limit >= 0, "--limit must not be negative");
  MLKV_REQUIRE(opt.ctx >= 0 && opt.stride >= 0, "--ctx and --stride must not be negative");
}

namespace {

// A progress bar when asked for, else nothing.
class Progress {
 public:
  Progress(const EvalOptions& opt, const std::string& label, double total, const char* unit) {
    if (opt.progress) bar_ = std::make_unique<ProgressBar>(label, total, unit);
  }
  void update(double done) {
    if (bar_) bar_->update(done);
  }
  void finish() {
    if (bar_) bar_->finish();
  }

 private:
  std::unique_ptr<ProgressBar> bar_;
};

// The bar of a perplexity stream: one step per window.
std::unique_ptr<Progress> window_progress(const EvalOptions& opt, const std::string& path,
                                          int64_t n_tokens, int window, int stride) {
  const int64_t n_windows = static_cast<int64_t>(make_windows(n_tokens, window, stride).size());
  return std::make_unique<Progress>(
      opt, fs::path(path).filename().string(),
      static_cast<double>(opt.limit > 0 ? std::min(opt.limit, n_windows) : n_windows), "windows");
}

PerplexityOptions ppl_options(const EvalOptions& opt, Progress* bar) {
  PerplexityOptions o;
  o.window = opt.ctx;
  o.stride = opt.stride;
  o.batch = opt.batch;
  o.limit = opt.limit;
  o.cache_type = opt.cache_type;
  o.kl_base = opt.kl_base;
  o.on_progress = [bar](int64_t done, int64_t) { bar->update(static_cast<double>(done)); };
  return o;
}

json ppl_json(const PerplexityResult& r, int64_t n_bytes, int64_t n_words, int window, int stride) {
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
    j["bits_per_byte"] = bits_per_byte(r.nll, n_bytes);
    j["byte_perplexity"] = std::exp(r.nll / static_cast<double>(n_bytes));
  }
  if (n_words > 0) {
    j["n_words"] = n_words;
    j["word_perplexity"] = std::exp(r.nll / static_cast<double>(n_words));
  }
  if (r.kl && r.kl->n > 0) {
    const KlResult& k = *r.kl;
    const double base_loss = k.base_nll / static_cast<double>(k.n);
    j["kl"] = {{"mean", k.mean()},
               {"max", k.max},
               {"p99", k.p99},
               {"same_top", static_cast<double>(k.same_top) / static_cast<double>(k.n)},
               {"base_loss", base_loss},
               {"base_token_perplexity", std::exp(base_loss)},
               // perplexity with the cache under test over the base's: exp(loss - base_loss)
               {"ppl_ratio", std::exp(r.loss() - base_loss)}};
  }
  return j;
}

}  // namespace

json eval_text(Model& model, const Tokenizer& tok, const std::string& path,
               const EvalOptions& opt) {
  const std::string text = cut_text(read_text_file(path), opt.max_bytes);
  MLKV_REQUIRE(!text.empty(), "text file '", path, "' is empty");
  std::vector<int32_t> s;
  // lm-eval's rolling perplexity: a prefix token (BOS, else EOS) so the first token is predicted.
  const int32_t prefix = tok.bos_id() >= 0 ? tok.bos_id() : tok.eos_id();
  if (prefix >= 0) s.push_back(prefix);
  const std::vector<int32_t> ids = tok.encode(text, false);
  s.insert(s.end(), ids.begin(), ids.end());
  const int window = opt.ctx > 0 ? opt.ctx : model.config().n_ctx;
  const int stride = opt.stride > 0 ? opt.stride : window;
  auto bar = window_progress(opt, path, static_cast<int64_t>(s.size()), window, stride);
  const PerplexityResult r = stream_perplexity(model, s, ppl_options(opt, bar.get()));
  bar->finish();
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

json eval_shard(Model& model, const Tokenizer* tok, const std::string& path,
                const EvalOptions& opt) {
  TokenShard shard(path);
  const ModelConfig& c = model.config();
  MLKV_REQUIRE(shard.n_vocab() <= static_cast<uint32_t>(c.n_vocab), "shard '", path,
               "' holds ids up to ", shard.n_vocab(), " but the model's vocabulary has ",
               c.n_vocab);
  const int window = opt.ctx > 0 ? opt.ctx : c.n_ctx;
  const int stride = opt.stride > 0 ? opt.stride : window;
  // Documents in a shard are separated by EOS: the stream starts with that separator, so the
  // first document is predicted like every other one.
  const int32_t prefix = shard.eos_id() >= 0
                             ? shard.eos_id()
                             : (c.bos_token_id >= 0 ? c.bos_token_id : c.eos_token_id());
  uint64_t n_read = shard.n_tokens();
  if (opt.limit > 0) {
    n_read = std::min<uint64_t>(
        n_read, static_cast<uint64_t>(opt.limit) * static_cast<uint64_t>(stride) + window + 1);
  }
  std::vector<int32_t> body(static_cast<size_t>(n_read));
  shard.read(0, body.size(), body.data());
  std::vector<int32_t> s;
  s.reserve(body.size() + 1);
  if (prefix >= 0) s.push_back(prefix);
  s.insert(s.end(), body.begin(), body.end());
  auto bar = window_progress(opt, path, static_cast<int64_t>(s.size()), window, stride);
  const PerplexityResult r = stream_perplexity(model, s, ppl_options(opt, bar.get()));
  bar->finish();
  const int64_t n_bytes =
      tok != nullptr ? target_bytes(*tok, s, r.n_tokens, false, shard.eos_id()) : 0;
  json j = ppl_json(r, n_bytes, 0, window, stride);
  j["input"] = "shard";
  j["path"] = path;
  j["prefix_token"] = prefix;
  return j;
}

json eval_task(Model& model, const Tokenizer& tok, const std::string& path,
               const EvalOptions& opt) {
  const Task task = load_task(path, opt.tmpl, opt.limit);
  Progress bar(opt, task.name, static_cast<double>(task.docs.size()), "items");
  TaskOptions o;
  o.batch = opt.batch;
  o.add_bos = opt.bos;
  o.share_context = opt.share_context;
  o.max_ctx = opt.ctx;
  o.cache_type = opt.cache_type;
  o.on_progress = [&bar](int64_t done, int64_t) { bar.update(static_cast<double>(done)); };
  const TaskResult r = run_task(model, tok, task, o);
  bar.finish();
  if (r.n_truncated > 0 && opt.on_warning) {
    opt.on_warning(cat(task.name, ": ", r.n_truncated,
                       " choice(s) longer than the context; their first tokens were read as "
                       "context, unscored"));
  }
  json j = {{"kind", task.kind == TaskKind::kLambada ? "lambada" : "multiple_choice"},
            {"input", "task"},
            {"path", path},
            {"template", r.tmpl},
            {"n", r.n_items},
            {"n_requests", r.n_requests},
            {"n_truncated", r.n_truncated},
            {"seconds", r.seconds},
            {"items_per_s", r.seconds > 0 ? static_cast<double>(r.n_items) / r.seconds : 0.0}};
  for (const Metric& m : r.metrics) {
    j[m.name] = m.value;
    j[m.name + "_stderr"] = m.stderr_value;
  }
  return j;
}

EvalReport evaluate(Model& model, const Tokenizer* tok, const std::vector<EvalInput>& inputs,
                    const EvalOptions& opt) {
  validate_options(opt);
  const ModelConfig& c = model.config();
  MLKV_REQUIRE(opt.ctx <= c.n_ctx, "--ctx ", opt.ctx, " is longer than the model's context (",
               c.n_ctx, ")");
  if (tok != nullptr && needs_tokenizer(inputs)) {
    MLKV_REQUIRE(tok->n_vocab() <= c.n_vocab, "the tokenizer has ", tok->n_vocab(),
                 " ids but the model's vocabulary has only ", c.n_vocab);
  }
  MLKV_REQUIRE(tok != nullptr || !needs_tokenizer(inputs),
               "evaluating text or tasks needs a tokenizer");

  EvalReport rep;
  json results = json::object();
  for (const EvalInput& in : inputs) {
    std::string name = fs::path(in.path).filename().string();
    if (in.kind == InputKind::kTask) name = fs::path(in.path).stem().string();
    for (int k = 2; results.contains(name); ++k)
      name = cat(fs::path(in.path).stem().string(), "#", k);
    results[name] = in.kind == InputKind::kTask    ? eval_task(model, *tok, in.path, opt)
                    : in.kind == InputKind::kShard ? eval_shard(model, tok, in.path, opt)
                                                   : eval_text(model, *tok, in.path, opt);
    rep.names.push_back(name);
  }
  rep.document = {{"model", opt.model_name},
                  {"config", c.summary()},
                  {"n_params", c.n_params()},
                  {"kv_bytes_per_token_f32", c.kv_bytes_per_token(4)},
                  {"settings",
                   {{"batch", opt.batch},
                    {"ctx", opt.ctx > 0 ? opt.ctx : c.n_ctx},
                    {"stride", opt.stride},
                    {"limit", opt.limit},
                    {"bos", opt.bos},
                    {"share_context", opt.share_context},
                    {"cache_type", opt.cache_type.name()},
                    {"kl_base", opt.kl_base ? json(opt.kl_base->name()) : json(nullptr)},
                    {"kv_bytes_per_token", c.kv_bytes_per_token(opt.cache_type)},
                    {"threads", num_threads()},
                    {"max_bytes", opt.max_bytes}}},
                  {"results", results}};
  return rep;
}

}  // namespace mlkv::eval
