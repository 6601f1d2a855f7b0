// Attention on the CPU (kernels/ops.h).
//
// Training (attention_forward / attention_backward): causal grouped-query attention per
// (sequence, query head), in blocks of kRowBlock query rows that only look at the keys the block
// can see (the causal half is skipped up to block granularity). Scores live only in a per-thread
// block buffer; the backward pass recomputes them from the saved log-normaliser (the
// FlashAttention recipe, with BLAS GEMMs per block instead of a fused kernel). Backward of one
// block, with P = exp(scale Q K^T - lse) (masked entries 0) and D_i = dO_i . O_i:
//   dV += P^T dO,  dP = dO V^T,  dS = P * (dP - D),  dQ = scale dS K,  dK += scale dS^T Q.
// Work items are (sequence, query head) pairs over OpenMP (BLAS runs single-threaded inside).
// Query heads that share a KV head (GQA/MQA) write private dK/dV blocks that are then summed in
// head order, so the result does not depend on the schedule.
//
// Decode (attend_chunks): the active path's kernel, in groups of at most kMaxAttendGroup rows.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/check.h"
#include "kernels/blas/blas.h"
#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"
#include "kernels/ref/attention.h"

namespace mlkv::ops {

namespace {

static_assert(kMaxAttendGroup == cpu::kMaxGroup);
constexpr int kRowBlock = 64;
// Fewer multiply-adds than this (per call) run on one thread: a parallel region costs more.
constexpr int64_t kParallelWork = int64_t{1} << 18;

// Unnormalised softmax of row[0, vis) in place: row[j] = exp(row[j] - max), row[vis, len) = 0.
// Returns the sum; *mx receives the max.
float exp_row(const cpu::Kernels& k, float* row, int vis, int len, float* mx) {
  *mx = k.max_n(row, vis);
  const float sum = k.exp_sub_sum(row, vis, *mx);
  std::fill(row + vis, row + len, 0.0f);
  return sum;
}

// row[j] = exp(row[j] - lse) for j < vis, 0 beyond.
void probs_row(const cpu::Kernels& k, float* row, int vis, int len, float lse) {
  k.exp_sub_sum(row, vis, lse);
  std::fill(row + vis, row + len, 0.0f);
}

float* thread_buf(AttnScratch<float>& s, size_t n) {
  auto& b = s.thread_bufs[static_cast<size_t>(omp_get_thread_num())];
  if (b.size() < n) b.resize(n);
  return b.data();
}

void prepare_threads(AttnScratch<float>& s) {
  const size_t nt = static_cast<size_t>(omp_get_max_threads());
  if (s.thread_bufs.size() < nt) s.thread_bufs.resize(nt);
}

void forward_f32(const float* q, const float* k, const float* v, float* o, float* lse,
                 const AttnDims& a, AttnScratch<float>& s) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  MLKV_CHECK(H % G == 0);
  const int ldq = H * d, ldk = G * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int n_items = a.batch * H;
  const cpu::Kernels& kn = cpu::kernels();
  prepare_threads(s);
  const bool par = int64_t{n_items} * S * S * d > kParallelWork;
#pragma omp parallel for schedule(static) if (par)
  for (int item = 0; item < n_items; ++item) {
    const int b = item / H, h = item % H, g = h / rep;
    const float* Q = q + int64_t{b} * S * ldq + int64_t{h} * d;
    const float* K = k + int64_t{b} * S * ldk + int64_t{g} * d;
    const float* V = v + int64_t{b} * S * ldk + int64_t{g} * d;
    float* O = o + int64_t{b} * S * ldq + int64_t{h} * d;
    float* L = lse + (int64_t{b} * H + h) * S;
    float* P = thread_buf(s, size_t(kRowBlock) * S);
    for (int r0 = 0; r0 < S; r0 += kRowBlock) {
      const int rows = std::min(kRowBlock, S - r0), len = r0 + rows;
      blas::gemm(false, true, rows, len, d, scale, Q + int64_t{r0} * ldq, ldq, K, ldk, 0.0f, P, len);
      float inv_sum[kRowBlock];
      for (int i = 0; i < rows; ++i) {
        float mx;
        const float sum = exp_row(kn, P + int64_t{i} * len, r0 + i + 1, len, &mx);
        L[r0 + i] = mx + std::log(sum);
        inv_sum[i] = 1.0f / sum;
      }
      float* Ob = O + int64_t{r0} * ldq;
      blas::gemm(false, false, rows, d, len, 1.0f, P, len, V, ldk, 0.0f, Ob, ldq);
      for (int i = 0; i < rows; ++i) kn.scale_n(Ob + int64_t{i} * ldq, d, inv_sum[i]);
    }
  }
}

void backward_f32(const float* q, const float* k, const float* v, const float* o, const float* lse,
                  const float* dout, float* dq, float* dk, float* dv, const AttnDims& a,
                  AttnScratch<float>& s) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  const int ldq = H * d, ldk = G * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const int n_items = a.batch * H;
  const bool private_kv = rep > 1;
  const cpu::Kernels& kn = cpu::kernels();
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
    const float* Q = q + qoff;
    const float* O = o + qoff;
    const float* dO = dout + qoff;
    float* dQ = dq + qoff;
    const float* K = k + koff;
    const float* V = v + koff;
    const float* L = lse + (int64_t{b} * H + h) * S;
    float *dK, *dV;
    int lddk;
    if (private_kv) {
      dK = s.dk_heads.data() + int64_t{item} * S * d;
      dV = s.dv_heads.data() + int64_t{item} * S * d;
      lddk = d;
      std::fill(dK, dK + int64_t{S} * d, 0.0f);
      std::fill(dV, dV + int64_t{S} * d, 0.0f);
    } else {
      dK = dk + koff;  // one query head per KV head: accumulate in place
      dV = dv + koff;
      lddk = ldk;
    }
    float* buf = thread_buf(s, size_t(2) * kRowBlock * S + S);
    float* P = buf;
    float* dP = buf + size_t(kRowBlock) * S;
    float* D = dP + size_t(kRowBlock) * S;
    for (int i = 0; i < S; ++i) D[i] = kn.dot_n(dO + int64_t{i} * ldq, O + int64_t{i} * ldq, d);
    for (int r0 = 0; r0 < S; r0 += kRowBlock) {
      const int rows = std::min(kRowBlock, S - r0), len = r0 + rows;
      const float* Qb = Q + int64_t{r0} * ldq;
      const float* dOb = dO + int64_t{r0} * ldq;
      blas::gemm(false, true, rows, len, d, scale, Qb, ldq, K, ldk, 0.0f, P, len);
      for (int i = 0; i < rows; ++i) probs_row(kn, P + int64_t{i} * len, r0 + i + 1, len, L[r0 + i]);
      blas::gemm(false, true, rows, len, d, 1.0f, dOb, ldq, V, ldk, 0.0f, dP, len);
      for (int i = 0; i < rows; ++i) {
        float* dp = dP + int64_t{i} * len;
        const float* p = P + int64_t{i} * len;
        const float Di = D[r0 + i];
        for (int j = 0; j < len; ++j) dp[j] = p[j] * (dp[j] - Di);
      }
      blas::gemm(true, false, len, d, rows, 1.0f, P, len, dOb, ldq, 1.0f, dV, lddk);
      blas::gemm(false, false, rows, d, len, scale, dP, len, K, ldk, 0.0f, dQ + int64_t{r0} * ldq, ldq);
      blas::gemm(true, false, len, d, rows, scale, dP, len, Qb, ldq, 1.0f, dK, lddk);
    }
  }
  if (!private_kv) return;
  // dk[b, s, g] += sum over the group's query heads, in head order.
  const int64_t n_rows = a.n_rows();
#pragma omp parallel for schedule(static) if (par)
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t b = r / S, si = r % S;
    for (int g = 0; g < G; ++g) {
      float* dkr = dk + r * ldk + int64_t{g} * d;
      float* dvr = dv + r * ldk + int64_t{g} * d;
      for (int j = 0; j < rep; ++j) {
        const int64_t off = ((b * H + g * rep + j) * S + si) * d;
        kn.add_n(dkr, s.dk_heads.data() + off, d);
        kn.add_n(dvr, s.dv_heads.data() + off, d);
      }
    }
  }
}

}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const AttnDims& a,
                       AttnScratch<T>& s) {
  if constexpr (std::is_same_v<T, double>) {
    ref::attention_forward(q, k, v, o, lse, a);
  } else {
    forward_f32(q, k, v, o, lse, a, s);
  }
}

template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse,
                        const T* dout, T* dq, T* dk, T* dv, const AttnDims& a, AttnScratch<T>& s) {
  if constexpr (std::is_same_v<T, double>) {
    ref::attention_backward(q, k, v, dout, dq, dk, dv, a);
  } else {
    backward_f32(q, k, v, o, lse, dout, dq, dk, dv, a, s);
  }
}

template void attention_forward<float>(const float*, const float*, const float*, float*, float*,
                                       const AttnDims&, AttnScratch<float>&);
template void attention_forward<double>(const double*, const double*, const double*, double*,
                                        double*, const AttnDims&, AttnScratch<double>&);
template void attention_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, const float*, float*, float*, float*,
                                        const AttnDims&, AttnScratch<float>&);
template void attention_backward<double>(const double*, const double*, const double*,
                                         const double*, const double*, const double*, double*,
                                         double*, double*, const AttnDims&, AttnScratch<double>&);

void attend_chunks(const float* q, int n_q, int ldq, const KvChunk* chunks, int n_chunks,
                   DType k_dtype, DType v_dtype, int d, float scale, float* out, int ldo,
                   float* scores) {
  const cpu::Kernels& k = cpu::kernels();
  const int kf = cpu::kv_format_index(k_dtype), vf = cpu::kv_format_index(v_dtype);
  const size_t krb = dtype_row_bytes(k_dtype, d), vrb = dtype_row_bytes(v_dtype, d);
  int len = 0;
  for (int c = 0; c < n_chunks; ++c) len += chunks[c].n;
  for (int r0 = 0; r0 < n_q; r0 += kMaxAttendGroup) {
    const int nq = std::min(kMaxAttendGroup, n_q - r0);
    k.attn_scores[kf](q + int64_t{r0} * ldq, nq, ldq, chunks, n_chunks, d, krb, scale, scores, len);
    float inv[kMaxAttendGroup];
    for (int r = 0; r < nq; ++r) {
      float* s = scores + int64_t{r} * len;
      inv[r] = 1.0f / k.exp_sub_sum(s, len, k.max_n(s, len));
    }
    float* o = out + int64_t{r0} * ldo;
    k.attn_values[vf](scores, nq, len, chunks, n_chunks, d, vrb, o, ldo);
    for (int r = 0; r < nq; ++r) k.scale_n(o + int64_t{r} * ldo, d, inv[r]);
  }
}

}  // namespace mlkv::ops
