// Subcommands that run a model: info, score, generate (through the public API, mlkv/model.h) and
// bench (on the engine directly: random models, bandwidth bound).
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "kernels/backend.h"
#include "kernels/threads.h"
#include "core/timer.h"
#include "io/hf_model.h"
#include "mlkv/model.h"
#include "model/presets.h"
#include "runtime/bench.h"
#include "runtime/bench_sweep.h"
#include "core/mmap_file.h"
#include "runtime/membw.h"
#include "runtime/options.h"

namespace mlkv::cli {

using json = nlohmann::json;

namespace {

void add_weights_option(CLI::App* cmd, std::string* w) {
  cmd->add_option("--weights", *w,
                  "In-memory projection weights: f32, f16 or bf16 (half the bytes per decode step) "
                  "or q8_0 (34 bytes per 32 values; CPU)")
      ->capture_default_str()
      ->check(weight_format());
}

std::string list_str(const std::vector<int>& v) {
  return "[" + layer_list(v) + "]";
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", b, units[u]);
  return buf;
}

void add_device_option(CLI::App* cmd, std::string* device) {
  cmd->add_option("--device", *device,
                  "Where to compute: cpu, or cuda / cuda:N in a CUDA build (weights, activations "
                  "and the KV cache on that GPU)")
      ->capture_default_str()
      ->check(device_name());
}

void add_threads_option(CLI::App* cmd, int* threads) {
  cmd->add_option("-t,--threads", *threads, "Threads (0 or not given: all cores)")
      ->check(CLI::Range(0, std::numeric_limits<int>::max()));
}

// ---------------------------------------------------------------- info
struct InfoArgs {
  std::string model, kv_budget;
  int ctx = 0, batch = 1;
  std::string cache_type = "f32", cache_k, cache_v;
  bool json_out = false;
};

void run_info(const InfoArgs& a) {
  const ModelInfo c = read_model_info(a.model);
  parse_cache_type(a.cache_type, "--cache-type");
  const int ctx = a.ctx > 0 ? a.ctx : c.n_ctx;
  MLKV_REQUIRE(a.batch > 0, "--batch must be positive");
  const int64_t per_tok = c.kv_bytes_per_token(a.cache_type);
  const int64_t total = c.kv_cache_bytes(ctx, a.batch, a.cache_type);
  const int64_t budget = a.kv_budget.empty() ? 0 : parse_byte_size(a.kv_budget, "--kv-budget");
  const int fit =
      budget > 0 ? static_cast<int>(std::min<int64_t>(budget / (per_tok * ctx), INT32_MAX)) : 0;
  // The same model without any sharing, for the saving factor l*h / (m*g).
  const int64_t mha_per_tok = c.mha_kv_bytes_per_token(a.cache_type);
  if (a.json_out) {
    json j = {{"model", a.model},
              {"family", c.family},
              {"scheme", c.scheme},
              {"n_layer", c.n_layer},
              {"n_embd", c.n_embd},
              {"n_head", c.n_head},
              {"n_head_kv", c.n_head_kv},
              {"n_embd_head", c.n_embd_head},
              {"n_ff", c.n_ff},
              {"n_vocab", c.n_vocab},
              {"n_ctx_train", c.n_ctx},
              {"n_rot", c.n_rot},
              {"n_kv_layers", c.n_kv_layers},
              {"owner_layers", c.owner_layers},
              {"kv_source", c.kv_source},
              {"kv_share_rope", c.kv_share_rope},
              {"bos_token_id", c.bos_token_id},
              {"eos_token_ids", c.eos_token_ids},
              {"n_params", c.n_params},
              {"cache_type", a.cache_type},
              {"kv_bytes_per_token", per_tok},
              {"ctx", ctx},
              {"batch", a.batch},
              {"kv_cache_bytes", total},
              {"kv_reduction_vs_mha", c.kv_reduction_vs_mha()}};
    if (budget > 0) {
      j["kv_budget_bytes"] = budget;
      j["sequences_in_budget"] = fit;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("model         %s\n", a.model.c_str());
  std::printf("family        %s (%s, %s residual)\n", c.family.c_str(),
              c.norm == "layernorm" ? "LayerNorm, GELU" : "RMSNorm, SwiGLU",
              c.parallel_residual ? "parallel" : "sequential");
  std::printf(
      "geometry      %d layers, d_model %d, %d heads of %d, ff %d, vocab %d, ctx %d, rotary dims "
      "%d\n",
      c.n_layer, c.n_embd, c.n_head, c.n_embd_head, c.n_ff, c.n_vocab, c.n_ctx, c.n_rot);
  std::printf("kv sharing    %s, %s-rotary sharing\n", c.scheme.c_str(), c.kv_share_rope.c_str());
  std::printf("kv heads      %d per KV layer\n", c.n_head_kv);
  std::printf("owner layers  %s\n", list_str(c.owner_layers).c_str());
  std::printf("kv_source     %s\n", list_str(c.kv_source).c_str());
  std::printf("eos ids       %s\n", c.eos_token_ids.empty() ? "none" : list_str(c.eos_token_ids).c_str());
  std::printf("parameters    %lld\n", static_cast<long long>(c.n_params));
  std::printf(
      "kv cache      %lld bytes per token (%s); %s for ctx %d x batch %d (%.2fx less than MHA)\n",
      static_cast<long long>(per_tok), a.cache_type.c_str(),
      human_bytes(static_cast<double>(total)).c_str(), ctx, a.batch, c.kv_reduction_vs_mha());
  if (budget > 0) {
    std::printf("kv budget     %s holds %d sequences of %d tokens (MHA: %lld)\n",
                human_bytes(static_cast<double>(budget)).c_str(), fit, ctx,
                static_cast<long long>(budget / (mha_per_tok * ctx)));
  }
}

// ---------------------------------------------------------------- score
struct ScoreArgs {
  std::string model, tokens, text, tokenizer, cache_type = "f32", cache_k, cache_v, weights = "f32", device = "cpu";
  bool cached = false, json_out = false, add_bos = false;
  int threads = 0;
};

// Loads the engine for score and generate: the tokenizer only when there is text to encode.
Engine load_engine(const std::string& model, const std::string& tokenizer,
                   const std::string& weights, const std::string& device, int threads,
                   bool need_tokenizer) {
  parse_device_option(device, "--device");
  LoadOptions lo;
  lo.weights = weights;
  lo.device = device;
  lo.threads = threads;
  lo.tokenizer = tokenizer;
  lo.tokenizer_mode = need_tokenizer ? TokenizerMode::kRequired : TokenizerMode::kNone;
  return Engine::load(model, lo);
}

void run_score(const ScoreArgs& a) {
  parse_weight_type(a.weights, "--weights");
  parse_cache_type(a.cache_type, "--cache-type");
  MLKV_REQUIRE(a.tokens.empty() != a.text.empty(),
               "give exactly one of --tokens or --text/--prompt");
  Engine engine = load_engine(a.model, a.tokenizer, a.weights, a.device, a.threads, !a.text.empty());
  const Tokenizer* tok = engine.has_tokenizer() ? &engine.tokenizer() : nullptr;
  const std::vector<int32_t> ids =
      tok != nullptr ? tok->encode(a.text, a.add_bos) : parse_id_list(a.tokens);
  const std::vector<float> lp = engine.score(ids, a.cached, a.cache_type);
  double sum = 0;
  for (float v : lp) sum += v;
  if (a.json_out) {
    json j = {{"logprobs", lp},
              {"sum_logprob", sum},
              {"n_tokens", ids.size()},
              {"ppl", std::exp(-sum / static_cast<double>(lp.size()))}};
    if (tok) {
      std::vector<std::string> pieces;
      for (size_t i = 1; i < ids.size(); ++i) pieces.push_back(tok->token_bytes(ids[i]));
      j["tokens"] = ids;
      j["token_strings"] = pieces;
    }
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return;
  }
  for (size_t i = 0; i < lp.size(); ++i) {
    if (tok) {
      std::printf("%6zu %8d %12.6f  %s\n", i + 1, ids[i + 1], lp[i],
                  json(tok->token_bytes(ids[i + 1]))
                      .dump(-1, ' ', false, json::error_handler_t::replace)
                      .c_str());
    } else {
      std::printf("%6zu %8d %12.6f\n", i + 1, ids[i + 1], lp[i]);
    }
  }
  std::printf("sum %.6f  mean %.6f  ppl %.4f\n", sum, sum / static_cast<double>(lp.size()),
              std::exp(-sum / static_cast<double>(lp.size())));
}

// ---------------------------------------------------------------- generate
struct GenerateArgs {
  std::string model, tokenizer, cache_type = "f32", cache_k, cache_v, weights = "f32", device = "cpu";
  std::vector<std::string> tokens, prompts;
  int n = 32, top_k = 0, parallel = 8, ctx = 0, threads = 0;
  float temp = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
  bool json_out = false, ignore_eos = false, add_bos = false;
};

void run_generate(const GenerateArgs& a) {
  MLKV_REQUIRE(!a.tokens.empty() || !a.prompts.empty(), "give at least one --tokens or --prompt");
  MLKV_REQUIRE(a.n >= 0, "-n must not be negative");
  parse_weight_type(a.weights, "--weights");
  parse_cache_type(a.cache_type, "--cache-type");
  Engine engine = load_engine(a.model, a.tokenizer, a.weights, a.device, a.threads, !a.prompts.empty());
  const Tokenizer* tok = engine.has_tokenizer() ? &engine.tokenizer() : nullptr;
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& t : a.tokens) prompts.push_back(parse_id_list(t));
  for (const auto& p : a.prompts) prompts.push_back(tok->encode(p, a.add_bos));
  GenerationOptions opt;
  opt.max_new_tokens = a.n;
  opt.sampling = {a.temp, a.top_k, a.top_p, a.seed};  // prompt i: seed + i
  opt.n_parallel = a.parallel;
  opt.n_ctx = a.ctx;
  opt.cache_type = a.cache_type;
  opt.stop_at_eos = !a.ignore_eos;
  // Text of a single prompt streams as it is generated: the prompt once the first token has come
  // (a run refused before that prints nothing), then the continuation of its text.
  std::unique_ptr<StreamDecoder> stream;
  std::function<void(int, int32_t)> on_token;
  const bool streaming = tok != nullptr && prompts.size() == 1 && !a.json_out;
  bool echoed = false;
  auto echo_prompt = [&] {
    if (echoed) return;
    echoed = true;
    std::fputs(a.tokens.empty() ? a.prompts[0].c_str() : tok->decode(prompts[0]).c_str(), stdout);
  };
  if (streaming) {
    stream = std::make_unique<StreamDecoder>(*tok, starts_text(*tok, prompts[0]));
    on_token = [&](int, int32_t id) {
      echo_prompt();
      std::fputs(stream->push(id).c_str(), stdout);
      std::fflush(stdout);
    };
  }
  Timer timer;
  const std::vector<Generation> res = engine.generate(prompts, opt, on_token);
  const double secs = timer.seconds();
  size_t n_gen = 0;
  for (const auto& r : res) n_gen += r.tokens.size();
  if (streaming) {
    echo_prompt();
    std::printf("%s\n", stream->flush().c_str());
    std::fflush(stdout);
    std::fprintf(stderr, "[%zu tokens in %.2f s, %.1f tok/s, finish: %s]\n", n_gen, secs,
                 static_cast<double>(n_gen) / secs, res[0].finish_reason.c_str());
    return;
  }
  if (a.json_out) {
    json out = json::array();
    for (size_t i = 0; i < res.size(); ++i) {
      json r = {{"prompt_tokens", prompts[i]},
                {"tokens", res[i].tokens},
                {"finish_reason", res[i].finish_reason}};
      if (tok) r["text"] = res[i].text;
      out.push_back(r);
    }
    json j = {{"results", out}, {"seconds", secs}, {"generated_tokens", n_gen}};
    std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return;
  }
  for (size_t i = 0; i < res.size(); ++i) {
    if (tok && i >= a.tokens.size()) {
      // Text prompts: the prompt, then its continuation.
      std::printf("[%zu] %s%s\n", i, a.prompts[i - a.tokens.size()].c_str(), res[i].text.c_str());
      continue;
    }
    std::string line;
    for (size_t k = 0; k < res[i].tokens.size(); ++k)
      line += (k ? " " : "") + std::to_string(res[i].tokens[k]);
    std::printf("%s\n", line.c_str());
  }
}

// ---------------------------------------------------------------- bench
struct BenchArgs {
  std::string model, random = "pythia-160m", cache_type = "f32", cache_k, cache_v, weights = "f32", device = "cpu";
  int prompt = 128, gen = 32, batch = 1, reps = 3, threads = 0, kv_heads = 0, kv_layers = 0;
  int block_size = 0;
  bool json_out = false, skip_bandwidth = false, synthetic = false, profile = false;
  // --sweep
  bool sweep = false;
  std::vector<int> sweep_batches = {1, 16, 64}, sweep_contexts = {512, 2048};
  std::vector<std::string> sweep_cache_types = {"f32"}, sweep_configs;
  std::string sweep_out = "bench-sweep";
  double sweep_max_cache_gib = 12;
};

// Timings on a busy machine, or with sleeping OpenMP threads, are low: say so before a benchmark.
void warn_if_busy() {
  double load = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = 0;
    std::fclose(f);
  }
  const int cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (load > 0.5 * cores) {
    std::fprintf(stderr,
                 "mlkv: warning: load average %.2f on %d cores before the benchmark: other work "
                 "competes for the cores and the figures will be low\n",
                 load, cores);
  }
  // Sleeping OpenMP workers wake up late for each of a decode step's ~100 parallel regions
  // (measured: batch-1 decode 30% slower, docs/BENCHMARKS.md).
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  if (wait != nullptr && strcasecmp(wait, "passive") == 0) {
    std::fprintf(stderr,
                 "mlkv: warning: OMP_WAIT_POLICY=%s: OpenMP threads sleep between parallel regions "
                 "and decode runs up to 30%% slower; unset it (or set ACTIVE) to benchmark\n",
                 wait);
  }
}

namespace fs = std::filesystem;

// "MxG" -> m KV layers x g KV heads.
SweepConfig parse_sweep_config(const std::string& s) {
  const size_t x = s.find('x');
  int m = 0, g = 0;
  size_t used_m = 0, used_g = 0;
  try {
    if (x != std::string::npos) {
      m = std::stoi(s.substr(0, x), &used_m);
      g = std::stoi(s.substr(x + 1), &used_g);
    }
  } catch (const std::exception&) {
    m = 0;
  }
  MLKV_REQUIRE(x != std::string::npos && used_m == x && used_g == s.size() - x - 1 && m >= 1 && g >= 1,
               "--sweep-configs wants MxG (KV layers x KV heads per layer, e.g. 12x12,4x12,2x1); got '", s,
               "'");
  return {m, g};
}

void run_sweep_cli(const BenchArgs& a) {
  MLKV_REQUIRE(a.model.empty(), "bench --sweep runs random models of --random geometry; drop MODEL");
  warn_if_busy();
  set_num_threads(a.threads);
  SweepOptions o;
  o.geometry = a.random;
  o.model.weights = parse_weight_type(a.weights, "--weights");
  o.model.device = parse_device_option(a.device, "--device");
  for (const std::string& c : a.sweep_configs) o.configs.push_back(parse_sweep_config(c));
  o.batches = a.sweep_batches;
  o.contexts = a.sweep_contexts;
  o.cache_types = a.sweep_cache_types;
  // Checked before the output folder is made (run_sweep parses them again).
  for (const std::string& t : o.cache_types) parse_cache_type(t, "--sweep-cache");
  o.gen = a.gen;
  o.reps = a.reps;
  o.max_cache_bytes = static_cast<int64_t>(a.sweep_max_cache_gib * 1073741824.0);
  o.probe = !a.skip_bandwidth;
  const fs::path dir = a.sweep_out;
  fs::create_directories(dir);
  // Each row as it is measured (a long sweep that is stopped keeps what it measured).
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log(std::fopen((dir / "sweep-rows.jsonl").c_str(), "w"),
                                                     &std::fclose);
  MLKV_REQUIRE(log != nullptr, "cannot write ", (dir / "sweep-rows.jsonl").string());
  const SweepResult r = run_sweep(o, [&log](const SweepRow& row, int done, int total) {
    std::fprintf(log.get(), "%s\n", sweep_row_json(row).c_str());
    std::fflush(log.get());
    if (row.skipped) {
      std::fprintf(stderr, "[%d/%d] %s %s ctx %d batch %d: skipped (cache over --sweep-max-cache)\n", done,
                   total, row.config.c_str(), row.cache_type.c_str(), row.context, row.batch);
    } else {
      std::fprintf(stderr, "[%d/%d] %s %s ctx %d batch %d: %.1f tok/s\n", done, total, row.config.c_str(),
                   row.cache_type.c_str(), row.context, row.batch, row.r.decode_tok_s);
    }
  });
  log.reset();
  const std::string md = sweep_markdown(r), js = sweep_json(r);
  write_text_file((dir / "sweep.md").string(), md);
  write_text_file((dir / "sweep.json").string(), js);
  write_text_file((dir / "sweep.svg").string(), sweep_svg(r));
  std::printf("%s", (a.json_out ? js : md).c_str());
  std::fprintf(stderr, "mlkv: wrote %s, %s and %s\n", (dir / "sweep.md").c_str(), (dir / "sweep.json").c_str(),
               (dir / "sweep.svg").c_str());
}

void run_bench(const BenchArgs& a) {
  warn_if_busy();
  set_num_threads(a.threads);
  LoadedModel lm;
  std::string name = a.model;
  if (!a.model.empty()) {
    lm = load_model(a.model);
  } else {
    lm.config = geometry_preset(a.random);
    apply_sharing(&lm.config, a.kv_heads, {.kv_layers = a.kv_layers});
    init_weights_random(lm.config, &lm.weights, 1234);
    name = "random " + a.random;
  }
  ModelOptions mo;
  mo.weights = parse_weight_type(a.weights, "--weights");
  mo.device = parse_device_option(a.device, "--device");
  Model model(std::move(lm), mo);
  const ModelConfig& c = model.config();
  BenchOptions o;
  o.prompt = a.prompt;
  o.gen = a.gen;
  o.batch = a.batch;
  o.reps = a.reps;
  o.cache_elem = parse_cache_type(a.cache_type, "--cache-type");
  o.synthetic_context = a.synthetic;
  o.block_size = a.block_size;
  OpProfile prof;
  if (a.profile) {
    // A device's ops return before they finish: timing them on the host would be wrong.
    MLKV_REQUIRE(mo.device == Device::kCpu,
                 "--profile times each op on the CPU backend; it does not apply to --device ",
                 a.device);
    o.profile = &prof;
  }
  // The ceilings, probed before and after the timing (other work on the machine lowers a probe;
  // the best of the two is the bound), and the GEMM peak for steps that are compute-bound.
  const double bw_before = a.skip_bandwidth ? 0.0 : measure_device_bandwidth(mo.device);
  const BenchResult r = bench_model(model, o);
  const double bw_after = a.skip_bandwidth ? 0.0 : measure_device_bandwidth(mo.device);
  const double bw = std::max(bw_before, bw_after);
  const double gemm = a.skip_bandwidth ? 0.0 : measure_gemm_peak(mo.device);
  // The bound of a step: the larger of its memory time (the weights once plus every layer's K/V
  // view) and its compute time.
  const DecodeBound bound = decode_bound(r, a.batch, bw, gemm);
  const double mem_s = bound.mem_s, compute_s = bound.compute_s;
  const double bound_steps = bound.steps_s, fraction = bound.fraction;
  // Above 100%: the probes read less than the step itself achieves (a busy machine, or caches
  // serving the step): the bound is not trustworthy.
  const bool over = fraction > 1.0;
  std::vector<ProfileRow> ops;
  if (a.profile) ops = decode_profile(model, r, prof, a.reps * a.gen);
  if (a.json_out) {
    json j = {{"model", name},
              {"config", c.summary()},
              {"threads", num_threads()},
              {"backend", backend<float>(mo.device).name()},
              {"prompt", a.prompt},
              {"gen", a.gen},
              {"batch", a.batch},
              {"reps", a.reps},
              {"cache_type", a.cache_type},
              {"weights", a.weights},
              {"synthetic_context", a.synthetic},
              {"block_size", a.block_size},
              {"prefill_tok_s", r.prefill_tok_s},
              {"decode_tok_s", r.decode_tok_s},
              {"decode_step_ms", r.decode_step_ms},
              {"weight_bytes_per_step", r.weight_bytes},
              {"kv_read_bytes_per_step", r.kv_read_bytes},
              {"kv_cache_bytes", r.kv_cache_bytes},
              {"kv_bytes_per_token", c.kv_bytes_per_token(o.cache_elem)},
              {"read_bandwidth_gb_s", bw / 1e9},
              {"read_bandwidth_before_gb_s", bw_before / 1e9},
              {"read_bandwidth_after_gb_s", bw_after / 1e9},
              {"gemm_peak_gflop_s", gemm / 1e9},
              {"step_flops", r.step_flops},
              {"bound", bound.compute_bound() ? "compute" : "memory"},
              {"bound_steps_s", bound_steps},
              {"fraction_of_bound", fraction},
              {"fraction_above_100", over}};
    if (a.profile) {
      json jp = json::array();
      for (const ProfileRow& op : ops) {
        jp.push_back({{"op", op.op}, {"ms_per_step", op.ms_per_step}, {"bytes_per_step", op.bytes_per_step}});
      }
      j["profile"] = jp;
    }
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("model           %s (%s)\n", name.c_str(), c.summary().c_str());
  std::printf("threads         %d\n", num_threads());
  std::printf("backend         %s\n", backend<float>(mo.device).name().c_str());
  if (!a.synthetic) {
    std::printf("prefill         %.1f tok/s (prompt %d, batch %d, median of %d)\n", r.prefill_tok_s,
                a.prompt, a.batch, a.reps);
  }
  std::printf("decode          %.1f tok/s (batch %d, context %d..%d, %.2f ms/step, median of %d)\n",
              r.decode_tok_s, a.batch, a.prompt, a.prompt + a.gen, r.decode_step_ms, a.reps);
  std::printf("kv cache        %s (%s%s)\n", human_bytes(static_cast<double>(r.kv_cache_bytes)).c_str(),
              a.cache_type.c_str(),
              a.block_size > 0 ? cat(", blocks of ", a.block_size, " interleaved").c_str() : "");
  if (bw > 0) {
    std::printf("read bandwidth  %.2f GB/s (best of %.2f before and %.2f after the timing)\n",
                bw / 1e9, bw_before / 1e9, bw_after / 1e9);
    std::printf("gemm peak       %.1f GFLOP/s (f32, 2048^3)\n", gemm / 1e9);
    std::printf("step reads      %.1f MB weights + %.1f MB K/V; %.2f GFLOP\n", r.weight_bytes / 1e6,
                r.kv_read_bytes / 1e6, r.step_flops / 1e9);
    std::printf("bound           %.1f steps/s (%s: %.3f ms memory, %.3f ms compute); achieved "
                "%.1f%% of it%s\n",
                bound_steps, bound.compute_bound() ? "compute" : "memory", 1e3 * mem_s, 1e3 * compute_s,
                100.0 * fraction,
                over ? " - ABOVE 100%: the probes under-read this machine, treat the bound as unknown"
                     : "");
  }
  if (a.profile) {
    // Per op: its time per step, the bytes it reads per step and the rate that makes.
    std::printf("\n%-34s %9s %7s %10s %8s\n", "decode step, op by op", "ms/step", "share",
                "MB/step", "GB/s");
    for (const ProfileRow& op : ops) {
      std::printf("%-34s %9.3f %6.1f%% ", op.op.c_str(), op.ms_per_step,
                  100.0 * op.ms_per_step / r.decode_step_ms);
      if (op.bytes_per_step > 0) {
        std::printf("%10.2f %8.1f\n", op.bytes_per_step / 1e6,
                    op.bytes_per_step / (op.ms_per_step * 1e-3) / 1e9);
      } else {
        std::printf("%10s %8s\n", "-", "-");
      }
    }
  }
}

}  // namespace

void add_model_commands(CLI::App& app) {
  {
    auto a = std::make_shared<InfoArgs>();
    auto* cmd = app.add_subcommand(
        "info", "Describe a model: geometry, KV sharing, parameter count, KV-cache bytes");
    cmd->add_option("model", a->model, "Model folder (config.json + safetensors) or llama2.c .bin")
        ->required();
    cmd->add_option("--ctx", a->ctx,
                    "Context length for the cache size (0 or not given: the model's)")
        ->check(CLI::Range(0, std::numeric_limits<int>::max()));
    cmd->add_option("--batch", a->batch, "Sequences for the cache size")
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--kv-budget", a->kv_budget,
                    "KV-cache memory (e.g. 2G): how many sequences of --ctx tokens fit");
    add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
    cmd->add_flag("--json", a->json_out, "Print JSON");
    cmd->callback([a] {
      a->cache_type = cache_type_arg(a->cache_type, a->cache_k, a->cache_v);
      run_info(*a);
    });
  }
  {
    auto a = std::make_shared<ScoreArgs>();
    auto* cmd = app.add_subcommand("score", "Log-probability of each next token of a sequence");
    cmd->add_option("model", a->model, "Model folder or llama2.c .bin")->required();
    cmd->add_option("--tokens", a->tokens, "Token ids, e.g. \"1 2 3\"");
    cmd->add_option("--text", a->text, "Text, encoded with the model's tokenizer");
    cmd->add_option("--tokenizer", a->tokenizer,
                    "Tokenizer file or folder (default: the model folder)");
    cmd->add_flag("--bos", a->add_bos, "Prepend BOS when encoding --text");
    cmd->add_flag("--cached", a->cached,
                  "Score through token-by-token cached decoding instead of one pass");
    add_weights_option(cmd, &a->weights);
    add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
    cmd->add_flag("--json", a->json_out, "Print {\"logprobs\": [...]} JSON");
    add_device_option(cmd, &a->device);
    add_threads_option(cmd, &a->threads);
    cmd->callback([a] {
      a->cache_type = cache_type_arg(a->cache_type, a->cache_k, a->cache_v);
      run_score(*a);
    });
  }
  {
    auto a = std::make_shared<GenerateArgs>();
    auto* cmd =
        app.add_subcommand("generate", "Generate continuations of one or more prompts together");
    cmd->add_option("model", a->model, "Model folder or llama2.c .bin")->required();
    cmd->add_option("--tokens", a->tokens, "A prompt as token ids (repeat for several prompts)");
    cmd->add_option("-p,--prompt", a->prompts, "A text prompt (repeat for several)");
    cmd->add_option("--tokenizer", a->tokenizer,
                    "Tokenizer file or folder (default: the model folder)");
    cmd->add_flag("--bos", a->add_bos, "Prepend BOS when encoding --prompt");
    cmd->add_option("-n,--max-tokens", a->n, "Tokens to generate per prompt")
        ->capture_default_str()
        ->check(at_least(0));
    cmd->add_option("--temp", a->temp, "Sampling temperature (0: greedy)")
        ->capture_default_str()
        ->check(at_least(0));
    cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens (0: all)")
        ->capture_default_str()
        ->check(at_least(0));
    cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass")
        ->capture_default_str()
        ->check(interval(0, 1, /*lo_open=*/true));
    cmd->add_option("--seed", a->seed, "RNG seed (prompt i uses seed + i)")
        ->capture_default_str()
        ->check(seed_value());
    cmd->add_option("--parallel", a->parallel, "Sequences decoded together")
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--ctx", a->ctx, "Cache context per sequence (0 or not given: longest request)")
        ->check(CLI::Range(0, std::numeric_limits<int>::max()));
    add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
    cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at the end-of-sequence token");
    add_weights_option(cmd, &a->weights);
    cmd->add_flag("--json", a->json_out, "Print JSON");
    add_device_option(cmd, &a->device);
    add_threads_option(cmd, &a->threads);
    cmd->callback([a] {
      a->cache_type = cache_type_arg(a->cache_type, a->cache_k, a->cache_v);
      run_generate(*a);
    });
  }
  {
    auto a = std::make_shared<BenchArgs>();
    auto* cmd = app.add_subcommand(
        "bench", "Prefill and decode tokens/s, and the measured memory bandwidth");
    cmd->add_option("model", a->model,
                    "Model folder (default: a random model of --random geometry)");
    cmd->add_option("--random", a->random, "Geometry of a random model when no MODEL is given")
        ->capture_default_str()
        ->check(parsed_by([](const std::string& s) { geometry_preset(s); }));
    cmd->add_option("--kv-heads", a->kv_heads, "Random model: KV heads per layer")
        ->check(at_least(1));
    cmd->add_option("--kv-layers", a->kv_layers, "Random model: KV layers (authors' owner rule)")
        ->check(at_least(1));
    cmd->add_option("--prompt", a->prompt, "Prompt tokens to prefill")
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--gen", a->gen, "Decode steps")->capture_default_str()->check(at_least(1));
    cmd->add_option("--batch", a->batch, "Sequences decoded together")
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--reps", a->reps, "Repetitions (median reported)")
        ->capture_default_str()
        ->check(at_least(1));
    add_cache_type_options(cmd, &a->cache_type, &a->cache_k, &a->cache_v);
    cmd->add_flag("--no-bandwidth", a->skip_bandwidth, "Skip the bandwidth measurement");
    add_weights_option(cmd, &a->weights);
    cmd->add_flag(
        "--synthetic-context", a->synthetic,
        "Fill the cache with random K/V for --prompt tokens instead of prefilling (decode only)");
    cmd->add_option("--block-size", a->block_size,
                    "KV cache in blocks of this many positions, the sequences' blocks interleaved "
                    "as in a server's paged cache (0: one contiguous stretch per sequence)")
        ->capture_default_str()
        ->check(at_least(0));
    cmd->add_flag("--json", a->json_out, "Print JSON");
    cmd->add_flag("--profile", a->profile,
                  "Time every op of the decode steps (CPU): ms per step, bytes read and GB/s");
    cmd->add_flag("--sweep", a->sweep,
                  "Decode every KV-sharing configuration of --random geometry over --sweep-batch x "
                  "--sweep-ctx x --sweep-cache, each against its own bound (synthetic context, --gen "
                  "steps, --reps); writes sweep.md, sweep.json and sweep.svg into --sweep-out");
    cmd->add_option("--sweep-batch", a->sweep_batches, "Sweep: batches")
        ->delimiter(',')
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--sweep-ctx", a->sweep_contexts, "Sweep: contexts (positions at the last step)")
        ->delimiter(',')
        ->capture_default_str()
        ->check(at_least(1));
    cmd->add_option("--sweep-cache", a->sweep_cache_types, "Sweep: cache types (f32, f16, q8_0, q8_0/f16, ...)")
        ->delimiter(',')
        ->capture_default_str()
        ->check(cache_format("--sweep-cache"));
    cmd->add_option("--sweep-configs", a->sweep_configs,
                    "Sweep: MxG configurations (KV layers x KV heads each; default: MHA, GQA with "
                    "h/3 heads, MLKV with l/3 layers, MQA, MLKV l/2 x 1, 2 x 1, 1 x 1)")
        ->delimiter(',');
    cmd->add_option("--sweep-out", a->sweep_out, "Sweep: output folder")->capture_default_str();
    cmd->add_option("--sweep-max-cache", a->sweep_max_cache_gib,
                    "Sweep: skip rows whose KV cache exceeds this many GiB (0: no limit)")
        ->capture_default_str()
        ->check(at_least(0));
    add_device_option(cmd, &a->device);
    add_threads_option(cmd, &a->threads);
    cmd->callback([a, cmd] {
      // A single run's options with --sweep, or the sweep's without it, would be ignored: refused.
      static const std::pair<const char*, const char*> kSingleRun[] = {
          {"--batch", "use --sweep-batch"},
          {"--prompt", "use --sweep-ctx"},
          {"--cache-type", "use --sweep-cache"},
          {"--cache-type-k", "use --sweep-cache KEYS/VALUES, e.g. q8_0/f16"},
          {"--cache-type-v", "use --sweep-cache KEYS/VALUES, e.g. q8_0/f16"},
          {"--kv-heads", "use --sweep-configs MxG"},
          {"--kv-layers", "use --sweep-configs MxG"},
          {"--synthetic-context", "the sweep always fills a synthetic context"},
          {"--profile", "profile one configuration without --sweep"},
          {"--block-size", "bench one configuration without --sweep"}};
      static const char* const kSweepOnly[] = {"--sweep-batch", "--sweep-ctx", "--sweep-cache",
                                               "--sweep-configs", "--sweep-out", "--sweep-max-cache"};
      for (const auto& [name, instead] : kSingleRun) {
        MLKV_REQUIRE(!a->sweep || cmd->get_option(name)->count() == 0, name,
                     " sets up a single run and does not apply to bench --sweep (", instead, ")");
      }
      for (const char* name : kSweepOnly) {
        MLKV_REQUIRE(a->sweep || cmd->get_option(name)->count() == 0, name,
                     " applies only with --sweep");
      }
      a->cache_type = cache_type_arg(a->cache_type, a->cache_k, a->cache_v);
      if (a->sweep) {
        run_sweep_cli(*a);
      } else {
        run_bench(*a);
      }
    });
  }
}

}  // namespace mlkv::cli
