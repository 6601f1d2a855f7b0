// Reference causal attention over whole sequences, forward and backward, and the decode attention
// of query rows against one KV head (kernels/ops.h).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/types.h"

namespace mlkv::ref {

// o and lse (log-normaliser [batch, n_head, ctx]) of causal attention; see ops::AttnDims.
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const ops::AttnDims& a) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  const int64_t ldq = int64_t{H} * d, ldk = int64_t{G} * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> p(static_cast<size_t>(S));
  for (int b = 0; b < a.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      const int g = h / rep;
      for (int s = 0; s < S; ++s) {
        const T* qr = q + (int64_t{b} * S + s) * ldq + int64_t{h} * d;
        double mx = -INFINITY;
        for (int j = 0; j <= s; ++j) {
          const T* kr = k + (int64_t{b} * S + j) * ldk + int64_t{g} * d;
          double acc = 0;
          for (int i = 0; i < d; ++i) acc += static_cast<double>(qr[i]) * kr[i];
          p[static_cast<size_t>(j)] = acc * scale;
          mx = p[static_cast<size_t>(j)] > mx ? p[static_cast<size_t>(j)] : mx;
        }
        double sum = 0;
        for (int j = 0; j <= s; ++j) sum += std::exp(p[static_cast<size_t>(j)] - mx);
        T* orow = o + (int64_t{b} * S + s) * ldq + int64_t{h} * d;
        for (int i = 0; i < d; ++i) {
          double acc = 0;
          for (int j = 0; j <= s; ++j) {
            acc += std::exp(p[static_cast<size_t>(j)] - mx) / sum *
                   static_cast<double>(v[(int64_t{b} * S + j) * ldk + int64_t{g} * d + i]);
          }
          orow[i] = static_cast<T>(acc);
        }
        if (lse) lse[(int64_t{b} * H + h) * S + s] = static_cast<T>(mx + std::log(sum));
      }
    }
  }
}

// Writes dq; accumulates dk, dv. P = softmax(scale q k^T) recomputed from q and k;
// dV += P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K, dK += scale dS^T Q.
template <typename T>
void attention_backward(const T* q, const T* k, const T* v, const T* dout, T* dq, T* dk, T* dv,
                        const ops::AttnDims& a) {
  const int S = a.ctx, H = a.n_head, G = a.n_head_kv, d = a.head_dim, rep = H / G;
  const int64_t ldq = int64_t{H} * d, ldk = int64_t{G} * d;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> p(static_cast<size_t>(S)), dp(static_cast<size_t>(S));
  for (int64_t i = 0; i < a.n_rows() * ldq; ++i) dq[i] = T(0);
  for (int b = 0; b < a.batch; ++b) {
    for (int h = 0; h < H; ++h) {
      const int g = h / rep;
      for (int s = 0; s < S; ++s) {
        const int64_t qi = (int64_t{b} * S + s) * ldq + int64_t{h} * d;
        double mx = -INFINITY;
        for (int j = 0; j <= s; ++j) {
          const T* kr = k + (int64_t{b} * S + j) * ldk + int64_t{g} * d;
          double acc = 0;
          for (int i = 0; i < d; ++i) acc += static_cast<double>(q[qi + i]) * kr[i];
          p[static_cast<size_t>(j)] = acc * scale;
          mx = p[static_cast<size_t>(j)] > mx ? p[static_cast<size_t>(j)] : mx;
        }
        double sum = 0;
        for (int j = 0; j <= s; ++j) sum += std::exp(p[static_cast<size_t>(j)] - mx);
        double rowdot = 0;
        for (int j = 0; j <= s; ++j) {
          const size_t jj = static_cast<size_t>(j);
          p[jj] = std::exp(p[jj] - mx) / sum;
          const T* vr = v + (int64_t{b} * S + j) * ldk + int64_t{g} * d;
          double acc = 0;
          for (int i = 0; i < d; ++i) acc += static_cast<double>(dout[qi + i]) * vr[i];
          dp[jj] = acc;
          rowdot += p[jj] * dp[jj];
        }
        for (int j = 0; j <= s; ++j) {
          const size_t jj = static_cast<size_t>(j);
          const double ds = p[jj] * (dp[jj] - rowdot);
          const int64_t ki = (int64_t{b} * S + j) * ldk + int64_t{g} * d;
          for (int i = 0; i < d; ++i) {
            dv[ki + i] = static_cast<T>(dv[ki + i] + p[jj] * static_cast<double>(dout[qi + i]));
            dq[qi + i] = static_cast<T>(dq[qi + i] + scale * ds * static_cast<double>(k[ki + i]));
            dk[ki + i] = static_cast<T>(dk[ki + i] + scale * ds * static_cast<double>(q[qi + i]));
          }
        }
      }
    }
  }
}

// Decode attention: out[r * ldo + i] = sum_j softmax_j(scale q_r . K_j) V[j, i] for r < n_q,
// keys and values [len, d] given as float.
template <typename T>
void attend(const T* q, int n_q, int ldq, const T* K, const T* V, int len, int d, double scale,
            T* out, int ldo) {
  std::vector<double> p(static_cast<size_t>(len));
  for (int r = 0; r < n_q; ++r) {
    double mx = -INFINITY;
    for (int j = 0; j < len; ++j) {
      double acc = 0;
      for (int i = 0; i < d; ++i) acc += static_cast<double>(q[int64_t{r} * ldq + i]) * K[int64_t{j} * d + i];
      p[static_cast<size_t>(j)] = acc * scale;
      mx = p[static_cast<size_t>(j)] > mx ? p[static_cast<size_t>(j)] : mx;
    }
    double sum = 0;
    for (int j = 0; j < len; ++j) sum += std::exp(p[static_cast<size_t>(j)] - mx);
    for (int i = 0; i < d; ++i) {
      double acc = 0;
      for (int j = 0; j < len; ++j) acc += std::exp(p[static_cast<size_t>(j)] - mx) / sum * V[int64_t{j} * d + i];
      out[int64_t{r} * ldo + i] = static_cast<T>(acc);
    }
  }
}

}  // namespace mlkv::ref
