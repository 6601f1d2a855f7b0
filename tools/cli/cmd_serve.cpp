// `mlkv serve`: the HTTP completion server (src/server) over an mlkv::Engine.
#include <cstdio>
#include <limits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <memory>

#include "commands.h"
#include "core/check.h"
#include "mlkv/model.h"
#include "runtime/options.h"
#include "server/openai.h"
#include "server/server.h"

namespace mlkv::cli {

namespace {

struct ServeArgs {
  std::string model, tokenizer, cache_type = "f32", cache_k, cache_v, weights = "f32", kv_budget, device = "cpu";
  ServerOptions opt;
  int threads = 0;
  bool no_tokenizer = false;
  bool parallel_given = false;
};

// The chat template family named by the tokenizer_config.json next to the model (or tokenizer):
// its "chat_template" (a string, or a list of {name, template} of which "default" counts) is
// recognised by its markers. "" when there is none or it is of another family.
std::string chat_template_of(const std::string& path) {
  namespace fs = std::filesystem;
  fs::path dir = fs::is_directory(path) ? fs::path(path) : fs::path(path).parent_path();
  std::ifstream in(dir / "tokenizer_config.json");
  if (!in) return "";
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("chat_template")) return "";
  std::string tmpl;
  const auto& t = j["chat_template"];
  if (t.is_string()) {
    tmpl = t.get<std::string>();
  } else if (t.is_array()) {
    for (const auto& e : t) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        tmpl = e["template"].get<std::string>();
    }
  }
  const std::string family = openai::chat_template_name(openai::detect_chat_template(tmpl));
  if (family == "none") {
    if (!tmpl.empty())
      std::fprintf(stderr,
                   "mlkv: the model's chat template is not of a family mlkv applies (chatml, "
                   "llama-3, llama-2, zephyr): /v1/chat/completions will answer 400 "
                   "(--chat-template chooses one)\n");
    return "";
  }
  return family;
}

void run_serve(const ServeArgs& a) {
  ServerOptions opt = a.opt;
  parse_cache_type(a.cache_type, "--cache-type");
  parse_weight_type(a.weights, "--weights");
  MLKV_REQUIRE(opt.port >= 0 && opt.port <= 65535, "--port must be in [0, 65535]");
  opt.cache_type = a.cache_type;
  // A tokenizer named with --tokenizer must load; one next to the model (a folder, or beside a
  // llama2.c file) is optional, as for generate.
  parse_device_option(a.device, "--device");
  LoadOptions lo;
  lo.weights = a.weights;
  lo.device = a.device;
  lo.threads = a.threads;
  lo.tokenizer = a.tokenizer;
  lo.tokenizer_mode = a.no_tokenizer          ? TokenizerMode::kNone
                      : !a.tokenizer.empty()  ? TokenizerMode::kRequired
                                              : TokenizerMode::kAuto;
  Engine engine = Engine::load(a.model, lo);
  if (!a.kv_budget.empty()) {
    const int64_t budget = parse_byte_size(a.kv_budget, "--kv-budget");
    if (opt.block_size == 0) {
      // Whole contexts: as many sequences as the budget holds (a model with a smaller cache per
      // token serves more).
      const int ctx = opt.n_ctx > 0 ? opt.n_ctx : engine.info().n_ctx;
      opt.n_parallel = sequences_in_budget(budget, engine.info().kv_bytes_per_token(a.cache_type), ctx);
    } else {
      // Paged: the budget is a pool of blocks; up to --parallel sequences share it.
      const int64_t block_bytes =
          static_cast<int64_t>(opt.block_size) * engine.info().kv_bytes_per_token(a.cache_type);
      MLKV_REQUIRE(budget >= block_bytes, "a KV budget of ", budget, " bytes holds no block of ",
                   opt.block_size, " tokens (", block_bytes, " bytes each)");
      opt.kv_budget_bytes = budget;
      if (!a.parallel_given) opt.n_parallel = 64;
    }
  }
  if (opt.model_id.empty() || opt.model_id == "mlkv") {
    std::filesystem::path p(a.model);
    if (!p.has_filename()) p = p.parent_path();  // "dir/"
    opt.model_id = std::filesystem::is_directory(p) ? p.filename().string() : p.stem().string();
    if (opt.model_id.empty()) opt.model_id = "mlkv";
  }
  if (opt.api_key.empty()) {
    if (const char* k = std::getenv("MLKV_API_KEY")) opt.api_key = k;
  }
  if (opt.chat_template.empty() && !a.no_tokenizer) {
    opt.chat_template = chat_template_of(a.tokenizer.empty() ? a.model : a.tokenizer);
  }
  if (lo.tokenizer_mode == TokenizerMode::kAuto && !engine.has_tokenizer()) {
    std::fprintf(stderr,
                 "mlkv: no tokenizer next to the model: only token-id prompts will be accepted\n");
  }
  run_server(engine, opt);
}

}  // namespace

void add_serve_commands(CLI::App& app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand(
      "serve",
      "OpenAI-compatible HTTP server (completions, chat, models, metrics) with continuous "
      "batching over one KV cache");
  cmd->add_option("model", a->model, "Model folder or llama2.c .bin")->required();
  cmd->add_option("--host", a->opt.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->opt.port, "Port (0: any free port)")
      ->capture_default_str()
      ->check(interval(0, 65535));
  auto* par = cmd->add_option("--parallel", a->opt.n_parallel,
                              "Most sequences decoded together (64 with --kv-budget)")
                  ->capture_default_str()
                  ->check(interval(1, 4096));
  cmd->add_option("--kv-budget", a->kv_budget,
                  "KV-cache memory (e.g. 1G, 512MiB): a pool of blocks that sequences take as "
                  "they grow (with --block-size 0: as many whole contexts of --ctx as fit)");
  cmd->add_option("--block-size", a->opt.block_size,
                  "KV block in tokens (paged cache with prefix reuse); 0: every sequence "
                  "reserves its whole context")
      ->capture_default_str()
      ->check(interval(0, 4096));
  cmd->add_option("--ctx", a->opt.n_ctx, "Context per sequence (0 or not given: the model's)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
  cmd->add_option("--weights", a->weights, "In-memory projection weights: f32, f16, bf16 or q8_0 (CPU)")
      ->capture_default_str()
      ->check(weight_format());
  cmd->add_option("--device", a->device, "Where to compute: cpu, or cuda / cuda:N in a CUDA build")
      ->capture_default_str()
      ->check(device_name());
  cmd->add_option("--tokenizer", a->tokenizer,
                  "Tokenizer file or folder (default: the model folder)");
  cmd->add_flag("--no-tokenizer", a->no_tokenizer, "Accept only token-id prompts");
  cmd->add_option("--max-queue", a->opt.max_queue,
                  "Sequences waiting for a cache slot before new requests get 429")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--max-body", a->opt.max_body_bytes, "Largest request body in bytes (413 beyond)")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--max-prompt-tokens", a->opt.max_prompt_tokens,
                  "Longest prompt in tokens (0 or not given: the context)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_option("--max-tokens", a->opt.max_tokens,
                  "Largest max_tokens a request may ask for (0 or not given: the context)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_option("--max-connections,--http-threads", a->opt.max_connections,
                  "Connections served at once (HTTP worker threads; a streaming client holds one)")
      ->capture_default_str()
      ->check(interval(1, 4096));
  cmd->add_option("--model-name", a->opt.model_id,
                  "The model's id in /v1/models and requests (default: the folder or file name)");
  cmd->add_option("--api-key", a->opt.api_key,
                  "Require \"Authorization: Bearer KEY\" on /v1/* (default: $MLKV_API_KEY if set)");
  cmd->add_option("--chat-template", a->opt.chat_template,
                  "Chat template family for /v1/chat/completions: chatml, llama-3, llama-2, zephyr "
                  "(default: recognised from the model's tokenizer_config.json)")
      ->check(CLI::IsMember({"chatml", "llama-3", "llama-2", "zephyr"}));
  cmd->add_option("--drain-timeout", a->opt.drain_timeout_s,
                  "On SIGTERM, seconds to let running requests finish")
      ->capture_default_str()
      ->check(interval(0, 86400));
  cmd->add_option("-t,--threads", a->threads, "Compute threads (0 or not given: all cores)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->callback([a, par] {
      a->parallel_given = par->count() > 0;
      if (a->parallel_given && !a->kv_budget.empty() && a->opt.block_size == 0)
        throw CLI::ValidationError("--parallel", "with --block-size 0, --kv-budget sets how many "
                                                 "sequences run: give one or the other");
      a->cache_type = cache_type_arg(a->cache_type, a->cache_k, a->cache_v);
      run_serve(*a);
    });
}

}  // namespace mlkv::cli
