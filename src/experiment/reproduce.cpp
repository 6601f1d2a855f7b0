// The stages of `mlkv reproduce` (reproduce.h): presets, the stage runner with its markers, and
// the results document. Reports (markdown, SVG) are in report.cpp.
#include "experiment/reproduce.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>

#include "convert/convert_folder.h"
#include "core/check.h"
#include "core/mmap_file.h"
#include "eval/evaluate.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "kernels/threads.h"
#include "model/model.h"
#include "model/presets.h"
#include "tokenizer/corpus.h"
#include "tokenizer/train.h"
#include "train/data.h"
#include "train/plot.h"
#include "train/trainer.h"

namespace mlkv::experiment {

namespace fs = std::filesystem;
using json = nlohmann::json;

const std::vector<PaperConfig>& paper_configs() {
  // PAPER.md, "Published results": avg = mean of ARC-e, LAMBADA, PIQA, SciQ acc (%).
  static const std::vector<PaperConfig> k = {
      {"MHA-144", 12, 12, 52.79, 32.6}, {"GQA-48", 12, 4, 50.17, 65.8},
      {"MLKV-48", 4, 12, 49.29, 93.2},  {"MQA-12", 12, 1, 49.43, 91.2},
      {"MLKV-12", 4, 3, 48.78, 120.5},  {"MLKV-6", 6, 1, 49.06, 114.8},
      {"MLKV-4", 4, 1, 47.31, 126.2},   {"MLKV-2", 2, 1, 46.78, 150.8},
      {"MLKV-1", 1, 1, 41.12, 859.2},
  };
  return k;
}

std::vector<std::string> reproduce_preset_names() { return {"ci", "demo", "full"}; }

ReproducePreset reproduce_preset(const std::string& name) {
  ReproducePreset p;
  p.name = name;
  if (name == "ci") {
    // The smallest run that goes through every stage: seconds per stage on 2 cores.
    p.texts = {"tinystories_lower.txt"};
    p.max_corpus_bytes = 400'000;
    p.vocab = 320;
    p.n_embd = 48;  // d_head 4
    p.ctx = 64;
    p.batch = 8;
    p.pretrain_tokens = 64 * 8 * 40;  // 40 steps
    p.pretrain_lr = 3e-3;
    p.uptrain_tokens = 64 * 8 * 4;  // 4 steps each
    p.save_every = 10;
    p.heldout_windows = 12;
    p.task_items = 8;
    p.wikitext_bytes = 8'000;
    p.calibration_tokens = 64 * 16;
    p.note = "plumbing check (about a minute): every stage, numbers of no meaning";
  } else if (name == "demo") {
    // docs/RESULTS.md's small-scale table: 1.5 M parameters, ~25 minutes on 2 cores.
    p.texts = {"tinystories_lower.txt"};
    p.vocab = 1024;
    p.n_embd = 96;  // d_head 8
    p.ctx = 128;
    p.batch = 16;
    p.pretrain_tokens = 600'000;
    p.uptrain_tokens = 60'000;  // 10 % of pretraining
    p.save_every = 50;
    p.heldout_windows = 300;
    p.task_items = 500;
    p.wikitext_bytes = 200'000;
    p.calibration_tokens = 16384;
    p.note = "TinyStories only, 1.5 M parameters, d_head 8: a demonstration, not evidence";
  } else if (name == "full") {
    // The paper's geometry on all the shipped English text, sized to finish in one sitting of
    // about 100 minutes on 2 cores (~2,000 training tokens/s): 5 M pretraining tokens, 5 %
    // of that to uptrain each configuration, distillation for two of them.
    p.texts = {"tinystories_lower.txt", "brown.txt", "kjv.txt", "tinyshakespeare.txt", "austen",
               "fairytaleqa"};
    p.vocab = 4096;
    p.n_embd = 192;  // d_head 16
    p.ctx = 256;
    p.batch = 32;
    p.pretrain_tokens = 5'000'000;  // 0.8 epochs of the 6.1 M training tokens
    p.pretrain_lr = 1.5e-3;
    p.uptrain_tokens = 250'000;  // 5 % of pretraining
    p.save_every = 50;
    p.heldout_windows = 200;  // 51,200 held-out tokens, the same for every configuration
    p.task_items = 300;
    p.wikitext_bytes = 100'000;
    p.calibration_tokens = 16384;
    p.distill = {"MLKV-48", "MLKV-6"};
    p.note = "all shipped English text, 7 M parameters, d_head 16, ctx 256: ~2 hours on 2 cores";
  } else {
    std::string known;
    for (const auto& n : reproduce_preset_names()) known += (known.empty() ? "" : ", ") + n;
    fail("unknown --preset '", name, "' (known: ", known, ")");
  }
  return p;
}

namespace {

json preset_json(const ReproducePreset& p) {
  return {{"name", p.name},
          {"texts", p.texts},
          {"max_corpus_bytes", p.max_corpus_bytes},
          {"val_fraction", p.val_fraction},
          {"vocab", p.vocab},
          {"n_layer", p.n_layer},
          {"n_head", p.n_head},
          {"n_embd", p.n_embd},
          {"n_ff", p.n_ff},
          {"ctx", p.ctx},
          {"batch", p.batch},
          {"pretrain_tokens", p.pretrain_tokens},
          {"pretrain_lr", p.pretrain_lr},
          {"uptrain_tokens", p.uptrain_tokens},
          {"uptrain_lr", p.uptrain_lr},
          {"save_every", p.save_every},
          {"heldout_windows", p.heldout_windows},
          {"task_items", p.task_items},
          {"wikitext_bytes", p.wikitext_bytes},
          {"calibration_tokens", p.calibration_tokens},
          {"distill", p.distill}};
}

// The configurations to run, in the paper's order (MHA-144 always).
std::vector<PaperConfig> chosen_configs(const std::vector<std::string>& names) {
  std::vector<PaperConfig> out;
  for (const PaperConfig& c : paper_configs()) {
    const bool want = names.empty() || std::string(c.name) == "MHA-144" ||
                      std::find(names.begin(), names.end(), c.name) != names.end();
    if (want) out.push_back(c);
  }
  return out;
}

// The settings that fix a run's results (not threads or progress).
json settings_json(const ReproduceOptions& opt) {
  std::vector<std::string> names;
  for (const PaperConfig& c : chosen_configs(opt.configs)) names.emplace_back(c.name);
  return {{"preset", preset_json(opt.preset)}, {"configs", names}, {"seed", opt.seed}};
}

// The corpus files of the preset, folders expanded to their .txt files in name order.
std::vector<std::string> corpus_files(const ReproduceOptions& opt) {
  std::vector<std::string> files;
  for (const std::string& t : opt.preset.texts) {
    const fs::path p = fs::path(opt.data_root) / "text" / t;
    if (fs::is_directory(p)) {
      std::vector<std::string> in_dir;
      for (const auto& e : fs::directory_iterator(p)) {
        if (e.is_regular_file() && e.path().extension() == ".txt") in_dir.push_back(e.path());
      }
      std::sort(in_dir.begin(), in_dir.end());
      MLKV_REQUIRE(!in_dir.empty(), "reproduce: no .txt files in ", p.string());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else {
      MLKV_REQUIRE(fs::is_regular_file(p), "reproduce: the preset's text ", p.string(),
                   " is missing (--data-root names the shared data folder)");
      files.push_back(p.string());
    }
  }
  return files;
}

const char* const kTasks[] = {"arc_easy", "lambada_openai", "piqa", "sciq"};
constexpr const char* kWikitext = "wikitext2_test.txt";

class Runner {
 public:
  explicit Runner(const ReproduceOptions& opt) : opt_(opt), out_(opt.out_dir) {}

  json run();

 private:
  std::string path(const std::string& rel) const { return (out_ / rel).string(); }
  bool done(const std::string& stage) const { return fs::exists(out_ / "done" / stage); }
  void mark_done(const std::string& stage, const json& info = json::object()) const {
    fs::create_directories(out_ / "done");
    write_text_file(path("done/" + stage), info.dump() + "\n");
  }
  void log(const std::string& s) const {
    if (opt_.on_log) opt_.on_log(s);
  }

  void prepare_corpus();
  void train_tokenizer_stage();
  void tokenize_stage();
  void train_stage(const std::string& stage, const std::string& init, const std::string& out,
                   int64_t tokens, double lr, double warmup_ratio, const std::string& what,
                   const std::string& teacher = "");
  // Converts the base to c with the given merge into dst (skipped when done); owners_auto: the
  // owner layers searched on the calibration text (merge calibrated).
  void convert_stage(const PaperConfig& c, MergeStrategy merge, const std::string& dst,
                     bool owners_auto = false);
  bool distilled(const std::string& name) const {
    const auto& d = opt_.preset.distill;
    return std::find(d.begin(), d.end(), "*") != d.end() ||
           std::find(d.begin(), d.end(), name) != d.end();
  }
  // The evaluation of model_dir, kept in OUT/eval/<stage>.json (read back when there): held-out
  // text only, or (full) also WikiText-2 and the tasks.
  json eval_stage(const std::string& stage, const std::string& model_dir, bool full);
  json evaluate_model(const std::string& model_dir, bool full);
  void write_reports(const json& results) const;

  std::string converted_dir(const PaperConfig& c) const {
    return std::string(c.name) == "MHA-144" ? path("base") : path("converted/" + std::string(c.name));
  }

  const ReproduceOptions& opt_;
  fs::path out_;
  std::vector<std::string> corpus_;
  std::string val_shard_;
  std::string train_shard_;  // the first training shard: calibration text
};

void Runner::prepare_corpus() {
  const std::vector<std::string> files = corpus_files(opt_);
  if (opt_.preset.max_corpus_bytes <= 0) {
    corpus_ = files;
    return;
  }
  // The first max_corpus_bytes of the files, cut after a line break, as one file.
  const std::string dst = path("corpus/corpus.txt");
  corpus_ = {dst};
  if (done("corpus")) return;
  std::string text;
  for (const std::string& f : files) {
    if (static_cast<int64_t>(text.size()) >= opt_.preset.max_corpus_bytes) break;
    text += read_text_file(f);
    if (!text.empty() && text.back() != '\n') text += '\n';
  }
  if (static_cast<int64_t>(text.size()) > opt_.preset.max_corpus_bytes) {
    size_t cut = text.rfind('\n', static_cast<size_t>(opt_.preset.max_corpus_bytes));
    text.resize(cut == std::string::npos ? static_cast<size_t>(opt_.preset.max_corpus_bytes)
                                         : cut + 1);
  }
  fs::create_directories(out_ / "corpus");
  write_text_file(dst, text);
  mark_done("corpus", {{"bytes", text.size()}});
}

void Runner::train_tokenizer_stage() {
  if (done("tokenizer")) {
    log("tokenizer: done (skipped)");
    return;
  }
  log(cat("tokenizer: training a ", opt_.preset.vocab, "-piece BPE"));
  TrainTokenizerOptions t;
  t.inputs = corpus_;
  t.out_dir = path("tokenizer");
  t.vocab_size = opt_.preset.vocab;
  t.threads = opt_.threads;
  const TrainTokenizerResult r = train_tokenizer(t);
  mark_done("tokenizer", {{"sentences", r.sentences}, {"seconds", r.seconds}});
}

void Runner::tokenize_stage() {
  if (!done("data")) {
    log(cat("data: tokenizing, ", opt_.preset.val_fraction * 100, " % held out"));
    const std::unique_ptr<Tokenizer> tok = load_tokenizer(path("tokenizer/tokenizer.model"));
    TokenizeOptions o;
    o.inputs = corpus_;
    o.out_dir = path("data");
    o.tokenizer_path = path("tokenizer/tokenizer.model");
    o.val_fraction = opt_.preset.val_fraction;
    o.seed = opt_.seed;
    o.txt_rule = TxtDocRule::kBlank;  // paragraphs: fine-grained units for the held-out split
    o.progress = opt_.progress;
    o.on_note = [this](const std::string& s) { log("data: " + s); };
    const TokenizeStats st = tokenize_corpus(*tok, o);
    mark_done("data", {{"train_tokens", st.train_tokens}, {"val_tokens", st.val_tokens}});
  } else {
    log("data: done (skipped)");
  }
  const train::DataFiles f = train::find_data_files(path("data"));
  MLKV_REQUIRE(f.val.size() == 1, "reproduce: expected one held-out shard in ", path("data"),
               ", found ", f.val.size());
  val_shard_ = f.val.front();
  MLKV_REQUIRE(!f.train.empty(), "reproduce: no training shard in ", path("data"));
  train_shard_ = f.train.front();
}

void Runner::train_stage(const std::string& stage, const std::string& init,
                         const std::string& out, int64_t tokens, double lr, double warmup_ratio,
                         const std::string& what, const std::string& teacher) {
  if (done(stage)) {
    log(stage + ": done (skipped)");
    return;
  }
  const ReproducePreset& p = opt_.preset;
  train::TrainOptions o;
  o.out_dir = out;
  o.data = path("data");
  o.ctx = p.ctx;
  o.batch = p.batch;
  o.tokens = tokens;
  o.lr = lr;
  o.warmup_ratio = warmup_ratio;
  o.schedule = "cosine";
  o.save_every = p.save_every;
  const int64_t steps = (tokens + p.batch * p.ctx - 1) / (p.batch * p.ctx);
  o.eval_every = std::max<int64_t>(1, steps / 10);  // ten validation points for the curves
  o.eval_rows = 64;
  o.threads = opt_.threads;
  o.seed = opt_.seed;
  o.quiet = !opt_.progress;
  // Distillation (train/distill.h): the defaults alpha 0.5, temperature 1.
  o.distill.teacher = teacher;
  if (init.empty()) {
    // The MHA base, from scratch: the preset's geometry on the data's vocabulary.
    const train::DataFiles files = train::find_data_files(o.data);
    train::TokenStream s(files.train);
    GeometryOverrides g;
    g.n_layer = p.n_layer;
    g.n_embd = p.n_embd;
    g.n_head = p.n_head;
    g.n_ff = p.n_ff;
    g.n_vocab = static_cast<int>(s.n_vocab());
    g.n_ctx = p.ctx;
    g.min_ctx = p.ctx;
    g.eos_token_id = s.eos_id();
    o.config = geometry_from_overrides("tiny-neox", g);
  } else {
    o.init = init;
  }
  // A cut run left a checkpoint: continue it (bit for bit); anything else there is a start that
  // never reached one, started over.
  if (fs::exists(fs::path(out) / train::kCheckpointFile)) {
    o.resume = true;
    log(cat(stage, ": resuming ", what, " from its checkpoint"));
  } else {
    o.overwrite = true;
    log(cat(stage, ": ", what, ", ", steps, " steps of ", p.batch, " x ", p.ctx, " tokens"));
  }
  const train::TrainSummary r = train::run_training(o);
  mark_done(stage, {{"steps", r.steps}, {"loss", r.last_loss}, {"val_loss", r.val_loss}});
}

void Runner::convert_stage(const PaperConfig& c, MergeStrategy merge, const std::string& dst,
                           bool owners_auto) {
  const std::string stage =
      cat("convert-", c.name, merge == MergeStrategy::kOwner ? "" : cat("-", merge_name(merge)),
          owners_auto ? "-auto" : "");
  if (done(stage)) {
    log(stage + ": done (skipped)");
    return;
  }
  log(cat(stage, ": ", c.kv_layers, " KV layers x ", c.kv_heads, " KV heads, merge ",
          merge_name(merge), owners_auto ? ", owner layers searched" : ""));
  FolderConvertOptions o;
  o.convert.kv_heads = c.kv_heads;
  if (c.kv_layers < opt_.preset.n_layer) o.convert.kv_layers = c.kv_layers;
  o.convert.owners_auto = owners_auto;
  o.convert.merge = merge;
  o.force = true;
  if (needs_calibration(o.convert)) {
    o.calibration.path = train_shard_;
    o.calibration.n_tokens = opt_.preset.calibration_tokens;
    o.calibration.ctx = opt_.preset.ctx;
  }
  const FolderConversion fc = convert_folder(path("base"), dst, o);
  json info = {{"params", fc.report.params_after}};
  if (owners_auto) info["kv_source"] = fc.out.kv_source;
  mark_done(stage, info);
}

json Runner::evaluate_model(const std::string& model_dir, bool full) {
  const ReproducePreset& p = opt_.preset;
  Model model(load_model(model_dir));
  const std::unique_ptr<Tokenizer> tok = load_tokenizer(path("tokenizer/tokenizer.model"));
  eval::EvalOptions e;
  e.ctx = p.ctx;
  e.progress = opt_.progress;
  e.on_warning = [this](const std::string& w) { log("eval: " + w); };
  json j;
  const ModelConfig& cfg = model.config();
  j["n_params"] = cfg.n_params();
  j["kv_bytes_per_token"] = cfg.kv_bytes_per_token(sizeof(float));
  e.limit = p.heldout_windows;
  const json h = eval::eval_shard(model, tok.get(), val_shard_, e);
  j["heldout"] = h;
  if (!full) return j;
  const std::string eval_dir = (fs::path(opt_.data_root) / "eval").string();
  e.limit = 0;
  e.max_bytes = p.wikitext_bytes;
  j["wikitext"] = eval::eval_text(model, *tok, (fs::path(eval_dir) / kWikitext).string(), e);
  e.max_bytes = 0;
  e.limit = p.task_items;
  for (const char* t : kTasks) j[t] = eval::eval_task(model, *tok, eval::resolve_task(t, eval_dir), e);
  return j;
}

json Runner::eval_stage(const std::string& stage, const std::string& model_dir, bool full) {
  const std::string file = path("eval/" + stage + ".json");
  if (fs::exists(file)) return json::parse(read_text_file(file));
  log(stage + (full ? ": held-out text, WikiText-2, LAMBADA, ARC-Easy, PIQA, SciQ" : ": held-out loss"));
  const json j = evaluate_model(model_dir, full);
  fs::create_directories(out_ / "eval");
  write_text_file(file, j.dump(1) + "\n");
  return j;
}

void Runner::write_reports(const json& results) const {
  write_text_file(path("results.json"), results.dump(2) + "\n");
  write_text_file(path("results.md"), results_markdown(results));
  write_text_file(path("pareto.svg"), pareto_svg(results));
  // Loss curves: the pretraining, and every uptraining in one plot.
  std::vector<train::LossSeries> pre = {
      train::read_train_log(path(std::string("base/") + train::kLogFile), "MHA base")};
  write_text_file(path("loss_pretrain.svg"),
                  train::loss_plot_svg(pre, "pretraining of the MHA base (" + opt_.preset.name + ")"));
  std::vector<train::LossSeries> up;
  for (const auto& c : results["configs"]) {
    const std::string name = c["config"];
    up.push_back(train::read_train_log(path("uptrained/" + name + "/" + train::kLogFile), name));
  }
  write_text_file(path("loss_uptrain.svg"),
                  train::loss_plot_svg(up, "uptraining after conversion (" + opt_.preset.name + ")"));
}

double metric(const json& j, const char* task, const char* key) {
  return j.contains(task) ? j[task].value(key, NAN) : NAN;
}

json Runner::run() {
  const json settings = settings_json(opt_);
  fs::create_directories(out_);
  const std::string settings_file = path("reproduce.json");
  if (!fs::exists(settings_file)) write_text_file(settings_file, settings.dump(2) + "\n");
  set_num_threads(opt_.threads);

  prepare_corpus();
  train_tokenizer_stage();
  tokenize_stage();
  const ReproducePreset& p = opt_.preset;
  train_stage("pretrain", "", path("base"), p.pretrain_tokens, p.pretrain_lr, 0.05,
              "pretraining the MHA base");

  json rows = json::array();
  for (const PaperConfig& c : chosen_configs(opt_.configs)) {
    const std::string name = c.name;
    const bool is_mha = name == "MHA-144";
    if (!is_mha) convert_stage(c, MergeStrategy::kOwner, converted_dir(c));
    const json conv = eval_stage("converted-" + name, converted_dir(c), false);
    // The authors' uptraining recipe (warmup ratio 0.2); the MHA base too: the control.
    train_stage("uptrain-" + name, converted_dir(c), path("uptrained/" + name),
                p.uptrain_tokens, p.uptrain_lr, 0.2, "uptraining " + name);
    const json up = eval_stage("uptrained-" + name, path("uptrained/" + name), true);
    json r;
    r["config"] = name;
    r["kv_layers"] = c.kv_layers;
    r["kv_heads"] = c.kv_heads;
    r["kv_bytes_per_token"] = up["kv_bytes_per_token"];
    r["n_params"] = up["n_params"];
    r["loss_converted"] = conv["heldout"]["loss"];
    r["loss_uptrained"] = up["heldout"]["loss"];
    r["ppl_converted"] = conv["heldout"]["token_perplexity"];
    r["ppl_uptrained"] = up["heldout"]["token_perplexity"];
    r["bits_per_byte"] = up["heldout"].value("bits_per_byte", NAN);
    r["wikitext_bits_per_byte"] = up["wikitext"].value("bits_per_byte", NAN);
    r["lambada_acc"] = metric(up, "lambada_openai", "acc");
    r["lambada_ppl"] = metric(up, "lambada_openai", "perplexity");
    r["arc_easy_acc"] = metric(up, "arc_easy", "acc");
    r["piqa_acc"] = metric(up, "piqa", "acc");
    r["sciq_acc"] = metric(up, "sciq", "acc");
    // The paper's average (%): ARC-e, LAMBADA, PIQA, SciQ acc.
    r["avg_acc"] = 100.0 *
                   (r["arc_easy_acc"].get<double>() + r["lambada_acc"].get<double>() +
                    r["piqa_acc"].get<double>() + r["sciq_acc"].get<double>()) /
                   4.0;
    r["paper_avg_acc"] = c.paper_avg_acc;
    r["paper_lambada_ppl"] = c.paper_lambada_ppl;

    // Beyond the paper's procedure (held-out loss only): the other merges right after conversion,
    // and uptraining with distillation from the MHA base. MHA-144 has nothing to merge or distil.
    if (!is_mha) {
      for (MergeStrategy m : {MergeStrategy::kPairwise, MergeStrategy::kMean}) {
        const std::string tag = merge_name(m);
        const std::string dir = path("converted-" + tag + "/" + name);
        convert_stage(c, m, dir);
        r["loss_converted_" + tag] = eval_stage("converted-" + tag + "-" + name, dir, false)["heldout"]["loss"];
      }
      // Training-free: calibrated folds on the authors' owners, and on searched owners where
      // layers share.
      if (p.calibration_tokens > 0) {
        const std::string dir = path("converted-calibrated/" + name);
        convert_stage(c, MergeStrategy::kCalibrated, dir);
        r["loss_converted_calibrated"] =
            eval_stage("converted-calibrated-" + name, dir, false)["heldout"]["loss"];
        if (c.kv_layers < p.n_layer) {
          const std::string adir = path("converted-calibrated-auto/" + name);
          convert_stage(c, MergeStrategy::kCalibrated, adir, true);
          r["loss_converted_calibrated_auto"] =
              eval_stage("converted-calibrated-auto-" + name, adir, false)["heldout"]["loss"];
          r["kv_source_auto"] = load_model_config(adir).kv_source;
        }
      }
      if (distilled(name)) {
        train_stage("uptrain-distilled-" + name, converted_dir(c),
                    path("uptrained-distilled/" + name), p.uptrain_tokens, p.uptrain_lr, 0.2,
                    "uptraining " + name + " distilled from the base", path("base"));
        r["loss_uptrained_distilled"] = eval_stage("uptrained-distilled-" + name,
                                                   path("uptrained-distilled/" + name),
                                                   false)["heldout"]["loss"];
        // Both methods beyond the paper together: the same uptraining with distillation, started
        // from the calibrated conversion (searched owners where layers share) instead of owner.
        if (p.calibration_tokens > 0) {
          const std::string from = c.kv_layers < p.n_layer ? path("converted-calibrated-auto/" + name)
                                                           : path("converted-calibrated/" + name);
          train_stage("uptrain-calibrated-distilled-" + name, from,
                      path("uptrained-calibrated-distilled/" + name), p.uptrain_tokens,
                      p.uptrain_lr, 0.2,
                      "uptraining the calibrated " + name + " distilled from the base", path("base"));
          r["loss_uptrained_calibrated_distilled"] =
              eval_stage("uptrained-calibrated-distilled-" + name,
                         path("uptrained-calibrated-distilled/" + name), false)["heldout"]["loss"];
        }
      }
    }
    rows.push_back(r);
  }

  const json data = json::parse(read_text_file(path("done/data")));
  const json pre = json::parse(read_text_file(path("done/pretrain")));
  json results;
  results["preset"] = p.name;
  results["note"] = p.note;
  results["settings"] = settings;
  results["scale"] = {{"n_params", rows[0]["n_params"]},
                      {"d_head", p.n_embd / p.n_head},
                      {"ctx", p.ctx},
                      {"train_tokens", data["train_tokens"]},
                      {"heldout_tokens", data["val_tokens"]},
                      {"pretrain_tokens", p.pretrain_tokens},
                      {"pretrain_epochs", static_cast<double>(p.pretrain_tokens) /
                                              data["train_tokens"].get<double>()},
                      {"pretrain_val_loss", pre["val_loss"]},
                      {"uptrain_tokens", p.uptrain_tokens}};
  results["configs"] = rows;
  write_reports(results);
  mark_done("report");
  return results;
}

}  // namespace

void validate_reproduce(const ReproduceOptions& opt) {
  const ReproducePreset& p = opt.preset;
  MLKV_REQUIRE(!opt.out_dir.empty(), "reproduce: give --out DIR");
  MLKV_REQUIRE(p.n_layer == 12 && p.n_head == 12,
               "reproduce: the paper's configurations need 12 layers x 12 heads");
  MLKV_REQUIRE(p.n_embd % p.n_head == 0 && p.ctx > 0 && p.batch > 0 && p.pretrain_tokens > 0 &&
                   p.uptrain_tokens > 0,
               "reproduce: preset '", p.name, "' has an invalid size");
  for (const std::string& n : opt.configs) {
    const auto& k = paper_configs();
    const bool known = std::any_of(k.begin(), k.end(), [&](const PaperConfig& c) { return n == c.name; });
    if (!known) {
      std::string names;
      for (const PaperConfig& c : k) names += (names.empty() ? "" : ", ") + std::string(c.name);
      fail("reproduce: unknown configuration '", n, "' (known: ", names, ")");
    }
  }
  MLKV_REQUIRE(fs::is_directory(opt.data_root), "reproduce: the data root '", opt.data_root,
               "' is not a folder (give --data-root, the shared data folder with text/ and eval/)");
  corpus_files(opt);  // throws naming a missing text
  const fs::path eval_dir = fs::path(opt.data_root) / "eval";
  MLKV_REQUIRE(fs::is_regular_file(eval_dir / kWikitext), "reproduce: ",
               (eval_dir / kWikitext).string(), " is missing");
  for (const char* t : kTasks) eval::resolve_task(t, eval_dir.string());
  // OUT: new, empty, or a run of the same settings (resumed).
  const fs::path settings_file = fs::path(opt.out_dir) / "reproduce.json";
  if (fs::exists(settings_file)) {
    const json was = json::parse(read_text_file(settings_file.string()), nullptr, false);
    MLKV_REQUIRE(!was.is_discarded() && was == settings_json(opt), "reproduce: ", opt.out_dir,
                 " holds a run with other settings (", settings_file.string(),
                 "); give a new --out to start another");
  } else if (fs::exists(opt.out_dir)) {
    MLKV_REQUIRE(fs::is_directory(opt.out_dir) && fs::is_empty(opt.out_dir), "reproduce: ",
                 opt.out_dir, " exists and is not a reproduce run; give a new or empty --out");
  }
}

json run_reproduce(const ReproduceOptions& opt) {
  validate_reproduce(opt);
  Runner r(opt);
  return r.run();
}

}  // namespace mlkv::experiment
