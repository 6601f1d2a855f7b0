// `mlkv eval MODEL INPUT...`: perplexity of text files and token shards (sliding window, token
// perplexity and bits per byte) and zero-shot tasks from llm-foundry JSONL files (acc, acc_norm,
// LAMBADA accuracy and perplexity), scored as lm-evaluation-harness does. This file parses the
// options, loads the model and tokenizer, calls eval::evaluate (src/eval/evaluate.h: input
// resolution, lm-eval's rules, the results document) and prints the table. See docs/EVAL.md.
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "io/hf_model.h"
#include "core/mmap_file.h"
#include "kernels/threads.h"
#include "eval/evaluate.h"
#include "eval/tasks.h"
#include "model/model.h"
#include "runtime/options.h"
#include "tokenizer/tokenizer.h"

namespace mlkv::cli {

using json = nlohmann::json;

namespace {

struct EvalArgs {
  eval::EvalOptions o;  // --batch, --ctx, --stride, --limit, --max-bytes, --bos, --template
  std::string model, tokenizer, json_path, eval_dir, device = "cpu", weights = "f32";
  std::string cache_type = "f32", cache_k, cache_v, kl_base;
  std::vector<std::string> inputs, texts, shards, tasks;
  int threads = 0;
  bool no_share = false;
};

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
  if (j.contains("kl")) {
    const json& k = j["kl"];
    std::snprintf(extra, sizeof extra, "KL(base || cache) %.3e, max %.3e, p99 %.3e, same top %.2f %%",
                  k["mean"].get<double>(), k["max"].get<double>(), k["p99"].get<double>(),
                  100 * k["same_top"].get<double>());
    print_row("", "mean_kl", k["mean"].get<double>(), NAN, extra);
    std::snprintf(extra, sizeof extra, "base perplexity %.4f",
                  k["base_token_perplexity"].get<double>());
    print_row("", "ppl_ratio", k["ppl_ratio"].get<double>(), NAN, extra);
  }
}

void run_eval(const EvalArgs& a) {
  set_num_threads(a.threads);
  eval::EvalOptions o = a.o;
  o.share_context = !a.no_share;
  o.model_name = a.model;
  o.progress = true;
  o.on_warning = [](const std::string& w) {
    std::fprintf(stderr, "mlkv: warning: %s\n", w.c_str());
  };
  eval::validate_options(o);
  const std::string eval_dir = a.eval_dir.empty() ? eval::default_eval_dir() : a.eval_dir;
  std::vector<eval::EvalInput> inputs;
  for (const auto& s : a.inputs) inputs.push_back(eval::classify_input(s, eval_dir));
  for (const auto& s : a.texts) inputs.push_back({eval::InputKind::kText, s});
  for (const auto& s : a.shards) inputs.push_back({eval::InputKind::kShard, s});
  for (const auto& s : a.tasks)
    inputs.push_back({eval::InputKind::kTask, eval::resolve_task(s, eval_dir)});
  MLKV_REQUIRE(!inputs.empty(),
               "nothing to evaluate: give text files, token shards or tasks (e.g. piqa, "
               "lambada_openai, wikitext2_test.txt)");

  o.cache_type = parse_cache_type(cache_type_arg(a.cache_type, a.cache_k, a.cache_v), "--cache-type");
  if (!a.kl_base.empty()) {
    o.kl_base = parse_cache_type(a.kl_base, "--kl-base");
    for (const eval::EvalInput& in : inputs) {
      MLKV_REQUIRE(in.kind != eval::InputKind::kTask, "--kl-base compares perplexity windows; ",
                   in.path, " is a task (give text files or token shards)");
    }
  }
  ModelOptions mo;
  mo.device = parse_device_option(a.device, "--device");
  mo.weights = parse_weight_type(a.weights, "--weights");
  Model model = Model(load_model(a.model), mo);
  // Text and tasks need a tokenizer; shards use one, when there is one, for bits per byte.
  const std::string tok_path = a.tokenizer.empty() ? a.model : a.tokenizer;
  const std::unique_ptr<Tokenizer> tok =
      !a.tokenizer.empty()           ? load_tokenizer_file(a.tokenizer)
      : eval::needs_tokenizer(inputs) ? load_tokenizer(tok_path)
                                      : try_load_tokenizer(tok_path);
  const eval::EvalReport rep = eval::evaluate(model, tok.get(), inputs, o);

  const json& d = rep.document;
  std::printf("model: %s (%s, %lld params, %lld KV bytes/token f32; cache %s: %lld bytes/token)\n",
              a.model.c_str(), d["config"].get<std::string>().c_str(),
              static_cast<long long>(d["n_params"].get<int64_t>()),
              static_cast<long long>(d["kv_bytes_per_token_f32"].get<int64_t>()),
              d["settings"]["cache_type"].get<std::string>().c_str(),
              static_cast<long long>(d["settings"]["kv_bytes_per_token"].get<int64_t>()));
  std::printf("%-28s %-16s %12s %10s\n", "input", "metric", "value", "stderr");
  for (const std::string& name : rep.names) print_result(name, d["results"][name]);
  if (!a.json_path.empty()) write_text_file(a.json_path, d.dump(2) + "\n");
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
      "--template", a->o.tmpl,
      "Prompt template for every task: qa, sciq, plain, lambada (default: by file name)")
      ->check(parsed_by([](const std::string& s) { eval::apply_template(s, ""); }));
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer file or folder (default: next to the model)");
  cmd->add_option("--limit", a->o.limit,
                  "Only the first N items of each task / N windows of each text (0: all)")
      ->check(at_least(0));
  cmd->add_option("--max-bytes", a->o.max_bytes,
                  "Only the first N bytes of each text file (0: all)")
      ->check(at_least(0));
  cmd->add_option("--batch", a->o.batch, "Sequences scored together per forward pass")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--ctx", a->o.ctx,
                  "Most tokens fed per perplexity window / per task request (0 or not given: the "
                  "model's context)")
      ->check(at_least(0));
  cmd->add_option("--stride", a->o.stride,
                  "New tokens predicted per window (0 or not given: the window, disjoint windows)")
      ->check(at_least(0));
  cmd->add_flag("--bos", a->o.bos,
                "Prepend BOS to every task context (lm-eval does not; llama2.c models want it)");
  cmd->add_flag("--no-share", a->no_share,
                "Run every choice's context separately (for checking the shared pass)");
  cmd->add_option("--json", a->json_path, "Write the results as JSON to this file");
  add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
  cmd->add_option("--kl-base", a->kl_base,
                  "Also score every perplexity window with this cache format (e.g. f32) and report "
                  "the KL divergence of the next-token distributions with --cache-type from it "
                  "(mean, max, p99), the share of equal argmax and the perplexity ratio")
      ->check(cache_format("--kl-base"));
  cmd->add_option("--device", a->device, "Where to compute: cpu, or cuda / cuda:N in a CUDA build")
      ->capture_default_str()
      ->check(device_name());
  cmd->add_option("--weights", a->weights,
                  "In-memory projection weights: f32, f16, bf16 or q8_0 (CPU)")
      ->capture_default_str()
      ->check(weight_format());
  cmd->add_option("-t,--threads", a->threads, "Threads (0 or not given: all cores)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->callback([a] { run_eval(*a); });
}

}  // namespace mlkv::cli
