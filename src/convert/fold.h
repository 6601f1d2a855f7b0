// The linear algebra of calibrated conversion (`--merge calibrated`), on one layer's activations:
// which maps are folded into the query and output projections so that the layer's attention keeps
// doing what it did although it now reads another (pooled, shared) K/V. docs/CONVERT.md has the
// derivation; in short, for query head h of a layer that read its own K/V head (keys ko, values vo)
// and now reads the shared head (ks, vs):
//
//   keys:    logits q . ko  ~  q . P ks, i.e. the query projection becomes P^T Wq (q' = P^T q).
//            P must commute with rotary (RotaryLayout) so that it can act before the rotation.
//            P is fitted to the attention distributions: it minimises the mean KL(p || p') of the
//            original attention p and the new one p' over calibration queries (convex in P),
//            started from the better of identity and a least-squares fit of ko on ks.
//   values:  the attention outputs o (all heads, [Q]) ~ W o_hat + c, o_hat the outputs the layer
//            gets with the shared K/V and the chosen P: the output projection becomes Wo W and
//            its bias bo + Wo c (c = 0 without an output bias). Ridge towards W = I, its strength
//            chosen on held-out calibration rows.
//
// Every choice (per head: identity, least squares or KL; per layer: the ridge strength, and whether
// to fold at all) is judged on held-out calibration rows by the error the layer adds to the
// residual stream, || Wo o - (Wo W o_hat + Wo c) ||^2; the owner's plain K/V (no fold) is always a
// candidate, so the result is never worse than `owner` on those rows.
// Everything here is in double, from float activations. What this is not: running the model
// (calibrate.h) or touching weights.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mlkv::calib {

// Dense row-major matrix of doubles.
struct Mat {
  int rows = 0, cols = 0;
  std::vector<double> a;

  Mat() = default;
  Mat(int r, int c) : rows(r), cols(c), a(static_cast<size_t>(r) * static_cast<size_t>(c), 0.0) {}
  static Mat identity(int n);
  double& operator()(int r, int c) { return a[static_cast<size_t>(r) * cols + c]; }
  double operator()(int r, int c) const { return a[static_cast<size_t>(r) * cols + c]; }
  bool empty() const { return a.empty(); }
};

// The key maps that can be folded into a query projection: those that commute with the rotary
// rotation of every position. Rotate-half layout: dims i and i + n_rot / 2 (i < n_rot / 2) turn
// together at frequency i, dims n_rot .. d - 1 never turn. With distinct frequencies a map commutes
// with all of these rotations iff it is block diagonal: a scaled rotation [[a, -b], [b, a]] on each
// pair and any matrix on the dims that never turn. Parameters theta: (a_i, b_i) per pair, then the
// free block row by row.
struct RotaryLayout {
  int d = 0, n_rot = 0;
  int half() const { return n_rot / 2; }
  int n_free() const { return d - n_rot; }
  int n_params() const { return n_rot + n_free() * n_free(); }
};
Mat key_map(const RotaryLayout& r, const std::vector<double>& theta);
// The parameters of the structured map nearest to P (pair entries averaged, the rest dropped).
std::vector<double> key_params(const RotaryLayout& r, const Mat& P);
// dF/dtheta from dF/dP.
std::vector<double> key_grad(const RotaryLayout& r, const Mat& dP);
// Largest |P R - R P| over the rotations of positions 0 .. n_pos - 1 (tests, checks).
double rotary_commutator(const RotaryLayout& r, const Mat& P, const std::vector<double>& inv_freq,
                         int n_pos);

// One head's vectors in a [rows, heads, d] float array: row t at p + t * stride.
struct HeadView {
  const float* p = nullptr;
  int64_t stride = 0;
  const float* row(int64_t t) const { return p + t * stride; }
};

// Least-squares key map: P minimising sum ||ko - P ks - c||^2 over the rows of `seqs` within the
// structure (an intercept on the dims that never turn, where it shifts every logit of a query
// alike and so is left out of the fold).
Mat fit_key_map_ls(const RotaryLayout& r, HeadView ko, HeadView ks, const std::vector<int>& seqs,
                   int ctx);

// One head's original attention on some sequences, kept for the KL fit: queries, the original
// probabilities and the shared keys, in double. Sequences are taken in order until `max_pairs`
// (query, key) pairs.
struct KlData {
  int d = 0, ctx = 0;
  double scale = 0;
  int64_t n_queries = 0;
  double neg_entropy = 0;  // sum of p log p over queries and keys
  // per sequence: queries [ctx][d], shared keys [ctx][d] and transposed [d][ctx], the original
  // probabilities (lower triangle, row t at t (t + 1) / 2)
  std::vector<std::vector<double>> q, ks, ks_t, p;
};
KlData kl_data(HeadView q, HeadView ko, HeadView ks, int d, int ctx, const std::vector<int>& seqs,
               int64_t max_pairs);
// Mean over queries of KL(p || p'(P)); dP (when not null) gets its gradient w.r.t. P.
double kl_objective(const KlData& k, const Mat& P, Mat* dP);
// P minimising kl_objective within the structure, from init (L-BFGS, at most max_iter steps).
Mat fit_key_map_kl(const KlData& k, const RotaryLayout& r, const Mat& init, int max_iter);

// Causal attention of one head over every row of the sequences 0 .. n_seq - 1: out row t (d
// values at out + t * out_stride) = sum_u softmax(scale (P^T q_t) . k_u) v_u; P empty: identity.
void attend_head(HeadView q, HeadView k, HeadView v, const Mat& P, int d, int ctx, int n_seq,
                 double* out, int64_t out_stride);

// Second moments sum z z^T of z = [o, o_hat, 1] over a set of rows ([2Q+1]^2).
struct Moments {
  int Q = 0;
  int64_t n = 0;
  std::vector<double> s;
  int dim() const { return 2 * Q + 1; }
  double at(int i, int j) const { return s[static_cast<size_t>(i) * dim() + j]; }
};
Moments output_moments(const double* o, const double* o_hat, int Q, const std::vector<int>& seqs,
                       int ctx);

// o ~ W o_hat + c; W empty: identity, c empty: 0.
struct OutputMap {
  Mat W;
  std::vector<double> c;
};
// Ridge towards W = I: W = (C_oh + l I)(C_hh + l I)^-1 with l = kappa tr(C_hh) / Q; with bias,
// centred moments and c = mean(o) - W mean(o_hat), else uncentred and c = 0. Empty W when the
// system cannot be solved.
OutputMap fit_output_map(const Moments& m, double kappa, bool bias);
// sum over the rows of ||Wo (o - W o_hat - c)||^2, G = Wo^T Wo [Q, Q].
double output_error(const Moments& m, const OutputMap& f, const Mat& G);

// One layer's calibration activations (CPU arrays, rows = n_seq * ctx, row t at position t % ctx)
// and what is fitted.
struct LayerData {
  int n_head = 0, n_head_kv_src = 0, n_head_kv = 0, ctx = 0, n_seq = 0;
  RotaryLayout rot;
  const float* q = nullptr;   // [rows, n_head, d] queries of the layer (rotated)
  const float* ko = nullptr;  // [rows, n_head_kv_src, d] its original keys (rotated)
  const float* vo = nullptr;  // [rows, n_head_kv_src, d] its original values
  const float* ks = nullptr;  // [rows, n_head_kv, d] the shared keys as the layer reads them
  const float* vs = nullptr;  // [rows, n_head_kv, d] the shared values
  const Mat* G = nullptr;     // [Q, Q] Wo^T Wo of the layer
  // [rows, Q] the original attention outputs (q, ko, vo), when already computed (else computed)
  const double* o = nullptr;
  bool bias = false;           // an output bias takes the value offsets c
  std::vector<int> fit, held;  // sequences fitted on / held out
};

struct FitOptions {
  bool fold = true;  // false: only measure the owner's error (no fit)
  bool kl = true;    // refine key maps by the KL fit (else least squares / identity)
  int kl_iters = 25;
  int64_t kl_pairs = int64_t{1} << 17;  // (query, key) pairs per head for the KL fit (and held KL)
  // Ridge strengths tried for the output map (fit_output_map's kappa): kFineRidge, or kCoarseRidge.
  bool coarse_ridge = false;
  // A fold is kept only when it lowers the held-out error by more than this fraction.
  double min_gain = 0.002;

  // Fewer KL steps and a coarser ridge grid (the owner search fits every (owner, layer) pair).
  static FitOptions coarse() {
    FitOptions f;
    f.kl_iters = 10;
    f.coarse_ridge = true;
    return f;
  }
};
inline constexpr double kFineRidge[] = {1e-7, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0};
inline constexpr double kCoarseRidge[] = {1e-4, 1e-3, 1e-2, 0.1, 1.0};

struct LayerFold {
  std::vector<Mat> key_maps;    // per query head; empty: identity
  OutputMap out;                // empty W: identity (no fold)
  double err_owner = 0;         // held-out squared error added to the residual stream: owner's K/V
  double err = 0;               // the same with the chosen folds (= err_owner when none)
  double kl_owner = 0, kl = 0;  // held-out KL of the attention, mean over heads
  double energy = 0;            // held-out sum ||Wo o||^2 (the layer's attention output)
  int64_t held_rows = 0;
  int heads_folded = 0;  // query heads whose key map is not the identity
  bool folded() const { return !out.W.empty() || heads_folded > 0; }
};
LayerFold fit_layer(const LayerData& L, const FitOptions& opt);
// The original attention outputs of L (q, ko, vo): [rows, Q] (LayerData::o).
std::vector<double> original_outputs(const LayerData& L);

}  // namespace mlkv::calib
