// `mlkv train` (from scratch or uptraining, single process or `mpirun -np N`) and `mlkv plot` (loss
// curves of one or more runs as SVG). The loop itself is src/train/trainer.cpp; this file turns
// options into a TrainOptions and geometry overrides (model/presets.h). docs/TRAINING.md.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "core/mmap_file.h"
#include "model/presets.h"
#include "runtime/options.h"
#include "train/data.h"
#include "train/dist.h"
#include "train/plot.h"
#include "train/trainer.h"

namespace mlkv::cli {

namespace {

namespace fs = std::filesystem;

struct TrainArgs {
  train::TrainOptions o;
  // From-scratch geometry: a preset plus overrides (0 / empty: keep the preset's).
  std::string preset;
  int layers = 0, embd = 0, heads = 0, kv_heads = 0, kv_layers = 0, ff = 0, vocab = 0,
      model_ctx = 0;
  std::string kv_source, share, dtype = "f32", device = "cpu", precision = "f32";
  bool tied = false, no_shuffle = false, json_out = false;
};

// The from-scratch geometry: the preset plus the options given, the vocabulary and end-of-text id
// of the data unless --vocab says otherwise (policy: model/presets.h).
ModelConfig build_config(const TrainArgs& a, uint32_t data_vocab, int32_t data_eos) {
  GeometryOverrides g;
  g.n_layer = a.layers;
  g.n_embd = a.embd;
  g.n_head = a.heads;
  g.n_ff = a.ff;
  g.n_vocab = a.vocab > 0 ? a.vocab : static_cast<int>(data_vocab);
  g.n_ctx = a.model_ctx;
  g.min_ctx = a.o.ctx;
  g.tied_embeddings = a.tied;
  g.kv_heads = a.kv_heads;
  g.sharing.kv_layers = a.kv_layers;
  if (!a.kv_source.empty()) {
    for (int32_t v : parse_id_list(a.kv_source)) g.sharing.kv_source.push_back(v);
  }
  g.share = a.share;
  g.eos_token_id = data_eos;
  return geometry_from_overrides(a.preset, g);
}

// --precision: f32, or bf16 mixed precision.
DType parse_precision(const std::string& s) {
  MLKV_REQUIRE(s == "f32" || s == "bf16", "--precision must be f32 or bf16 (got '", s, "')");
  return s == "bf16" ? DType::kBF16 : DType::kF32;
}

// --dtype of the written model.
DType parse_out_dtype(const std::string& s) {
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  fail("--dtype must be f32, f16 or bf16 (got '", s, "')");
}

void run_train(TrainArgs& a) {
  train::Dist& dist = train::Dist::get();
  try {
    train::TrainOptions& o = a.o;
    o.shuffle = !a.no_shuffle;
    o.device = parse_device_option(a.device, "--device");
    o.precision = parse_precision(a.precision);
    o.out_dtype = parse_out_dtype(a.dtype);
    const bool geometry_given = a.layers || a.embd || a.heads || a.kv_heads || a.kv_layers ||
                                a.ff || a.vocab || a.model_ctx || !a.kv_source.empty() ||
                                !a.share.empty() || a.tied;
    if (!o.init.empty()) {
      MLKV_REQUIRE(
          a.preset.empty() && !geometry_given,
          "--init uptrains a model as it is; geometry options (--preset, --layers, --kv-heads, "
          "--kv-layers, ...) apply to training from scratch. To change the sharing of a trained "
          "model, convert it first (mlkv convert) and uptrain the result.");
    } else if (!o.resume) {
      MLKV_REQUIRE(!a.preset.empty(),
                   "give --preset NAME (training from scratch) or --init MODEL (uptraining)");
      const train::DataFiles files = train::find_data_files(o.data);
      train::TokenStream s(files.train);
      o.config = build_config(a, s.n_vocab(), s.eos_id());
    }
    const train::TrainSummary r = train::run_training(o);
    if (dist.is_root()) {
      if (a.json_out) {
        nlohmann::json j = {{"steps", r.steps},     {"skipped_steps", r.skipped_steps},
                            {"loss", r.last_loss},  {"tokens_per_s", r.tokens_per_s},
                            {"seconds", r.seconds}, {"out", o.out_dir}};
        if (r.val_loss >= 0) j["val_loss"] = r.val_loss;
        if (!o.distill.teacher.empty() && std::isfinite(r.last_ce)) {
          j["ce"] = r.last_ce;
          j["kl"] = r.last_kl;
        }
        std::printf("%s\n", j.dump().c_str());
      } else {
        const std::string parts = !o.distill.teacher.empty() && std::isfinite(r.last_ce)
                                      ? cat(" (ce ", r.last_ce, ", kl ", r.last_kl, ")")
                                      : "";
        std::printf("trained %lld steps%s: loss %.4f%s%s, %.0f tokens/s; model in %s\n",
                    static_cast<long long>(r.steps),
                    r.skipped_steps > 0
                        ? cat(" (", r.skipped_steps, " skipped: non-finite gradient)").c_str()
                        : "",
                    r.last_loss, parts.c_str(), r.val_loss >= 0 ? cat(", val ", r.val_loss).c_str() : "",
                    r.tokens_per_s, o.out_dir.c_str());
      }
      if (o.profile) std::printf("%s", train::format_profile(r.profile, r.seconds).c_str());
    }
  } catch (const std::exception& e) {
    if (dist.size() <= 1) throw;
    std::fprintf(stderr, "mlkv: error (rank %d): %s\n", dist.rank(), e.what());
    dist.abort(1);
  }
}

void add_train(CLI::App& app) {
  auto a = std::make_shared<TrainArgs>();
  train::TrainOptions& o = a->o;
  CLI::App* c = app.add_subcommand(
      "train",
      "Train a model from scratch or uptrain a model folder on token shards (mpirun -np N for data "
      "parallelism); see docs/TRAINING.md");
  c->add_option("--data", o.data, "Training data: a `mlkv tokenize` folder or a shard file")
      ->required();
  c->add_option("--out,-o", o.out_dir,
                "Output model folder (also holds checkpoint, log, loss plot)")
      ->required();
  c->add_option("--init", o.init, "Uptrain this model folder (instead of --preset)");
  auto* teacher = c->add_option(
      "--teacher", o.distill.teacher,
      "Distil from this model folder (same vocabulary): it runs forward on the same rows each step "
      "and the loss becomes alpha CE + (1 - alpha) T^2 KL(teacher || student)");
  c->add_option("--distill-alpha", o.distill.alpha,
                "With --teacher: weight a of the cross-entropy (1 - a weighs the KL term)")
      ->capture_default_str()
      ->check(interval(0, 1))
      ->needs(teacher);
  c->add_option("--distill-temp", o.distill.temp,
                "With --teacher: softmax temperature T of both distributions in the KL term")
      ->capture_default_str()
      ->check(above(0))
      ->needs(teacher);
  c->add_option("--preset", a->preset,
                "From scratch: geometry preset (pythia-14m, pythia-70m, pythia-160m, "
                "pythia-410m, tiny-neox, llama-tiny)")
      ->check(parsed_by([](const std::string& s) { geometry_preset(s); }));
  // Geometry overrides: not given (0 inside) keeps the preset's, so an explicit 0 is refused.
  c->add_option("--layers", a->layers, "From scratch: number of layers")->check(at_least(1));
  c->add_option("--embd", a->embd, "From scratch: hidden size")->check(at_least(1));
  c->add_option("--heads", a->heads, "From scratch: attention heads")->check(at_least(1));
  c->add_option("--kv-heads", a->kv_heads, "From scratch: KV heads per layer (GQA/MQA)")
      ->check(at_least(1));
  c->add_option("--kv-layers", a->kv_layers,
                "From scratch: KV layers m (MLKV, the authors' owner rule)")
      ->check(at_least(1));
  c->add_option("--kv-source", a->kv_source,
                "From scratch: explicit layer->owner map, e.g. 0,0,2,2");
  c->add_option("--share", a->share,
                "From scratch: keys consumers read: post (after rotary) or pre")
      ->check(parsed_by([](const std::string& s) { parse_share_rope(s, "--share"); }));
  c->add_option("--ff", a->ff, "From scratch: MLP width (default 4 x embd; SwiGLU 8/3 x embd)")
      ->check(at_least(1));
  c->add_option("--vocab", a->vocab, "From scratch: vocabulary size (default: the data's)")
      ->check(at_least(1));
  c->add_option("--model-ctx", a->model_ctx,
                "From scratch: max positions of the model (default: preset's or --ctx)")
      ->check(at_least(1));
  c->add_flag("--tied", a->tied, "From scratch: output matrix = token embedding");
  c->add_option("--init-std", o.init_std, "From scratch: init standard deviation")
      ->capture_default_str()
      ->check(above(0));
  c->add_option("--ctx", o.ctx, "Tokens per training row")
      ->capture_default_str()
      ->check(at_least(1));
  c->add_option("--batch", o.batch,
                "Rows per optimizer step (all ranks and --accum micro-steps together)")
      ->capture_default_str()
      ->check(at_least(1));
  c->add_option("--accum", o.accum, "Gradient accumulation: micro-steps per optimizer step")
      ->capture_default_str()
      ->check(at_least(1));
  auto* steps = c->add_option("--steps", o.steps, "Optimizer steps")->check(at_least(1));
  c->add_option("--tokens", o.tokens,
                "Training tokens (instead of --steps; rounded up to whole steps)")
      ->check(at_least(1))
      ->excludes(steps);
  c->add_option("--lr", o.lr, "Peak learning rate")->capture_default_str()->check(above(0));
  c->add_option("--min-lr-ratio", o.min_lr_ratio, "Final lr as a fraction of --lr")
      ->capture_default_str()
      ->check(interval(0, 1));
  auto* warmup =
      c->add_option("--warmup", o.warmup, "Warmup steps (default: --warmup-ratio x steps)")
          ->check(at_least(0));
  c->add_option("--warmup-ratio", o.warmup_ratio, "Warmup as a fraction of the steps")
      ->capture_default_str()
      ->check(interval(0, 1, false, /*hi_open=*/true))
      ->excludes(warmup);
  c->add_option("--schedule", o.schedule, "After warmup: cosine, linear or constant")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { train::LrSchedule::parse(s); }));
  c->add_option("--weight-decay", o.adam.weight_decay,
                "AdamW decoupled weight decay (not on norms, biases)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_option("--beta1", o.adam.beta1, "AdamW beta1")
      ->capture_default_str()
      ->check(interval(0, 1, false, true));
  c->add_option("--beta2", o.adam.beta2, "AdamW beta2")
      ->capture_default_str()
      ->check(interval(0, 1, false, true));
  c->add_option("--adam-eps", o.adam.eps, "AdamW epsilon")->capture_default_str()->check(above(0));
  c->add_option("--clip", o.clip, "Clip gradients to this global norm (0: off)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_option("--skip-nonfinite", o.skip_nonfinite,
                "Skip up to N steps whose gradient is not finite (no update) instead of stopping "
                "at the first")
      ->capture_default_str()
      ->check(at_least(0));
  auto* val =
      c->add_option("--val", o.val, "Validation shards (default: the data folder's val shards)");
  c->add_option("--val-fraction", o.val_fraction,
                "Hold out this last fraction of the training tokens instead (0: none)")
      ->check(interval(0, 1, false, true))
      ->excludes(val);
  c->add_option("--eval-every", o.eval_every,
                "Validate every N steps (and at the end; 0: end only)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_option("--eval-rows", o.eval_rows, "Validation rows, in file order (0: all)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_option("--save-every", o.save_every,
                "Checkpoint every N steps (and at the end; 0: end only)")
      ->capture_default_str()
      ->check(at_least(0));
  auto* resume = c->add_flag("--resume", o.resume, "Continue the run whose checkpoint is in --out");
  c->add_flag("--overwrite", o.overwrite, "Start over in an --out that holds a checkpoint")
      ->excludes(resume);
  c->add_flag("--allow-data-change", o.allow_data_change,
              "With --resume: continue although the data differ from the checkpoint's")
      ->needs(resume);
  c->add_option("-t,--threads", o.threads,
                "Threads per rank (0 or not given: cores / ranks on the machine)")
      ->check(at_least(0));
  c->add_option("--seed", o.seed, "Seed of the data order (and of the init from scratch)")
      ->capture_default_str()
      ->check(seed_value());
  c->add_flag("--no-shuffle", a->no_shuffle,
              "Take rows in file order (exact comparisons with other trainers)");
  c->add_option("--dtype", a->dtype, "Dtype of the written model: f32, f16 or bf16")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_out_dtype(s); }));
  c->add_option("--tokenizer", o.tokenizer,
                "Tokenizer to copy into --out (default: the data's or --init's)");
  c->add_flag("--quiet,-q", o.quiet, "No progress output");
  c->add_flag("--profile", o.profile, "Print the time per op at the end");
  c->add_option("--precision", a->precision,
                "Products: f32, or bf16 mixed precision (GPU; f32 master weights and optimizer "
                "state)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_precision(s); }));
  c->add_option("--device", a->device,
                "Where to train: cpu, or cuda / cuda:N in a CUDA build (checkpoints are the same "
                "files on every device)")
      ->capture_default_str()
      ->check(device_name());
  c->add_flag("--json", a->json_out, "Print the summary as JSON");
  c->callback([a] { run_train(*a); });
}

struct PlotArgs {
  std::vector<std::string> logs, labels;
  std::string out, title = "training loss";
  bool log_x = false;
};

void add_plot(CLI::App& app) {
  auto a = std::make_shared<PlotArgs>();
  CLI::App* c =
      app.add_subcommand("plot", "Plot the loss curves of one or more training runs as SVG");
  c->add_option("logs", a->logs, "Run folders or train_log.jsonl files")->required();
  c->add_option("--out,-o", a->out, "SVG file to write")->required();
  c->add_option("--labels", a->labels, "Legend labels, one per run (default: folder names)")
      ->delimiter(',');
  c->add_option("--title", a->title, "Plot title")->capture_default_str();
  c->add_flag("--log-x", a->log_x, "Logarithmic step axis");
  c->callback([a] {
    MLKV_REQUIRE(a->labels.empty() || a->labels.size() == a->logs.size(),
                 "--labels: ", a->labels.size(), " labels for ", a->logs.size(), " runs");
    std::vector<train::LossSeries> runs;
    for (size_t i = 0; i < a->logs.size(); ++i) {
      fs::path p(a->logs[i]);
      std::string label = i < a->labels.size() ? a->labels[i] : "";
      if (fs::is_directory(p)) {
        fs::path q = fs::absolute(p).lexically_normal();
        if (q.filename().empty()) q = q.parent_path();
        if (label.empty()) label = q.filename().string();
        p /= train::kLogFile;
      } else if (label.empty()) {
        label = p.parent_path().filename().string();
        if (label.empty()) label = p.filename().string();
      }
      runs.push_back(train::read_train_log(p.string(), label));
    }
    write_text_file(a->out, train::loss_plot_svg(runs, a->title, a->log_x));
    std::printf("wrote %s\n", a->out.c_str());
  });
}

}  // namespace

void add_train_commands(CLI::App& app) {
  add_train(app);
  add_plot(app);
}

}  // namespace mlkv::cli
