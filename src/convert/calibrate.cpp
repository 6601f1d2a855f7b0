// Calibrated conversion and the owner search on a model. See calibrate.h.
#include "convert/calibrate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/backend.h"
#include "model/transformer.h"

namespace mlkv {

namespace {

using calib::Mat;

// The calibration rows on the model: positions (row t at t % ctx), the rotary table and which
// sequences are fitted on and which held out.
struct Rows {
  int ctx = 0, n_seq = 0;
  int64_t T = 0;
  std::vector<int32_t> pos;
  ops::RopeTable<float> rt;
  std::vector<int> fit, held;

  Rows(const CalibrationSet& data, const ModelConfig& c)
      : ctx(data.ctx), n_seq(data.n_rows()), T(int64_t{data.n_rows()} * data.ctx) {
    MLKV_CHECK(n_seq >= kMinCalibrationRows);
    pos.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) pos[static_cast<size_t>(t)] = static_cast<int32_t>(t % ctx);
    rt.build(c.n_rot, ctx, c.rope_inv_freq());
    for (int s = 0; s < n_seq; ++s) (CalibrationSet::held_out(s) ? held : fit).push_back(s);
  }
};

// One layer's activations on the CPU backend, for T rows; x is the residual stream (updated in
// place, as in inference).
struct Acts {
  Tensor x, xn, q, o, lse, xn2, up, gate;
  LayerActs<float> a;

  Acts(Backend<float>& be, const ModelConfig& c, const Rows& r) {
    const int64_t T = r.T;
    x = be.buffer({T, c.n_embd});
    xn = be.buffer({T, c.n_embd});
    q = be.buffer({T, c.n_embd_q()});
    o = be.buffer({T, c.n_embd_q()});
    lse = be.buffer({T * c.n_head});
    xn2 = be.buffer({T, c.n_embd});
    up = be.buffer({T, c.n_ff});
    if (c.mlp == MlpType::kSwiGlu) gate = be.buffer({T, c.n_ff});
    a.x_in = a.x_out = a.x_mid = x.data();
    a.xn1 = xn.data();
    a.q = q.data();
    a.o = o.data();
    a.lse = lse.data();
    a.xn2 = xn2.data();
    a.u = a.act = up.data();
    a.gate = gate.empty() ? nullptr : gate.data();
  }
};

// K/V of one layer: keys rotated, raw (when kept) and values, [T, n_head_kv * d].
struct Kv {
  Tensor k, k_raw, v;
};

// q, k (rotated), k_raw (when not null) and v of weights w on normed rows xn, as an owner layer
// of config c computes them (model/blocks.h).
void project(Backend<float>& be, const ModelConfig& c, const LayerWeights& w, const float* xn,
             const Rows& r, float* q, Kv* kv) {
  LayerSpec spec;
  spec.owns_kv = true;
  spec.shares_raw_keys = !kv->k_raw.empty();
  LayerActs<float> a;
  a.xn1 = const_cast<float*>(xn);
  a.q = q;
  a.k = kv->k.data();
  a.k_raw = kv->k_raw.empty() ? nullptr : kv->k_raw.data();
  a.v = kv->v.data();
  attention_in_forward(be, c, spec, w, a, static_cast<int>(r.T), r.pos.data(), r.rt);
}

Kv new_kv(Backend<float>& be, const ModelConfig& c, const Rows& r, bool raw) {
  Kv kv;
  kv.k = be.buffer({r.T, c.n_embd_kv()});
  kv.v = be.buffer({r.T, c.n_embd_kv()});
  if (raw) kv.k_raw = be.buffer({r.T, c.n_embd_kv()});
  return kv;
}

// Attention over whole calibration rows with the K/V of kv_source (or the layer's own, for a
// model whose every layer owns K/V and writes them into acts' k, v).
class RowAttention final : public AttentionContext<float> {
 public:
  RowAttention(Backend<float>& be, const ModelConfig& c, const Rows& r,
               const std::vector<Kv>* store)
      : be_(be), store_(store), ws_(be.new_workspace()) {
    dims_.batch = r.n_seq;
    dims_.ctx = r.ctx;
    dims_.n_head = c.n_head;
    dims_.n_head_kv = c.n_head_kv;
    dims_.head_dim = c.n_embd_head;
  }
  void attend(const LayerSpec& s, const LayerActs<float>& a) override {
    if (store_ == nullptr) {
      be_.attention_forward(a.q, a.k, a.v, a.o, a.lse, dims_, *ws_);
      return;
    }
    const Kv& kv = (*store_)[static_cast<size_t>(s.kv_source)];
    const float* keys = s.reads_rotated_keys ? kv.k.data() : kv.k_raw.data();
    be_.attention_forward(a.q, keys, kv.v.data(), a.o, a.lse, dims_, *ws_);
  }

 private:
  Backend<float>& be_;
  const std::vector<Kv>* store_;
  ops::AttnDims dims_;
  std::unique_ptr<Workspace> ws_;
};

// G = Wo^T Wo [Q, Q] of an output projection wo [E, Q].
Mat out_gram(const Tensor& wo) {
  const int E = static_cast<int>(wo.dim(0)), Q = static_cast<int>(wo.dim(1));
  Mat G(Q, Q);
  for (int e = 0; e < E; ++e) {
    const float* row = wo.data() + int64_t{e} * Q;
    for (int i = 0; i < Q; ++i) {
      const double a = row[i];
      for (int j = 0; j < Q; ++j) G(i, j) += a * row[j];
    }
  }
  return G;
}

// Sum of ||x||^2 over the held-out rows.
double held_energy(const float* x, int E, const Rows& r) {
  double e = 0;
  for (int s : r.held) {
    for (int t = 0; t < r.ctx; ++t) {
      const float* row = x + (int64_t{s} * r.ctx + t) * E;
      for (int i = 0; i < E; ++i) e += double(row[i]) * row[i];
    }
  }
  return e;
}

// Writes a layer's fold into its weights: query rows of head h become P^T Wq_h (and its bias),
// the output projection Wo W, its bias bo + Wo c. Computed in double, rounded once.
void apply_fold(const calib::LayerFold& f, int H, int d, LayerWeights* w) {
  const int64_t E = w->wq.dim(1);
  std::vector<double> tmp;
  for (int h = 0; h < H; ++h) {
    const Mat& P = f.key_maps[static_cast<size_t>(h)];
    if (P.empty()) continue;
    auto fold_rows = [&](Tensor& t, int64_t cols) {
      float* base = t.data() + int64_t{h} * d * cols;
      tmp.assign(static_cast<size_t>(d * cols), 0.0);
      for (int j = 0; j < d; ++j) {
        for (int i = 0; i < d; ++i) {
          const double p = P(i, j);
          if (p == 0) continue;
          const float* src = base + int64_t{i} * cols;
          double* dst = tmp.data() + int64_t{j} * cols;
          for (int64_t e = 0; e < cols; ++e) dst[e] += p * src[e];
        }
      }
      for (int64_t i = 0; i < d * cols; ++i)
        base[i] = static_cast<float>(tmp[static_cast<size_t>(i)]);
    };
    fold_rows(w->wq, E);
    if (!w->bq.empty()) fold_rows(w->bq, 1);
  }
  if (f.out.W.empty()) return;
  const int Q = f.out.W.rows;
  const int64_t En = w->wo.dim(0);
  std::vector<double> row(static_cast<size_t>(Q));
  for (int64_t e = 0; e < En; ++e) {
    float* wr = w->wo.data() + e * Q;
    std::fill(row.begin(), row.end(), 0.0);
    double off = 0;
    for (int i = 0; i < Q; ++i) {
      const double a = wr[i];
      const double* Wi = &f.out.W.a[static_cast<size_t>(i) * Q];
      for (int j = 0; j < Q; ++j) row[static_cast<size_t>(j)] += a * Wi[j];
      if (!f.out.c.empty()) off += a * f.out.c[static_cast<size_t>(i)];
    }
    for (int j = 0; j < Q; ++j) wr[j] = static_cast<float>(row[static_cast<size_t>(j)]);
    if (!f.out.c.empty()) {
      MLKV_CHECK(!w->bo.empty());
      w->bo[e] = static_cast<float>(double(w->bo[e]) + off);
    }
  }
}

calib::LayerData layer_data(const ModelConfig& s, const ModelConfig& c, const Rows& r,
                            const float* q, const Kv& orig, const float* ks, const float* vs,
                            const Mat* G) {
  calib::LayerData L;
  L.n_head = s.n_head;
  L.n_head_kv_src = s.n_head_kv;
  L.n_head_kv = c.n_head_kv;
  L.ctx = r.ctx;
  L.n_seq = r.n_seq;
  L.rot = {s.n_embd_head, s.n_rot};
  L.q = q;
  L.ko = orig.k.data();
  L.vo = orig.v.data();
  L.ks = ks;
  L.vs = vs;
  L.G = G;
  L.bias = c.attn_bias;
  L.fit = r.fit;
  L.held = r.held;
  return L;
}

}  // namespace

void calibrate_folds(const LoadedModel& src, LoadedModel* dst, const CalibrationSet& data,
                     const CalibrateOptions& opt, CalibrationReport* report) {
  const double t0 = now_seconds();
  const ModelConfig& s = src.config;
  const ModelConfig& c = dst->config;
  MLKV_CHECK(s.n_layer == c.n_layer && s.n_head == c.n_head && s.n_embd_head == c.n_embd_head);
  Backend<float>& be = backend<float>(Device::kCpu);
  const Rows r(data, s);
  const std::vector<LayerSpec> specs = layer_specs(c);
  Transformer<float> net_dst(c, be), net_src(s, be);

  Acts acts(be, opt.sequential ? c : s, r);
  Kv orig = new_kv(be, s, r, false);
  Tensor q_tmp = be.buffer({r.T, c.n_embd_q()});
  std::vector<Kv> store(static_cast<size_t>(c.n_layer));
  be.embedding_forward(data.tokens.data(), src.weights.tok_embd, acts.x.data(),
                       static_cast<int>(r.T), s.n_embd);
  RowAttention attn_dst(be, c, r, &store), attn_src(be, s, r, nullptr);

  CalibrationReport scratch;
  CalibrationReport& rep = report != nullptr ? *report : scratch;
  rep.tokens = data.n_tokens();
  rep.rows = r.n_seq;
  rep.ctx = r.ctx;
  rep.held_rows = static_cast<int>(r.held.size());
  rep.sequential = opt.sequential;
  rep.layers.clear();
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerSpec& spec = specs[static_cast<size_t>(il)];
    const LayerWeights& ws = src.weights.layers[static_cast<size_t>(il)];
    LayerWeights& wd = dst->weights.layers[static_cast<size_t>(il)];
    const int T = static_cast<int>(r.T);
    norm_forward<float>(be, s, ws.attn_norm, ws.attn_norm_b, acts.x.data(), acts.xn.data(), nullptr,
                        nullptr, T);
    project(be, s, ws, acts.xn.data(), r, acts.q.data(), &orig);
    if (spec.owns_kv) {
      Kv& kv = store[static_cast<size_t>(il)];
      kv = new_kv(be, c, r, spec.shares_raw_keys);
      project(be, c, wd, acts.xn.data(), r, q_tmp.data(), &kv);
    }
    const Kv& shared = store[static_cast<size_t>(spec.kv_source)];
    const Mat G = out_gram(wd.wo);
    const calib::LayerData L = layer_data(
        s, c, r, acts.q.data(), orig,
        spec.reads_rotated_keys ? shared.k.data() : shared.k_raw.data(), shared.v.data(), &G);

    LayerCalibration lc;
    lc.layer = il;
    lc.kv_source = spec.kv_source;
    lc.stream_energy = held_energy(acts.x.data(), s.n_embd, r);
    const calib::LayerFold f = calib::fit_layer(L, opt.fit);
    apply_fold(f, c.n_head, c.n_embd_head, &wd);
    lc.err_owner = f.err_owner;
    lc.err = f.err;
    lc.attn_energy = f.energy;
    lc.kl_owner = f.kl_owner;
    lc.kl = f.kl;
    lc.heads_folded = f.heads_folded;
    lc.output_folded = !f.out.W.empty();
    rep.layers.push_back(lc);

    // The next layer's input: the converted layer (folds applied) on the converted stream, or
    // the source layer on the source stream.
    if (opt.sequential) {
      LayerActs<float> a = acts.a;
      if (spec.owns_kv) {
        Kv& kv = store[static_cast<size_t>(il)];
        a.k = kv.k.data();
        a.v = kv.v.data();
        a.k_raw = kv.k_raw.empty() ? nullptr : kv.k_raw.data();
      }
      net_dst.layer_forward(il, wd, a, T, r.pos.data(), r.rt, attn_dst);
    } else {
      LayerActs<float> a = acts.a;
      a.k = orig.k.data();
      a.v = orig.v.data();
      net_src.layer_forward(il, ws, a, T, r.pos.data(), r.rt, attn_src);
    }
    // Owners nobody reads any more can go.
    for (int o = 0; o <= il; ++o) {
      bool needed = false;
      for (int l = il + 1; l < c.n_layer; ++l) needed |= c.kv_source[static_cast<size_t>(l)] == o;
      if (!needed) store[static_cast<size_t>(o)] = Kv();
    }
  }
  rep.seconds += now_seconds() - t0;
}

double kv_source_cost(const std::vector<std::vector<double>>& cost, const std::vector<int>& kv) {
  double total = 0;
  for (size_t l = 0; l < kv.size(); ++l) total += cost[static_cast<size_t>(kv[l])][l];
  return total;
}

std::vector<int> best_kv_source(const std::vector<std::vector<double>>& cost, int M,
                                int64_t max_sets) {
  const int L = static_cast<int>(cost.size());
  MLKV_CHECK(M >= 1 && M <= L);
  // The kv_source of an owner set: each layer its cheapest owner at or below it.
  auto assign = [&](const std::vector<char>& own) {
    std::vector<int> kv(static_cast<size_t>(L));
    for (int l = 0; l < L; ++l) {
      if (own[static_cast<size_t>(l)]) {
        kv[static_cast<size_t>(l)] = l;
        continue;
      }
      int best = -1;
      for (int o = 0; o < l; ++o) {
        if (own[static_cast<size_t>(o)] &&
            (best < 0 || cost[static_cast<size_t>(o)][static_cast<size_t>(l)] <
                             cost[static_cast<size_t>(best)][static_cast<size_t>(l)]))
          best = o;
      }
      kv[static_cast<size_t>(l)] = best;
    }
    return kv;
  };
  std::vector<char> own(static_cast<size_t>(L), 0);
  for (int o : owners_by_authors_rule(L, M)) own[static_cast<size_t>(o)] = 1;
  std::vector<int> best_kv = assign(own);
  double best = kv_source_cost(cost, best_kv);

  // Exhaustive over the (L-1 choose M-1) sets when there are few enough.
  double n_sets = 1;
  for (int i = 0; i < M - 1; ++i) n_sets = n_sets * (L - 1 - i) / (i + 1);
  if (n_sets <= static_cast<double>(max_sets)) {
    std::vector<int> pick(static_cast<size_t>(M - 1));  // increasing layers in 1 .. L-1
    for (int i = 0; i < M - 1; ++i) pick[static_cast<size_t>(i)] = i + 1;
    for (;;) {
      std::fill(own.begin(), own.end(), 0);
      own[0] = 1;
      for (int p : pick) own[static_cast<size_t>(p)] = 1;
      std::vector<int> kv = assign(own);
      const double v = kv_source_cost(cost, kv);
      if (v < best) {
        best = v;
        best_kv = std::move(kv);
      }
      int i = M - 2;
      while (i >= 0 && pick[static_cast<size_t>(i)] == L - 1 - (M - 2 - i)) --i;
      if (i < 0) break;
      ++pick[static_cast<size_t>(i)];
      for (int j = i + 1; j < M - 1; ++j)
        pick[static_cast<size_t>(j)] = pick[static_cast<size_t>(j - 1)] + 1;
    }
    return best_kv;
  }
  // Otherwise: best single swaps (an owner for a non-owner) until none helps.
  for (;;) {
    double step_best = best;
    std::vector<char> step_own;
    for (int a = 1; a < L; ++a) {
      if (!own[static_cast<size_t>(a)]) continue;
      for (int b = 1; b < L; ++b) {
        if (own[static_cast<size_t>(b)]) continue;
        std::vector<char> o2 = own;
        o2[static_cast<size_t>(a)] = 0;
        o2[static_cast<size_t>(b)] = 1;
        const double v = kv_source_cost(cost, assign(o2));
        if (v < step_best) {
          step_best = v;
          step_own = o2;
        }
      }
    }
    if (step_own.empty()) break;
    own = step_own;
    best = step_best;
    best_kv = assign(own);
  }
  return best_kv;
}

std::vector<int> search_kv_source(const LoadedModel& src, const LoadedModel& pooled, int M,
                                  bool fold, const CalibrationSet& all, const CalibrateOptions& opt,
                                  CalibrationReport* report) {
  CalibrationSet data = all;
  if (data.n_rows() > std::max(opt.search_rows, kMinCalibrationRows)) {
    data.tokens.resize(static_cast<size_t>(std::max(opt.search_rows, kMinCalibrationRows)) *
                       data.ctx);
  }
  const double t0 = now_seconds();
  const ModelConfig& s = src.config;
  const ModelConfig& c = pooled.config;
  MLKV_CHECK(!c.shares_across_layers() && c.n_layer == s.n_layer);
  const int L = s.n_layer, T = static_cast<int>(int64_t{data.n_rows()} * data.ctx);
  Backend<float>& be = backend<float>(Device::kCpu);
  const Rows r(data, s);
  Transformer<float> net_src(s, be);
  Acts acts(be, s, r);
  Kv orig = new_kv(be, s, r, false);
  Kv shared = new_kv(be, c, r, true);
  Tensor q_tmp = be.buffer({r.T, c.n_embd_q()});
  std::vector<Tensor> xn(static_cast<size_t>(L));  // every layer's normed input: owner K/V later
  RowAttention attn_src(be, s, r, nullptr);
  be.embedding_forward(data.tokens.data(), src.weights.tok_embd, acts.x.data(), T, s.n_embd);
  calib::FitOptions fo = opt.search;
  fo.fold = fold;

  std::vector<std::vector<double>> cost(static_cast<size_t>(L),
                                        std::vector<double>(static_cast<size_t>(L), -1.0));
  for (int l = 0; l < L; ++l) {
    const LayerWeights& ws = src.weights.layers[static_cast<size_t>(l)];
    norm_forward<float>(be, s, ws.attn_norm, ws.attn_norm_b, acts.x.data(), acts.xn.data(), nullptr,
                        nullptr, T);
    xn[static_cast<size_t>(l)] = acts.xn;
    project(be, s, ws, acts.xn.data(), r, acts.q.data(), &orig);
    const double energy = held_energy(acts.x.data(), s.n_embd, r);
    const Mat G = out_gram(ws.wo);
    std::vector<double> target;  // layer l's original attention outputs, the same for every owner
    for (int o = 0; o <= l; ++o) {
      project(be, c, pooled.weights.layers[static_cast<size_t>(o)],
              xn[static_cast<size_t>(o)].data(), r, q_tmp.data(), &shared);
      // Layer l reads o's keys rotated unless it is a consumer under pre sharing.
      const bool rotated = o == l || c.share_rope == KvShareRope::kPost;
      calib::LayerData Ld =
          layer_data(s, c, r, acts.q.data(), orig, rotated ? shared.k.data() : shared.k_raw.data(),
                     shared.v.data(), &G);
      if (target.empty()) target = calib::original_outputs(Ld);
      Ld.o = target.data();
      const calib::LayerFold f = calib::fit_layer(Ld, fo);
      cost[static_cast<size_t>(o)][static_cast<size_t>(l)] = energy > 0 ? f.err / energy : f.err;
    }
    LayerActs<float> a = acts.a;
    a.k = orig.k.data();
    a.v = orig.v.data();
    net_src.layer_forward(l, ws, a, T, r.pos.data(), r.rt, attn_src);
  }
  std::vector<int> kv = best_kv_source(cost, M);
  if (report != nullptr) {
    // The text the search read (a calibrated merge after it reports its own, all of it).
    report->tokens = data.n_tokens();
    report->rows = r.n_seq;
    report->ctx = r.ctx;
    report->held_rows = static_cast<int>(r.held.size());
    report->sequential = false;  // the search runs the source model's stream
    report->owner_costs = cost;
    report->search_cost = kv_source_cost(cost, kv);
    report->rule_cost =
        kv_source_cost(cost, kv_source_from_owners(L, owners_by_authors_rule(L, M)));
    report->seconds += now_seconds() - t0;
  }
  return kv;
}

}  // namespace mlkv
