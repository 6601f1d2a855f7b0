// The conversion recipe: head pooling, cross-layer merging, MLP widening. See convert.h.
#include "convert/convert.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace mlkv {

const char* merge_name(MergeStrategy m) {
  switch (m) {
    case MergeStrategy::kPairwise:
      return "pairwise";
    case MergeStrategy::kMean:
      return "mean";
    case MergeStrategy::kOwner:
      return "owner";
    case MergeStrategy::kCalibrated:
      return "calibrated";
  }
  return "?";
}

const char* widen_name(WidenMode w) {
  switch (w) {
    case WidenMode::kNone:
      return "none";
    case WidenMode::kCopy:
      return "copy";
    case WidenMode::kZero:
      return "zero";
  }
  return "?";
}

MergeStrategy parse_merge(const std::string& s) {
  if (s == "pairwise") return MergeStrategy::kPairwise;
  if (s == "mean") return MergeStrategy::kMean;
  if (s == "owner") return MergeStrategy::kOwner;
  if (s == "calibrated") return MergeStrategy::kCalibrated;
  fail("--merge must be pairwise, mean, owner or calibrated (got '", s, "')");
}

WidenMode parse_widen(const std::string& s) {
  if (s == "none") return WidenMode::kNone;
  if (s == "copy") return WidenMode::kCopy;
  if (s == "zero") return WidenMode::kZero;
  fail("--widen-mlp must be none, copy or zero (got '", s, "')");
}

bool parse_calibration_stream(const std::string& s, const std::string& what) {
  if (s == "converted") return true;
  if (s == "source") return false;
  fail(what, " must be converted or source (got '", s, "')");
}

namespace {

// Mean-pools the heads of a K or V tensor over contiguous groups: [n_src*d, cols] ->
// [n_dst*d, cols] in double (cols = 1 for a bias).
std::vector<double> pool_heads(const Tensor& t, int n_src, int n_dst, int d) {
  const int64_t cols = t.ndim() == 2 ? t.dim(1) : 1;
  const int group = n_src / n_dst;
  const int64_t head_elems = int64_t{d} * cols;
  std::vector<double> out(static_cast<size_t>(int64_t{n_dst} * head_elems), 0.0);
  for (int g = 0; g < n_dst; ++g) {
    double* dst = out.data() + int64_t{g} * head_elems;
    for (int k = 0; k < group; ++k) {
      const float* src = t.data() + int64_t{g * group + k} * head_elems;
      for (int64_t i = 0; i < head_elems; ++i) dst[i] += static_cast<double>(src[i]);
    }
    for (int64_t i = 0; i < head_elems; ++i) dst[i] /= group;
  }
  return out;
}

// Merges one owner group's pooled tensors (layer order, owner first) into the owner's.
std::vector<double> merge_group(const std::vector<std::vector<double>>& ws, MergeStrategy how) {
  MLKV_CHECK(!ws.empty());
  std::vector<double> acc = ws[0];
  if (how == MergeStrategy::kOwner || how == MergeStrategy::kCalibrated) return acc;
  for (size_t k = 1; k < ws.size(); ++k) {
    for (size_t i = 0; i < acc.size(); ++i) {
      acc[i] = how == MergeStrategy::kPairwise ? (acc[i] + ws[k][i]) / 2 : acc[i] + ws[k][i];
    }
  }
  if (how == MergeStrategy::kMean) {
    for (double& x : acc) x /= static_cast<double>(ws.size());
  }
  return acc;
}

void store(const std::vector<double>& v, Tensor* t) {
  MLKV_CHECK(static_cast<int64_t>(v.size()) == t->numel());
  for (size_t i = 0; i < v.size(); ++i) (*t)[static_cast<int64_t>(i)] = static_cast<float>(v[i]);
}

// Rows [n_rows_old, n_rows_new) of a [rows, cols] matrix (or a vector) become copies of rows
// (r - n_rows_old) mod n_rows_old, or zeros.
Tensor widen_rows(const Tensor& t, int64_t n_new, bool zero_new) {
  const int64_t n_old = t.dim(0), cols = t.ndim() == 2 ? t.dim(1) : 1;
  Tensor out(t.ndim() == 2 ? std::vector<int64_t>{n_new, cols} : std::vector<int64_t>{n_new});
  std::memcpy(out.data(), t.data(), static_cast<size_t>(t.numel()) * sizeof(float));
  if (!zero_new) {
    for (int64_t r = n_old; r < n_new; ++r) {
      std::memcpy(out.data() + r * cols, t.data() + ((r - n_old) % n_old) * cols,
                  static_cast<size_t>(cols) * sizeof(float));
    }
  }
  return out;
}

// Columns likewise, for the down projection [n_embd, n_ff].
Tensor widen_cols(const Tensor& t, int64_t n_new, bool zero_new) {
  const int64_t rows = t.dim(0), n_old = t.dim(1);
  Tensor out({rows, n_new});
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = t.data() + r * n_old;
    float* dst = out.data() + r * n_new;
    std::memcpy(dst, src, static_cast<size_t>(n_old) * sizeof(float));
    if (zero_new) continue;
    for (int64_t c = n_old; c < n_new; ++c) dst[c] = src[(c - n_old) % n_old];
  }
  return out;
}

void widen_layer(const ModelConfig& c, int n_ff_new, WidenMode mode, LayerWeights* l) {
  // Input side: always copies (new neurons see inputs like existing ones, so they are alive).
  if (c.mlp == MlpType::kSwiGlu) l->w_gate = widen_rows(l->w_gate, n_ff_new, false);
  if (!l->b_gate.empty()) l->b_gate = widen_rows(l->b_gate, n_ff_new, false);
  l->w_up = widen_rows(l->w_up, n_ff_new, false);
  if (!l->b_up.empty()) l->b_up = widen_rows(l->b_up, n_ff_new, false);
  // Output side: copies (authors) or zeros (function preserved).
  l->w_down = widen_cols(l->w_down, n_ff_new, mode == WidenMode::kZero);
}

}  // namespace

int widen_neurons_per_layer(const ModelConfig& c, int64_t removed) {
  if (removed <= 0) return 0;
  const int64_t per_neuron = (c.mlp == MlpType::kSwiGlu ? 3 : 2) * int64_t{c.n_embd} +
                             (c.mlp_bias ? (c.mlp == MlpType::kSwiGlu ? 2 : 1) : 0);
  const int64_t per_layer = per_neuron * c.n_layer;
  return static_cast<int>((removed + per_layer / 2) / per_layer);
}

ModelConfig plan_conversion(const ModelConfig& src, const ConvertOptions& opt) {
  src.validate();
  MLKV_REQUIRE(!src.shares_across_layers(),
               "the source model already shares K/V across layers (kv_source ",
               layer_list(src.kv_source), "): convert a model whose every layer owns its K/V");
  ModelConfig c = src;

  const int G = opt.kv_heads > 0 ? opt.kv_heads : src.n_head_kv;
  MLKV_REQUIRE(opt.kv_heads >= 0, "--kv-heads must be positive (got ", opt.kv_heads, ")");
  MLKV_REQUIRE(src.n_head % G == 0, "--kv-heads ", G,
               " does not divide the number of attention heads (", src.n_head, ")");
  MLKV_REQUIRE(src.n_head_kv % G == 0, "--kv-heads ", G, " does not divide the source's ",
               src.n_head_kv, " KV heads per layer (heads can only be pooled, not split)");
  c.n_head_kv = G;

  if (opt.owners_auto) {
    MLKV_REQUIRE(opt.kv_layers > 0, "--owners auto needs --kv-layers M (how many layers own K/V)");
    MLKV_REQUIRE(opt.merge == MergeStrategy::kOwner || opt.merge == MergeStrategy::kCalibrated,
                 "--owners auto needs --merge owner or calibrated (got ", merge_name(opt.merge),
                 "): the search scores each layer reading one owner's K/V, which a merge of a "
                 "whole group does not keep");
    MLKV_REQUIRE(opt.kv_source.empty(), "give at most one of --kv-layers, --owners, --kv-source");
  }
  KvSharingSpec spec;
  spec.n_layer = src.n_layer;
  spec.kv_layers = opt.kv_layers;
  spec.owners = opt.owners;
  spec.kv_source = opt.kv_source;
  c.kv_source = build_kv_source(spec);
  c.share_rope = opt.share;
  try {
    c.validate();
  } catch (const Error& e) {
    fail("invalid target sharing: ", e.what());
  }

  if (opt.widen != WidenMode::kNone) {
    c.n_ff = src.n_ff + widen_neurons_per_layer(src, src.n_params() - c.n_params());
  }
  return c;
}

namespace {

// Steps 1-4 of the recipe (convert.h) for a plan without owners_auto.
LoadedModel convert_recipe(const LoadedModel& src, const ConvertOptions& opt,
                           ConvertReport* report) {
  const ModelConfig& s = src.config;
  LoadedModel out;
  out.config = plan_conversion(s, opt);
  const ModelConfig& c = out.config;
  const int d = s.n_embd_head;
  MLKV_CHECK(src.weights.layers.size() == static_cast<size_t>(s.n_layer));

  // Everything but K/V (and the MLP, when widened) is copied unchanged.
  out.weights = src.weights;
  auto& layers = out.weights.layers;

  // 1-2: pool each layer's K/V heads (the loader already split fused qkv).
  struct Pooled {
    std::vector<double> wk, bk, wv, bv;
  };
  std::vector<Pooled> pooled(static_cast<size_t>(s.n_layer));
  for (int il = 0; il < s.n_layer; ++il) {
    const LayerWeights& l = src.weights.layers[static_cast<size_t>(il)];
    Pooled& p = pooled[static_cast<size_t>(il)];
    p.wk = pool_heads(l.wk, s.n_head_kv, c.n_head_kv, d);
    p.wv = pool_heads(l.wv, s.n_head_kv, c.n_head_kv, d);
    if (s.attn_bias) {
      p.bk = pool_heads(l.bk, s.n_head_kv, c.n_head_kv, d);
      p.bv = pool_heads(l.bv, s.n_head_kv, c.n_head_kv, d);
    }
  }

  // 3: merge each owner's group in layer order from the owner; drop non-owner K/V.
  const int64_t E = c.n_embd, KV = c.n_embd_kv();
  for (int o : c.owner_layers()) {
    std::vector<int> group;
    for (int il = 0; il < c.n_layer; ++il) {
      if (c.kv_source[static_cast<size_t>(il)] == o) group.push_back(il);
    }
    auto collect = [&](std::vector<double> Pooled::*field) {
      std::vector<std::vector<double>> ws;
      for (int il : group) ws.push_back(pooled[static_cast<size_t>(il)].*field);
      return merge_group(ws, opt.merge);
    };
    LayerWeights& l = layers[static_cast<size_t>(o)];
    l.wk = Tensor({KV, E});
    l.wv = Tensor({KV, E});
    store(collect(&Pooled::wk), &l.wk);
    store(collect(&Pooled::wv), &l.wv);
    if (c.attn_bias) {
      l.bk = Tensor({KV});
      l.bv = Tensor({KV});
      store(collect(&Pooled::bk), &l.bk);
      store(collect(&Pooled::bv), &l.bv);
    }
  }
  for (int il = 0; il < c.n_layer; ++il) {
    if (c.owns_kv(il)) continue;
    LayerWeights& l = layers[static_cast<size_t>(il)];
    l.wk = Tensor();
    l.wv = Tensor();
    l.bk = Tensor();
    l.bv = Tensor();
  }

  // 4: widen the MLPs.
  if (c.n_ff != s.n_ff) {
    for (auto& l : layers) widen_layer(c, c.n_ff, opt.widen, &l);
  }

  // Every tensor the target config calls for exists with its shape.
  for (const ParamRef& p : list_params(c, out.weights)) {
    MLKV_CHECK(!p.tensor->empty());
  }
  if (report != nullptr) {
    ModelConfig dropped = c;
    dropped.n_ff = s.n_ff;
    report->params_before = s.n_params();
    report->params_dropped = dropped.n_params();
    report->params_after = c.n_params();
    report->n_ff_before = s.n_ff;
    report->n_ff_after = c.n_ff;
    report->kv_bytes_per_token_before = s.kv_bytes_per_token(sizeof(float));
    report->kv_bytes_per_token_after = c.kv_bytes_per_token(sizeof(float));
  }
  return out;
}

}  // namespace

LoadedModel convert_model(const LoadedModel& src, const ConvertOptions& opt, ConvertReport* report,
                          const CalibrationSet* calib) {
  plan_conversion(src.config, opt);
  if (!needs_calibration(opt)) return convert_recipe(src, opt, report);
  MLKV_REQUIRE(calib != nullptr, opt.owners_auto ? "--owners auto" : "--merge calibrated",
               " needs calibration text (--calibration FILE)");
  ConvertReport scratch;
  ConvertReport& rep = report != nullptr ? *report : scratch;
  rep.calibrated = true;
  rep.calibration = CalibrationReport{};
  ConvertOptions o = opt;
  if (opt.owners_auto) {
    // Every layer's pooled K/V, then the owner set with the lowest calibration error.
    ConvertOptions po;
    po.kv_heads = opt.kv_heads;
    po.merge = MergeStrategy::kOwner;
    po.share = opt.share;
    const LoadedModel pooled = convert_recipe(src, po, nullptr);
    o.kv_source =
        search_kv_source(src, pooled, opt.kv_layers, opt.merge == MergeStrategy::kCalibrated,
                         *calib, opt.calibrate, &rep.calibration);
    o.kv_layers = 0;
    o.owners_auto = false;
  }
  if (o.merge != MergeStrategy::kCalibrated) return convert_recipe(src, o, &rep);
  o.merge = MergeStrategy::kOwner;
  LoadedModel out = convert_recipe(src, o, &rep);
  calibrate_folds(src, &out, *calib, opt.calibrate, &rep.calibration);
  return out;
}

}  // namespace mlkv
