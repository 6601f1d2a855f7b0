// Causal grouped-query attention for training: forward and backward per (sequence, query head), in
// blocks of kRowBlock query rows that only look at the keys the block can see (the causal half is
// skipped up to block granularity). Scores live only in a per-thread block buffer; the backward
// pass recomputes them from the saved log-normaliser (the FlashAttention recipe, with BLAS GEMMs
// per block instead of a fused kernel).
//
// Backward of one block, with P = exp(scale Q K^T - lse) (masked entries 0) and D_i = dO_i . O_i:
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ = scale dS K,  dK += scale dS^T Q.
// Work items are (sequence, query head) pairs over OpenMP (BLAS runs single-threaded inside).
// Query heads that share a KV head (GQA/MQA) write private dK/dV blocks that are then summed in
// head order, so the result does not depend on the schedule.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/check.h"
#include "train/ops_backward.h"
#include "train/vec_math.h"

namespace mlkv::train {

namespace {

constexpr int kRowBlock = 64;
// Fewer multiply-adds than this (per call) run on one thread: a parallel region costs more.
constexpr int64_t kParallelWork = int64_t{1} << 18;

// Unnormalised softmax of row[0, vis) in place: row[j] = exp(row[j] - max), row[vis, len) = 0.
// Returns the sum; *mx receives the max. The caller scales the (d-wide) output rows by 1 / sum
// instead of the (len-wide) probability rows.
template <typename T>
T exp_row(T* row, int vis, int len, T* mx_out) {
  T mx, sum;
  if constexpr (std::is_same_v<T, float>) {
    mx = vec::max_n(row, vis);
    sum = vec::exp_affine_sum(row, vis, 1.0f, mx);
  } else {
    mx = row[0];
    for (int j = 1; j < vis; ++j) mx = std::max(mx, row[j]);
    sum = 0;
    for (int j = 0; j < vis; ++j) {
      row[j] = std::exp(row[j] - mx);
      sum += row[j];
    }
  }
  std::fill(row + vis, row + len, T(0));
  *mx_out = mx;
  return sum;
}

// row[j] = exp(row[j] - lse) for j < vis, 0 beyond.
template <typename T>
void probs_row(T* row, int vis, int len, T lse) {
  if constexpr (std::is_same_v<T, float>) {
    vec::exp_affine_sum(row, vis, 1.0f, lse);
  } else {
    for (int j = 0; j < vis; ++j) row[j] = std::exp(row[j] - lse);
  }
  std::fill(row + vis, row + len, T(0));
}

template <typename T>
T* thread_buf(AttnScratch<T>& s, size_t n) {
  const int tid = omp_get_thread_num();
  auto& b = s.thread_bufs[static_cast<size_t>(tid)];
  if (b.size() < n) b.resize(n);
  return b.data();
}

template <typename T>
void prepare_threads(AttnScratch<T>& s) {
  const size_t nt = static_cast<size_t>(omp_get_max_threads());
  if (s.thread_bufs.size() < nt) s.thread_bufs.resize(nt);
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttnDims& a,
                       AttnScratch<T>& s) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  MLKV_CHECK(H % G == 0);
  const int ldq = H * d, ldk = G * d;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const int n_items = a.batch * H;
  prepare_threads(s);
  const bool par = int64_t{n_items} * S * S * d > kParallelWork;
#pragma omp parallel for schedule(static) if (par)
  for (int item = 0; item < n_items; ++item) {
    const int b = item / H, h = item % H, g = h / rep;
    const T* Q = q + int64_t{b} * S * ldq + int64_t{h} * d;
    const T* K = k + int64_t{b} * S * ldk + int64_t{g} * d;
    const T* V = v + int64_t{b} * S * ldk + int64_t{g} * d;
    T* O = o + int64_t{b} * S * ldq + int64_t{h} * d;
    T* L = lse + (int64_t{b} * H + h) * S;
    T* P = thread_buf(s, size_t(kRowBlock) * S);
    for (int r0 = 0; r0 < S; r0 += kRowBlock) {
      const int rows = std::min(kRowBlock, S - r0), len = r0 + rows;
      gemm<T>(false, true, rows, len, d, scale, Q + int64_t{r0} * ldq, ldq, K, ldk, T(0), P, len);
      T inv_sum[kRowBlock];
      for (int i = 0; i < rows; ++i) {
        T mx;
        const T sum = exp_row(P + int64_t{i} * len, r0 + i + 1, len, &mx);
        L[r0 + i] = mx + std::log(sum);
        inv_sum[i] = T(1) / sum;
      }
      T* Ob = O + int64_t{r0} * ldq;
      gemm<T>(false, false, rows, d, len, T(1), P, len, V, ldk, T(0), Ob, ldq);
      for (int i = 0; i < rows; ++i) {
        T* orow = Ob + int64_t{i} * ldq;
#pragma omp simd
        for (int j = 0; j < d; ++j) orow[j] *= inv_sum[i];
      }
    }
  }
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout,
                        T* dq, T* dk, T* dv, const AttnDims& a, AttnScratch<T>& s) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  const int ldq = H * d, ldk = G * d;
  const T scale = T(1) / std::sqrt(static_cast<T>(d));
  const int n_items = a.batch * H;
  const bool private_kv = rep > 1;
  if (private_kv) {
    const size_t n = size_t(a.batch) * H * S * d;
    if (s.dk_heads.size() < n) s.dk_heads.resize(n);
    if (s.dv_heads.size() < n) s.dv_heads.resize(n);
  }
  prepare_threads(s);
  const bool par = int64_t{n_items} * S * S * d > kParallelWork;
#pragma omp parallel for schedule(static) if (par)
  for (int item = 0; item < n_items; ++item) {
    const int b = item / H, h = item % H, g = h / rep;
    const int64_t qoff = int64_t{b} * S * ldq + int64_t{h} * d;
    const int64_t koff = int64_t{b} * S * ldk + int64_t{g} * d;
    const T* Q = q + qoff;
    const T* O = o + qoff;
    const T* dO = dout + qoff;
    T* dQ = dq + qoff;
    const T* K = k + koff;
    const T* V = v + koff;
    const T* L = lse + (int64_t{b} * H + h) * S;
    T *dK, *dV;
    int lddk;
    if (private_kv) {
      dK = s.dk_heads.data() + int64_t{item} * S * d;
      dV = s.dv_heads.data() + int64_t{item} * S * d;
      lddk = d;
      std::fill(dK, dK + int64_t{S} * d, T(0));
      std::fill(dV, dV + int64_t{S} * d, T(0));
    } else {
      dK = dk + koff;  // one query head per KV head: accumulate in place
      dV = dv + koff;
      lddk = ldk;
    }
    T* buf = thread_buf(s, size_t(2) * kRowBlock * S + S);
    T* P = buf;
    T* dP = buf + size_t(kRowBlock) * S;
    T* D = dP + size_t(kRowBlock) * S;
    for (int i = 0; i < S; ++i) {
      const T* x = dO + int64_t{i} * ldq;
      const T* y = O + int64_t{i} * ldq;
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int j = 0; j < d; ++j) acc += x[j] * y[j];
      D[i] = acc;
    }
    for (int r0 = 0; r0 < S; r0 += kRowBlock) {
      const int rows = std::min(kRowBlock, S - r0), len = r0 + rows;
      const T* Qb = Q + int64_t{r0} * ldq;
      const T* dOb = dO + int64_t{r0} * ldq;
      gemm<T>(false, true, rows, len, d, scale, Qb, ldq, K, ldk, T(0), P, len);
      for (int i = 0; i < rows; ++i) probs_row(P + int64_t{i} * len, r0 + i + 1, len, L[r0 + i]);
      gemm<T>(false, true, rows, len, d, T(1), dOb, ldq, V, ldk, T(0), dP, len);
      for (int i = 0; i < rows; ++i) {
        T* dp = dP + int64_t{i} * len;
        const T* p = P + int64_t{i} * len;
        const T Di = D[r0 + i];
#pragma omp simd
        for (int j = 0; j < len; ++j) dp[j] = p[j] * (dp[j] - Di);
      }
      gemm<T>(true, false, len, d, rows, T(1), P, len, dOb, ldq, T(1), dV, lddk);
      gemm<T>(false, false, rows, d, len, scale, dP, len, K, ldk, T(0), dQ + int64_t{r0} * ldq,
              ldq);
      gemm<T>(true, false, len, d, rows, scale, dP, len, Qb, ldq, T(1), dK, lddk);
    }
  }
  if (!private_kv) return;
  // dk[b, s, g] += sum over the group's query heads, in head order.
  const int64_t n_rows = a.n_rows();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t b = r / S, si = r % S;
    for (int g = 0; g < G; ++g) {
      T* dkr = dk + r * ldk + int64_t{g} * d;
      T* dvr = dv + r * ldk + int64_t{g} * d;
      for (int j = 0; j < rep; ++j) {
        const int h = g * rep + j;
        const int64_t off = ((b * H + h) * S + si) * d;
        add_inplace(dkr, s.dk_heads.data() + off, d);
        add_inplace(dvr, s.dv_heads.data() + off, d);
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, float*, float*,
                                       const AttnDims&, AttnScratch<float>&);
template void attention_forward<double>(const double*, const double*, const double*, double*,
                                        double*, const AttnDims&, AttnScratch<double>&);
template void attention_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, const float*, float*, float*, float*,
                                        const AttnDims&, AttnScratch<float>&);
template void attention_backward<double>(const double*, const double*, const double*, const double*,
                                         const double*, const double*, double*, double*, double*,
                                         const AttnDims&, AttnScratch<double>&);

}  // namespace mlkv::train
