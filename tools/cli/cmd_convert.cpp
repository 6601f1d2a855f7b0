// `mlkv convert SRC DST`: MHA/GQA -> GQA/MQA/MLKV conversion (src/convert/convert.h) written as
// an HF folder the engine and trainer load. The whole output folder appears atomically: it is
// written under a temporary name next to DST and renamed into place, so a conversion that fails
// (bad options, bad source, I/O) leaves nothing behind.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "convert/convert.h"
#include "core/atomic_dir.h"
#include "core/check.h"
#include "io/hf_model.h"

namespace mlkv::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct ConvertArgs {
  std::string src, dst, owners, kv_source, merge = merge_name(kDefaultMerge), widen = "none",
                                           share = "post", dtype = "same", tokenizer;
  int kv_heads = 0, kv_layers = 0;
  bool force = false, json_out = false;
};

std::vector<int> int_list(const std::string& s) {
  std::vector<int> out;
  for (int32_t v : parse_id_list(s)) out.push_back(static_cast<int>(v));
  return out;
}

DType parse_dtype(const std::string& s, DType same) {
  if (s == "same") return same;
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  fail("--dtype must be same, f32, f16 or bf16 (got '", s, "')");
}

// Files that travel with the weights so the output is a complete model folder.
const char* const kSideFiles[] = {
    "tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "encoder.json",          "vocab.bpe",
    "tokenizer.bin",   "generation_config.json"};

bool is_llama2c_tokenizer_name(const std::string& name) {
  return name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && name.size() > 4 &&
                                     name.compare(name.size() - 4, 4, ".bin") == 0);
}

// The tokenizer files to copy: --tokenizer (a file, or a folder's known files), else the source
// folder's known files, else (a llama2.c .bin source) the one tok*.bin next to it.
std::vector<fs::path> tokenizer_files(const std::string& src, const std::string& tokenizer) {
  std::vector<fs::path> out;
  auto from_dir = [&](const fs::path& dir) {
    for (const char* name : kSideFiles) {
      if (fs::is_regular_file(dir / name)) out.push_back(dir / name);
    }
  };
  if (!tokenizer.empty()) {
    MLKV_REQUIRE(fs::exists(tokenizer), "--tokenizer '", tokenizer, "' does not exist");
    if (fs::is_directory(tokenizer)) {
      from_dir(tokenizer);
    } else if (fs::path(tokenizer).filename() == "encoder.json" ||
               fs::path(tokenizer).extension() == ".bpe") {
      const fs::path dir = fs::path(tokenizer).parent_path();
      out = {dir / "encoder.json", dir / "vocab.bpe"};
    } else {
      out.push_back(tokenizer);
    }
    MLKV_REQUIRE(!out.empty(), "--tokenizer '", tokenizer, "': no tokenizer files found there");
    return out;
  }
  if (fs::is_directory(src)) {
    from_dir(src);
    return out;
  }
  const fs::path dir =
      fs::path(src).parent_path().empty() ? fs::path(".") : fs::path(src).parent_path();
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && is_llama2c_tokenizer_name(e.path().filename().string()))
      found.push_back(e.path());
  }
  if (found.size() == 1) out = found;
  return out;
}

// Checks DST before any work: a new path, an empty folder, or (with --force) an earlier model
// folder.
void check_destination(const std::string& src, const std::string& dst, bool force) {
  MLKV_REQUIRE(!dst.empty(), "the destination path is empty");
  std::error_code ec;
  if (!fs::exists(dst, ec)) return;
  MLKV_REQUIRE(fs::is_directory(dst, ec), "destination '", dst, "' exists and is not a folder");
  MLKV_REQUIRE(!fs::exists(src, ec) || !fs::equivalent(src, dst, ec), "destination '", dst,
               "' is the source itself");
  if (fs::is_empty(dst, ec)) return;
  MLKV_REQUIRE(force, "destination '", dst,
               "' exists and is not empty (use --force to replace a model folder)");
  MLKV_REQUIRE(fs::is_regular_file(fs::path(dst) / "config.json"), "destination '", dst,
               "' is not a model folder (no config.json); refusing to replace it");
}

std::string list_str(const std::vector<int>& v) {
  return "[" + layer_list(v) + "]";
}

std::string scheme(const ModelConfig& c) {
  return cat(c.n_kv_layers(), " KV layers x ", c.n_head_kv, " KV heads (owners ",
             list_str(c.owner_layers()), ")");
}

void run_convert(const ConvertArgs& a) {
  ConvertOptions opt;
  opt.kv_heads = a.kv_heads;
  opt.kv_layers = a.kv_layers;
  if (!a.owners.empty()) opt.owners = int_list(a.owners);
  if (!a.kv_source.empty()) opt.kv_source = int_list(a.kv_source);
  opt.merge = parse_merge(a.merge);
  opt.widen = parse_widen(a.widen);
  opt.share = parse_share_rope(a.share, "--share");

  check_destination(a.src, a.dst, a.force);
  const LoadedModel src = load_model(a.src);
  plan_conversion(src.config, opt);  // every option checked before anything is written
  const DType dtype = parse_dtype(a.dtype, src.config.file_dtype);
  const std::vector<fs::path> side = tokenizer_files(a.src, a.tokenizer);

  ConvertReport rep;
  const LoadedModel out = convert_model(src, opt, &rep);

  // Everything is written into a temporary sibling folder that then replaces DST in one rename.
  AtomicDirWriter dir(a.dst);
  SaveOptions so;
  so.dtype = dtype;
  so.fuse_qkv_when_possible = false;  // the split layout: the form MLKV models need anyway
  save_model(dir.path(), out.config, out.weights, so);
  for (const fs::path& f : side)
    fs::copy_file(f, fs::path(dir.path()) / f.filename(), fs::copy_options::overwrite_existing);
  dir.commit();

  const ModelConfig& c = out.config;
  if (a.json_out) {
    json j = {{"src", a.src},
              {"dst", a.dst},
              {"n_head_kv", c.n_head_kv},
              {"n_kv_layers", c.n_kv_layers()},
              {"owner_layers", c.owner_layers()},
              {"kv_source", c.kv_source},
              {"kv_share_rope", share_rope_name(c.share_rope)},
              {"merge", merge_name(opt.merge)},
              {"widen_mlp", widen_name(opt.widen)},
              {"params_before", rep.params_before},
              {"params_after_kv_drop", rep.params_dropped},
              {"params_after", rep.params_after},
              {"n_ff_before", rep.n_ff_before},
              {"n_ff_after", rep.n_ff_after},
              {"kv_bytes_per_token_before", rep.kv_bytes_per_token_before},
              {"kv_bytes_per_token_after", rep.kv_bytes_per_token_after},
              {"dtype", dtype_name(dtype)},
              {"tokenizer_files", json::array()}};
    for (const fs::path& f : side) j["tokenizer_files"].push_back(f.filename().string());
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("source        %s: %s\n", a.src.c_str(), scheme(src.config).c_str());
  std::printf("converted     %s: %s, %s-rotary sharing\n", a.dst.c_str(), scheme(c).c_str(),
              share_rope_name(c.share_rope));
  std::printf("kv_source     %s\n", list_str(c.kv_source).c_str());
  std::printf("merge         %s (K/V heads mean-pooled in groups of %d)\n", merge_name(opt.merge),
              src.config.n_head_kv / c.n_head_kv);
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
  std::printf("written       %s (%s, split q/k/v layout%s)\n", a.dst.c_str(), dtype_name(dtype),
              side.empty() ? ", no tokenizer found to copy" : ", tokenizer copied");
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
  cmd->add_option("--owners", a->owners, "Explicit owner layers, e.g. 0,3,6,9 (must start at 0)");
  cmd->add_option("--kv-source", a->kv_source, "Explicit layer -> owner map, e.g. 0,0,0,3,3,3");
  cmd->add_option("--merge", a->merge, "Cross-layer K/V merge: pairwise (authors), mean, owner")
      ->capture_default_str();
  cmd->add_option(
         "--widen-mlp", a->widen,
         "Give back the removed parameters by widening every MLP: none, copy (authors: copies of "
         "existing neurons), zero (copied inputs, zero outputs: same function)")
      ->capture_default_str();
  cmd->add_option("--share", a->share, "kv_share_rope of the output: post or pre")
      ->capture_default_str();
  cmd->add_option("--dtype", a->dtype, "Output dtype: same (as the source), f32, f16, bf16")
      ->capture_default_str();
  cmd->add_option("--tokenizer", a->tokenizer, "Tokenizer file or folder to copy into the output");
  cmd->add_flag("--force", a->force, "Replace an existing model folder at DST");
  cmd->add_flag("--json", a->json_out, "Print a JSON report");
  cmd->callback([a] { run_convert(*a); });
}

}  // namespace mlkv::cli
