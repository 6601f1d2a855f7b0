// convert_folder (convert_folder.h): checks, conversion, atomic write of the output folder.
#include "convert/convert_folder.h"

#include <filesystem>

#include "core/atomic_dir.h"
#include "core/check.h"
#include "io/hf_model.h"
#include "mlkv/tokenizer.h"

namespace mlkv {

namespace fs = std::filesystem;

DType parse_output_dtype(const std::string& s, DType same) {
  if (s == "same") return same;
  if (s == "f32") return DType::kF32;
  if (s == "f16") return DType::kF16;
  if (s == "bf16") return DType::kBF16;
  fail("--dtype must be same, f32, f16 or bf16 (got '", s, "')");
}

namespace {

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

// Checks dst before any work: a new path, an empty folder, or (with force) an earlier model
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

// The calibration options make sense together: calibration text exactly when the conversion
// uses it.
void check_calibration_options(const FolderConvertOptions& opt) {
  const ConvertOptions& o = opt.convert;
  const bool given = !opt.calibration.path.empty();
  if (o.merge == MergeStrategy::kCalibrated) {
    MLKV_REQUIRE(given,
                 "--merge calibrated needs calibration text: --calibration FILE (a text "
                 "file or a token shard)");
  }
  if (o.owners_auto) {
    MLKV_REQUIRE(o.kv_layers > 0, "--owners auto needs --kv-layers M (how many layers own K/V)");
    MLKV_REQUIRE(given,
                 "--owners auto needs calibration text: --calibration FILE (a text file or "
                 "a token shard)");
  }
  MLKV_REQUIRE(!given || needs_calibration(o),
               "--calibration is used only by --merge calibrated and --owners auto");
}

}  // namespace

FolderConversion convert_folder(const std::string& src, const std::string& dst,
                                const FolderConvertOptions& opt) {
  check_calibration_options(opt);
  check_destination(src, dst, opt.force);
  const LoadedModel in = load_model(src);
  plan_conversion(in.config, opt.convert);  // every option checked before anything is written
  CalibrationSet calib;
  if (needs_calibration(opt.convert)) {
    check_calibration_spec(opt.calibration, in.config);
    // Text needs the model's tokenizer (a shard does not).
    const std::unique_ptr<Tokenizer> tok =
        try_load_tokenizer(opt.tokenizer.empty() ? src : opt.tokenizer);
    calib = load_calibration(opt.calibration, in.config, tok.get());
  }
  FolderConversion c;
  c.src = in.config;
  c.dtype = parse_output_dtype(opt.dtype, in.config.file_dtype);
  const std::vector<fs::path> side = tokenizer_files(src, opt.tokenizer);

  const LoadedModel out =
      convert_model(in, opt.convert, &c.report, needs_calibration(opt.convert) ? &calib : nullptr);
  c.out = out.config;

  // Everything is written into a temporary sibling folder that then replaces dst in one rename.
  AtomicDirWriter dir(dst);
  SaveOptions so;
  so.dtype = c.dtype;
  so.fuse_qkv_when_possible = opt.fuse_qkv;  // default split: the form MLKV models need anyway
  save_model(dir.path(), out.config, out.weights, so);
  for (const fs::path& f : side) {
    fs::copy_file(f, fs::path(dir.path()) / f.filename(), fs::copy_options::overwrite_existing);
    c.tokenizer_files.push_back(f.filename().string());
  }
  dir.commit();
  return c;
}

namespace {

// The calibration part of the report (null when none ran).
nlohmann::json calibration_json(const FolderConvertOptions& opt, const ConvertReport& rep) {
  if (!rep.calibrated) return nullptr;
  const CalibrationReport& r = rep.calibration;
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerCalibration& l : r.layers) {
    const double e = l.stream_energy > 0 ? l.stream_energy : 1.0;
    layers.push_back({{"layer", l.layer},
                      {"kv_source", l.kv_source},
                      {"error_owner", l.err_owner / e},
                      {"error", l.err / e},
                      {"attention_energy", l.attn_energy / e},
                      {"kl_owner", l.kl_owner},
                      {"kl", l.kl},
                      {"heads_folded", l.heads_folded},
                      {"output_folded", l.output_folded}});
  }
  nlohmann::json j = {{"path", opt.calibration.path},
                      {"tokens", r.tokens},
                      {"rows", r.rows},
                      {"ctx", r.ctx},
                      {"held_out_rows", r.held_rows},
                      {"sequential", r.sequential},
                      {"seconds", r.seconds},
                      {"layers", layers}};
  if (!r.owner_costs.empty()) {
    j["owner_search"] = {
        {"cost", r.owner_costs}, {"total", r.search_cost}, {"authors_rule_total", r.rule_cost}};
  }
  return j;
}

}  // namespace

nlohmann::json conversion_json(const std::string& src, const std::string& dst,
                               const FolderConvertOptions& opt, const FolderConversion& c) {
  const ConvertReport& rep = c.report;
  return {{"src", src},
          {"dst", dst},
          {"n_head_kv", c.out.n_head_kv},
          {"n_kv_layers", c.out.n_kv_layers()},
          {"owner_layers", c.out.owner_layers()},
          {"kv_source", c.out.kv_source},
          {"kv_share_rope", share_rope_name(c.out.share_rope)},
          {"merge", merge_name(opt.convert.merge)},
          {"widen_mlp", widen_name(opt.convert.widen)},
          {"params_before", rep.params_before},
          {"params_after_kv_drop", rep.params_dropped},
          {"params_after", rep.params_after},
          {"n_ff_before", rep.n_ff_before},
          {"n_ff_after", rep.n_ff_after},
          {"kv_bytes_per_token_before", rep.kv_bytes_per_token_before},
          {"kv_bytes_per_token_after", rep.kv_bytes_per_token_after},
          {"dtype", dtype_name(c.dtype)},
          {"tokenizer_files", c.tokenizer_files},
          {"owners_auto", opt.convert.owners_auto},
          {"calibration", calibration_json(opt, rep)}};
}

}  // namespace mlkv
