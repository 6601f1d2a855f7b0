// `mlkv reproduce`: the MLKV paper's experiment (PAPER.md, Table "Published results") as one
// resumable pipeline on the shipped text:
//
//   corpus -> tokenizer -> shards (train / held-out) -> pretraining of an MHA base (12 layers x
//   12 heads, so the paper's names apply) -> conversion to each of the paper's configurations ->
//   uptraining of each on the same token budget (the MHA base too: the control the paper lacks)
//   -> evaluation (held-out loss, perplexity and bits per byte, WikiText-2 bits per byte, LAMBADA
//   acc and perplexity, ARC-Easy / PIQA / SciQ acc) -> results.json, results.md, a Pareto plot
//   (KV bytes per token vs held-out perplexity) and loss curves.
//
// Every stage leaves its output in OUT and a marker in OUT/done/ when complete; a rerun skips
// completed stages, resumes a cut training from its checkpoint (bit for bit: train/trainer.h) and
// redoes any other cut stage from its start (their outputs are written atomically). The settings
// of a run are fixed in OUT/reproduce.json at its start; a rerun with other settings is refused.
// docs/RESULTS.md describes the presets and the measured tables.
//
// What this is not: the stages themselves (tokenizer/, train/, convert/, eval/ do the work) or
// option parsing and printing (tools/cli/cmd_reproduce.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mlkv::experiment {

// One row of the paper's table (PAPER.md: Pythia-160M, 12 layers x 12 heads, uptrained on ~5 %
// of the Pile): kv_layers M owner layers (the authors' owner rule) x kv_heads G heads each.
struct PaperConfig {
  const char* name;  // "MHA-144", "GQA-48", "MLKV-48", ...
  int kv_layers;     // M (12: every layer owns its K/V)
  int kv_heads;      // G
  double paper_avg_acc;       // mean of ARC-e, LAMBADA, PIQA, SciQ acc (%)
  double paper_lambada_ppl;   // LAMBADA perplexity
};
// The nine configurations in the paper's order, MHA-144 first.
const std::vector<PaperConfig>& paper_configs();

// What a preset fixes: data, geometry, training budgets and evaluation sizes.
struct ReproducePreset {
  std::string name;
  // Corpus: files under the data root's text/ folder (a folder: its .txt files in name order);
  // only the first max_corpus_bytes of them (cut at a line break) when > 0.
  std::vector<std::string> texts;
  int64_t max_corpus_bytes = 0;
  double val_fraction = 0.05;  // held out by document unit (tokenizer/corpus.h), never trained on
  int vocab = 1024;            // SentencePiece BPE trained on the training text
  // The MHA base: a GPT-NeoX geometry (model/presets.h "tiny-neox": LayerNorm, GELU, parallel
  // residual, rotary on a quarter of each head) with these sizes.
  int n_layer = 12, n_head = 12, n_embd = 96, n_ff = 0;  // n_ff 0: 4 x n_embd
  int ctx = 128;                                        // training and evaluation context
  int64_t batch = 16;                                   // rows per optimizer step
  int64_t pretrain_tokens = 0;
  double pretrain_lr = 2e-3;
  // Uptraining of every configuration (the authors' recipe: AdamW 0.9 / 0.95, weight decay 0.01,
  // warmup ratio 0.2, cosine), the same budget for each.
  int64_t uptrain_tokens = 0;
  double uptrain_lr = 6e-4;
  int64_t save_every = 0;  // checkpoint interval in steps (what a cut run loses at most)
  // Evaluation sizes (0: all): held-out windows of ctx tokens, items of each task, bytes of
  // WikiText-2.
  int64_t heldout_windows = 0;
  int64_t task_items = 0;
  int64_t wikitext_bytes = 0;
  // Training-free calibrated conversion (convert.h, `--merge calibrated`, and with `--owners auto`
  // for configurations that share across layers): tokens of the training shard it is fitted on;
  // 0: not run.
  int64_t calibration_tokens = 0;
  // Configurations also uptrained with distillation from the MHA base (train/distill.h); "*": every
  // configuration but MHA-144.
  std::vector<std::string> distill = {"*"};
  std::string note;  // what the preset is for, printed and written to results.md
};
// "ci" (about a minute: the test suite's), "demo" (<= 30 minutes on 2 cores), "full" (hours,
// resumable). Throws mlkv::Error listing the names for an unknown one.
ReproducePreset reproduce_preset(const std::string& name);
std::vector<std::string> reproduce_preset_names();

struct ReproduceOptions {
  ReproducePreset preset;
  std::string out_dir;
  std::string data_root;  // the shared data folder (text/, eval/); must exist
  // Only these configurations (paper names); empty: all nine. MHA-144 is always run (the base
  // and the control).
  std::vector<std::string> configs;
  int threads = 0;  // 0: all cores
  uint64_t seed = 1234;
  bool progress = true;  // progress bars of the stages (tokenizing, training, evaluation)
  // One line per stage started or skipped ("[4/9] uptrain MLKV-6: 12 steps"); none: silent.
  std::function<void(const std::string&)> on_log;
};

// Checks the options (preset sizes, known configuration names, the data root holding the
// preset's texts and eval/ tasks, OUT free or a run with the same settings) and throws
// mlkv::Error naming the problem before any work starts.
void validate_reproduce(const ReproduceOptions& opt);

// Runs (or resumes) the pipeline and returns the results document also written to
// OUT/results.json: {"preset", "settings", "scale", "configs": [{"config", "kv_layers",
// "kv_heads", "kv_bytes_per_token", "n_params", "loss_converted", "loss_uptrained",
// "ppl_uptrained", "bits_per_byte", "wikitext_bits_per_byte", "lambada_acc", "lambada_ppl",
// "arc_easy_acc", "piqa_acc", "sciq_acc", "avg_acc", "paper_avg_acc", "paper_lambada_ppl"}, ...]}.
// Losses are nats per token on the held-out shard. Throws mlkv::Error from any stage.
nlohmann::json run_reproduce(const ReproduceOptions& opt);

// The markdown table of a results document (what results.md holds).
std::string results_markdown(const nlohmann::json& results);
// The Pareto plot: KV bytes per token (log axis) vs held-out perplexity, after conversion and
// after uptraining, one labelled point per configuration. Plain SVG 1.1.
std::string pareto_svg(const nlohmann::json& results);

}  // namespace mlkv::experiment
