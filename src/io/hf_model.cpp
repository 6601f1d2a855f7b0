#include "io/hf_model.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "io/hf_config.h"
#include "io/llama2c.h"
#include "io/safetensors.h"

namespace mlkv {

namespace fs = std::filesystem;

namespace {

bool neox_can_fuse(const ModelConfig& c) {
  return c.family == Family::kGptNeoX && c.n_head_kv == c.n_head && !c.shares_across_layers() &&
         c.attn_bias;
}

std::string fused_prefix(int il) { return cat("gpt_neox.layers.", il, ".attention.query_key_value."); }

// Buffers some exported checkpoints carry that are not parameters.
bool is_ignorable_buffer(const std::string& name) {
  auto ends_with = [&](const char* s) {
    const size_t n = std::strlen(s);
    return name.size() >= n && name.compare(name.size() - n, n, s) == 0;
  };
  return ends_with("attention.bias") || ends_with("attention.masked_bias") ||
         ends_with("rotary_emb.inv_freq");
}

// A weight that holds a NaN or an infinity makes every output NaN: refused at load, naming it.
void require_finite(const float* p, int64_t n, const std::string& name, const TensorEntry& e) {
  const int64_t i = first_non_finite(p, n);
  MLKV_REQUIRE(i < 0, "tensor '", name, "' in '", *e.file, "' holds a non-finite value (", p[i < 0 ? 0 : i],
               ") at element ", i, ": the checkpoint is damaged (NaN or infinite weights make every output NaN)");
}

void copy_checked(const TensorEntry& e, Tensor& dst, const std::string& name) {
  MLKV_REQUIRE(e.shape == dst.shape(), "tensor '", name, "' in '", *e.file, "' has shape ",
               e.shape_str(), " but the config calls for ", dst.shape_str());
  entry_to_f32(e, dst.data());
  require_finite(dst.data(), dst.numel(), name, e);
}

// GPT-NeoX fused qkv: rows are laid out per head as [q(d), k(d), v(d)].
void unfuse_qkv(const ModelConfig& c, const TensorEntry& w_e, const TensorEntry* b_e,
                LayerWeights& l, const std::string& prefix) {
  const int64_t E = c.n_embd, d = c.n_embd_head, H = c.n_head;
  const std::vector<int64_t> want = {3 * H * d, E};
  MLKV_REQUIRE(w_e.shape == want, "tensor '", prefix, "weight' has shape ", w_e.shape_str(),
               " but the config calls for [", 3 * H * d, ", ", E, "]");
  Tensor fused({3 * H * d, E});
  entry_to_f32(w_e, fused.data());
  require_finite(fused.data(), fused.numel(), prefix + "weight", w_e);
  Tensor fused_b;
  if (b_e != nullptr) {
    MLKV_REQUIRE(b_e->shape == std::vector<int64_t>{3 * H * d}, "tensor '", prefix,
                 "bias' has shape ", b_e->shape_str(), ", expected [", 3 * H * d, "]");
    fused_b = Tensor({3 * H * d});
    entry_to_f32(*b_e, fused_b.data());
    require_finite(fused_b.data(), fused_b.numel(), prefix + "bias", *b_e);
  }
  Tensor* dst_w[3] = {&l.wq, &l.wk, &l.wv};
  Tensor* dst_b[3] = {&l.bq, &l.bk, &l.bv};
  for (int64_t h = 0; h < H; ++h) {
    for (int part = 0; part < 3; ++part) {
      const int64_t src_row = (h * 3 + part) * d;
      std::memcpy(dst_w[part]->data() + h * d * E, fused.data() + src_row * E,
                  static_cast<size_t>(d * E) * sizeof(float));
      if (b_e != nullptr && !dst_b[part]->empty()) {
        std::memcpy(dst_b[part]->data() + h * d, fused_b.data() + src_row,
                    static_cast<size_t>(d) * sizeof(float));
      }
    }
  }
}

// The layer whose fused query_key_value tensor (GPT-NeoX) holds parameter `name`, or -1 when
// `name` is not a q/k/v parameter or the file has no fused tensor for its layer.
int fused_layer(const ModelConfig& c, const std::string& name, const SafeTensorsSet& st) {
  constexpr const char* kLayers = "gpt_neox.layers.";
  if (c.family != Family::kGptNeoX || name.rfind(kLayers, 0) != 0) return -1;
  const bool is_qkv = name.find(".attention.query.") != std::string::npos ||
                      name.find(".attention.key.") != std::string::npos ||
                      name.find(".attention.value.") != std::string::npos;
  if (!is_qkv) return -1;
  const int il = std::stoi(name.substr(std::strlen(kLayers)));
  return st.find(fused_prefix(il) + "weight") != nullptr ? il : -1;
}

// Before anything is allocated: every tensor the config calls for is in the files, and the files
// hold at least as many values as the config's parameters, so a config whose sizes lie is refused
// here rather than by an allocation of its size.
void check_before_allocating(const std::string& path, const ModelConfig& c,
                             const SafeTensorsSet& st) {
  ModelWeights names_only;  // nothing allocated: list_params only names the tensors
  for (const auto& p : list_params(c, names_only)) {
    MLKV_REQUIRE(st.find(p.name) != nullptr || fused_layer(c, p.name, st) >= 0, "'", path,
                 "': missing tensor '", p.name, "' (", c.summary(), ")");
  }
  int64_t have = 0;  // each entry's bytes lie inside a mapped file: the sum cannot overflow
  for (const auto& name : st.names()) have += st.find(name)->numel();
  MLKV_REQUIRE(have >= c.n_params(), "'", path, "': the config calls for ", c.n_params(),
               " parameters but the safetensors files hold only ", have,
               " values (config.json and the weights disagree)");
}

// The name of the output matrix (lm_head.weight, embed_out.weight), from the one place that
// knows names: the parameter list of the same model untied.
std::string output_tensor_name(const ModelConfig& c) {
  ModelConfig untied = c;
  untied.tied_embeddings = false;
  ModelWeights names_only;
  for (const auto& p : list_params(untied, names_only)) {
    if (p.tensor == &names_only.output) return p.name;
  }
  MLKV_CHECK(false);
  return {};
}

// A tied model (tie_word_embeddings: true) whose file also holds the output matrix, as some
// exports do: fine when it is the embedding; when it differs, the embedding is what is used (as in
// transformers, which ties the output to the embedding after loading) and the caller is told.
void check_tied_output(const std::string& path, const TensorEntry& e, const Tensor& embedding,
                       const std::string& name, const std::string& embed_name,
                       const LoadWarning& warn) {
  bool same = e.shape == embedding.shape();
  if (same) {
    Tensor out(embedding.shape());
    entry_to_f32(e, out.data());
    same = std::memcmp(out.data(), embedding.data(),
                       static_cast<size_t>(embedding.numel()) * sizeof(float)) == 0;
  }
  if (same) return;
  const std::string msg =
      cat("'", path, "': tensor '", name, "' differs from the embedding '", embed_name, "' (",
          e.shape == embedding.shape() ? "same shape, other values" : "shape " + e.shape_str(),
          ") but the config ties them (tie_word_embeddings: true): using the embedding as the "
          "output matrix and ignoring '", name, "'");
  if (warn) {
    warn(msg);
  } else {
    std::fprintf(stderr, "mlkv: warning: %s\n", msg.c_str());
  }
}

}  // namespace

LoadedModel load_model(const std::string& path, const LoadWarning& warn) {
  if (fs::is_regular_file(path) && path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0) {
    return load_llama2c(path);
  }
  const char* const kNotAModel =
      "' is neither a model folder (config.json + model.safetensors) nor a llama2.c .bin file";
  if (!fs::exists(path)) fail_missing("model path '", path, kNotAModel);
  MLKV_REQUIRE(fs::is_directory(path), "model path '", path, kNotAModel);
  LoadedModel m;
  m.config = load_model_config(path);
  const ModelConfig& c = m.config;
  SafeTensorsSet st = SafeTensorsSet::open_dir(path);
  check_before_allocating(path, c, st);
  allocate_weights(c, &m.weights);

  std::set<std::string> used;
  for (auto& p : list_params(c, m.weights)) {
    const int il = fused_layer(c, p.name, st);
    if (il >= 0) {
      // Fused layout: q/k/v of layer il come from one query_key_value tensor.
      MLKV_REQUIRE(neox_can_fuse(c) || (c.n_head_kv == c.n_head && c.owns_kv(il)), "'", path,
                   "': layer ", il, " has a fused query_key_value tensor but the config gives it ",
                   c.owns_kv(il) ? "grouped K/V heads" : "no K/V of its own");
      const std::string fp = fused_prefix(il);
      if (used.insert(fp + "weight").second) {
        const TensorEntry* fb = st.find(fp + "bias");
        MLKV_REQUIRE(fb != nullptr || !c.attn_bias, "'", path, "': missing tensor '", fp, "bias'");
        if (fb != nullptr) used.insert(fp + "bias");
        unfuse_qkv(c, *st.find(fp + "weight"), fb, m.weights.layers[static_cast<size_t>(il)], fp);
      }
      continue;
    }
    const TensorEntry* e = st.find(p.name);
    MLKV_REQUIRE(e != nullptr, "'", path, "': missing tensor '", p.name, "' (", c.summary(), ")");
    copy_checked(*e, *p.tensor, p.name);
    used.insert(p.name);
  }
  if (c.tied_embeddings) {
    const std::string out_name = output_tensor_name(c);
    if (const TensorEntry* e = st.find(out_name)) {
      std::string embed_name;
      for (const auto& p : list_params(c, m.weights)) {
        if (p.tensor == &m.weights.tok_embd) embed_name = p.name;
      }
      check_tied_output(path, *e, m.weights.tok_embd, out_name, embed_name, warn);
      used.insert(out_name);
    }
  }
  for (const auto& name : st.names()) {
    if (used.count(name) || is_ignorable_buffer(name)) continue;
    const bool kv = name.find(".key.") != std::string::npos || name.find(".value.") != std::string::npos ||
                    name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
    if (kv) {
      fail("'", path, "': tensor '", name,
           "' is a K/V projection of a layer that, by the config's kv_source, does not own K/V "
           "(config and weights disagree)");
    }
    fail("'", path, "': unexpected tensor '", name, "' that the config does not call for");
  }
  return m;
}

void save_model(const std::string& dir, const ModelConfig& cfg, const ModelWeights& w,
                const SaveOptions& opt) {
  fs::create_directories(dir);
  ModelConfig out_cfg = cfg;
  out_cfg.file_dtype = opt.dtype;
  std::vector<TensorToWrite> tensors;
  std::vector<Tensor> fused_store;  // keeps fused tensors alive until written
  const bool fuse = opt.fuse_qkv_when_possible && neox_can_fuse(cfg);
  if (fuse) fused_store.reserve(static_cast<size_t>(2 * cfg.n_layer));
  const int64_t E = cfg.n_embd, d = cfg.n_embd_head, H = cfg.n_head;
  for (const auto& [name, t] : list_params(cfg, w)) {
    if (fuse && name.rfind("gpt_neox.layers.", 0) == 0 &&
        (name.find(".attention.query.") != std::string::npos ||
         name.find(".attention.key.") != std::string::npos ||
         name.find(".attention.value.") != std::string::npos)) {
      if (name.find(".attention.query.weight") == std::string::npos) continue;
      const int il = std::stoi(name.substr(std::strlen("gpt_neox.layers.")));
      const LayerWeights& l = w.layers[static_cast<size_t>(il)];
      Tensor fw({3 * H * d, E});
      Tensor fb({3 * H * d});
      const Tensor* srcw[3] = {&l.wq, &l.wk, &l.wv};
      const Tensor* srcb[3] = {&l.bq, &l.bk, &l.bv};
      for (int64_t h = 0; h < H; ++h) {
        for (int part = 0; part < 3; ++part) {
          const int64_t row = (h * 3 + part) * d;
          std::memcpy(fw.data() + row * E, srcw[part]->data() + h * d * E,
                      static_cast<size_t>(d * E) * sizeof(float));
          std::memcpy(fb.data() + row, srcb[part]->data() + h * d, static_cast<size_t>(d) * sizeof(float));
        }
      }
      fused_store.push_back(std::move(fw));
      fused_store.push_back(std::move(fb));
      const std::string fp = fused_prefix(il);
      tensors.push_back({fp + "weight", fused_store[fused_store.size() - 2].shape(),
                         fused_store[fused_store.size() - 2].data(), opt.dtype});
      tensors.push_back({fp + "bias", fused_store.back().shape(), fused_store.back().data(), opt.dtype});
      continue;
    }
    tensors.push_back({name, t->shape(), t->data(), opt.dtype});
  }
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  write_text_file((fs::path(dir) / "config.json").string(), hf_config_to_json(out_cfg));
}

}  // namespace mlkv
