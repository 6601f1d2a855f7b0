// `mlkv convert SRC DST`: MHA/GQA -> GQA/MQA/MLKV conversion (src/convert/convert.h) written as
// an HF folder the engine and trainer load, through convert_folder (src/convert/convert_folder.h):
// the whole output folder appears atomically, so a conversion that fails (bad options, bad
// source, I/O) leaves nothing behind. This file parses the options and prints the report.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "convert/convert_folder.h"
#include "core/check.h"

namespace mlkv::cli {

namespace {

struct ConvertArgs {
  std::string src, dst, owners, kv_source, merge = merge_name(kDefaultMerge), widen = "none",
                                           share = "post", dtype = "same", tokenizer;
  int kv_heads = 0, kv_layers = 0;
  bool force = false, json_out = false, fuse_qkv = false;
  std::string calibration, calibration_stream = "converted";
  int64_t calibration_tokens = kDefaultCalibrationTokens;
  int calibration_ctx = 0;
};

std::vector<int> int_list(const std::string& s) {
  std::vector<int> out;
  for (int32_t v : parse_id_list(s)) out.push_back(static_cast<int>(v));
  return out;
}

std::string list_str(const std::vector<int>& v) {
  return "[" + layer_list(v) + "]";
}

std::string scheme(const ModelConfig& c) {
  return cat(c.n_kv_layers(), " KV layers x ", c.n_head_kv, " KV heads (owners ",
             list_str(c.owner_layers()), ")");
}

// The calibration's summary: per layer the held-out error added to the residual stream (relative
// to the stream's energy) with the owner's K/V as they are and with the folds.
void print_calibration(const ConvertArgs& a, const CalibrationReport& r, const ModelConfig& c) {
  std::printf("calibration   %s: %lld tokens in %d rows of %d (%d held out), %s stream, %.1f s\n",
              a.calibration.c_str(), static_cast<long long>(r.tokens), r.rows, r.ctx, r.held_rows,
              r.sequential ? "converted" : "source", r.seconds);
  if (!r.owner_costs.empty()) {
    std::printf("owner search  owners %s: total error %.4g (authors' rule %s: %.4g)\n",
                list_str(c.owner_layers()).c_str(), r.search_cost,
                list_str(owners_by_authors_rule(c.n_layer, c.n_kv_layers())).c_str(), r.rule_cost);
  }
  if (r.layers.empty()) return;
  std::printf("  layer reads   error: owner    calibrated   heads folded  output folded\n");
  for (const LayerCalibration& l : r.layers) {
    const double e = l.stream_energy > 0 ? l.stream_energy : 1.0;
    std::printf("  %5d %5d   %12.4g %12.4g   %6d/%-6d %s\n", l.layer, l.kv_source, l.err_owner / e,
                l.err / e, l.heads_folded, c.n_head, l.output_folded ? "yes" : "no");
  }
}

void run_convert(const ConvertArgs& a) {
  FolderConvertOptions fo;
  ConvertOptions& opt = fo.convert;
  opt.kv_heads = a.kv_heads;
  opt.kv_layers = a.kv_layers;
  if (a.owners == "auto") {
    opt.owners_auto = true;
  } else if (!a.owners.empty()) {
    opt.owners = int_list(a.owners);
  }
  if (!a.kv_source.empty()) opt.kv_source = int_list(a.kv_source);
  opt.merge = parse_merge(a.merge);
  opt.widen = parse_widen(a.widen);
  opt.share = parse_share_rope(a.share, "--share");
  fo.dtype = a.dtype;
  fo.tokenizer = a.tokenizer;
  fo.force = a.force;
  fo.fuse_qkv = a.fuse_qkv;
  fo.calibration.path = a.calibration;
  fo.calibration.n_tokens = a.calibration_tokens;
  fo.calibration.ctx = a.calibration_ctx;
  opt.calibrate.sequential = parse_calibration_stream(a.calibration_stream, "--calibration-stream");

  const FolderConversion fc = convert_folder(a.src, a.dst, fo);
  const ConvertReport& rep = fc.report;
  const ModelConfig& c = fc.out;
  if (a.json_out) {
    std::printf("%s\n", conversion_json(a.src, a.dst, fo, fc).dump(2).c_str());
    return;
  }
  std::printf("source        %s: %s\n", a.src.c_str(), scheme(fc.src).c_str());
  std::printf("converted     %s: %s, %s-rotary sharing\n", a.dst.c_str(), scheme(c).c_str(),
              share_rope_name(c.share_rope));
  std::printf("kv_source     %s\n", list_str(c.kv_source).c_str());
  std::printf("merge         %s (K/V heads mean-pooled in groups of %d)\n", merge_name(opt.merge),
              fc.src.n_head_kv / c.n_head_kv);
  std::printf("kv cache      %lld -> %lld bytes per token (f32), %.2fx smaller\n",
              static_cast<long long>(rep.kv_bytes_per_token_before),
              static_cast<long long>(rep.kv_bytes_per_token_after),
              static_cast<double>(rep.kv_bytes_per_token_before) /
                  static_cast<double>(rep.kv_bytes_per_token_after));
  std::printf("parameters    %lld before, %lld after dropping K/V (-%lld)",
              static_cast<long long>(rep.params_before), static_cast<long long>(rep.params_dropped),
              static_cast<long long>(rep.params_before - rep.params_dropped));
  if (opt.widen != WidenMode::kNone) {
    std::printf(", %lld after widening the MLP %d -> %d (%s)",
                static_cast<long long>(rep.params_after), rep.n_ff_before, rep.n_ff_after,
                widen_name(opt.widen));
  }
  std::printf("\n");
  if (rep.calibrated) print_calibration(a, rep.calibration, c);
  std::printf("written       %s (%s, %s layout%s)\n", a.dst.c_str(), dtype_name(fc.dtype),
              a.fuse_qkv ? "fused-when-possible" : "split q/k/v",
              fc.tokenizer_files.empty() ? ", no tokenizer found to copy" : ", tokenizer copied");
}

}  // namespace

void add_convert_commands(CLI::App& app) {
  auto a = std::make_shared<ConvertArgs>();
  auto* cmd = app.add_subcommand(
      "convert",
      "Convert an MHA/GQA model to GQA/MQA/MLKV (pool K/V heads, merge K/V across layers)");
  cmd->add_option("src", a->src, "Source model folder (config.json + safetensors) or llama2.c .bin")
      ->required();
  cmd->add_option("dst", a->dst,
                  "Output folder (must not exist, or be empty; --force replaces a model folder)")
      ->required();
  cmd->add_option("--kv-heads", a->kv_heads,
                  "KV heads per KV layer, G (not given: keep the source's)")
      ->check(at_least(1));
  cmd->add_option("--kv-layers", a->kv_layers,
                  "Number of KV layers, M, owners by the authors' rule (not given: every layer)")
      ->check(at_least(1));
  cmd->add_option("--owners", a->owners,
                  "Explicit owner layers, e.g. 0,3,6,9 (must start at 0), or auto: the --kv-layers "
                  "owners with the lowest calibration error (needs --calibration)");
  cmd->add_option("--kv-source", a->kv_source, "Explicit layer -> owner map, e.g. 0,0,0,3,3,3");
  cmd->add_option("--merge", a->merge,
                  "Cross-layer K/V merge: pairwise (authors), mean, owner, calibrated (owner's K/V "
                  "and query/output maps fitted on --calibration text)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_merge(s); }));
  cmd->add_option("--calibration", a->calibration,
                  "Calibration text for --merge calibrated / --owners auto: a text file (tokenized "
                  "with the model's tokenizer) or a token shard from `mlkv tokenize`");
  cmd->add_option("--calibration-tokens", a->calibration_tokens,
                  "Calibration tokens to use (whole rows; every 4th row is held out)")
      ->capture_default_str()
      ->check(at_least(1));
  cmd->add_option("--calibration-ctx", a->calibration_ctx,
                  "Tokens per calibration row (default: the model's context)")
      ->check(at_least(1));
  cmd->add_option("--calibration-stream", a->calibration_stream,
                  "Activations each layer is calibrated on: converted (the converted model's own, "
                  "earlier layers folded) or source")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_calibration_stream(s, "--calibration-stream"); }));
  cmd->add_option(
         "--widen-mlp", a->widen,
         "Give back the removed parameters by widening every MLP: none, copy (authors: copies of "
         "existing neurons), zero (copied inputs, zero outputs: same function)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_widen(s); }));
  cmd->add_option("--share", a->share, "kv_share_rope of the output: post or pre")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_share_rope(s, "--share"); }));
  cmd->add_option("--dtype", a->dtype, "Output dtype: same (as the source), f32, f16, bf16")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_output_dtype(s); }));
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer file or folder to copy into the output");
  cmd->add_flag("--force", a->force, "Replace an existing model folder at DST");
  cmd->add_flag("--fuse-qkv", a->fuse_qkv,
                "GPT-NeoX without sharing: write the fused query_key_value transformers loads");
  cmd->add_flag("--json", a->json_out, "Print a JSON report");
  cmd->callback([a] { run_convert(*a); });
}

}  // namespace mlkv::cli
