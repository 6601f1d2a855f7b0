// Streaming matrix-vector products for decode (kernels.h: gemv4_*, gemv_tail_*), written once over
// the vector type V of the build that includes this file (vec_{scalar,avx2,avx512}.h).
//
// Decode is memory-bound: every weight byte is read once per step. Four weight rows are multiplied
// against NX token rows at a time (4 * NX accumulators, 4 + NX loads per 4 * NX FMAs; one row
// against T tokens needs T + 1 loads per T FMAs, and the loads are the limit for batched decode).
// The first tile of a block streams the rows from memory and prefetches the same columns of the
// next block (the hardware prefetchers alone stall at each jump); later tiles find the rows in
// L1/L2. With one token row the two halves of each step get their own accumulators (more
// independent FMA chains).

// Token rows per tile: 4 needs 16 accumulators + 5 operands, which fits 32 vector registers
// (AVX-512); AVX2's 16 registers take 2.
inline constexpr int kGemvTile = kLanes == 16 ? 4 : 2;

template <int NX, int S, typename W>
inline void gemv_step(const float* x, const W* const* wr, int64_t K, int64_t k,
                      V (&acc)[S][NX][4], int s) {
  V xv[NX];
  for (int t = 0; t < NX; ++t) xv[t] = vload(x + t * K + k);
  for (int j = 0; j < 4; ++j) {
    const V wv = vload(wr[j] + k);
    for (int t = 0; t < NX; ++t) acc[s][t][j] = vfma(wv, xv[t], acc[s][t][j]);
  }
}

// out[t * 4 + j] = x_t . w_j for t < NX, j < 4.
template <int NX, typename W>
inline void gemv_rows4_xn(const float* x, const W* w, int64_t K, float* out, bool prefetch) {
  constexpr int S = NX == 1 ? 2 : 1;  // accumulator sets
  const W* wr[4] = {w, w + K, w + 2 * K, w + 3 * K};
  V acc[S][NX][4];
  for (int s = 0; s < S; ++s) {
    for (int t = 0; t < NX; ++t) {
      for (int j = 0; j < 4; ++j) acc[s][t][j] = vzero();
    }
  }
  int64_t k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
    if (prefetch) {
      for (int j = 0; j < 4; ++j) vprefetch(wr[j] + 4 * K + k);
    }
    gemv_step<NX, S>(x, wr, K, k, acc, 0);
    gemv_step<NX, S>(x, wr, K, k + kLanes, acc, S - 1);
  }
  for (; k + kLanes <= K; k += kLanes) gemv_step<NX, S>(x, wr, K, k, acc, 0);
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) {
      float v = vsum(S == 2 ? vadd(acc[0][t][j], acc[S - 1][t][j]) : acc[0][t][j]);
      for (int64_t kk = k; kk < K; ++kk) v += load1(wr[j] + kk) * x[t * K + kk];
      out[t * 4 + j] = v;
    }
  }
}

template <typename W>
void gemv4(const float* x, const W* w, int T, int64_t K, float* out) {
  int t = 0;
  for (; t + kGemvTile <= T; t += kGemvTile) {
    gemv_rows4_xn<kGemvTile>(x + int64_t{t} * K, w, K, out + t * 4, t == 0);
  }
  if (kGemvTile == 4 && t + 2 <= T) {
    gemv_rows4_xn<2>(x + int64_t{t} * K, w, K, out + t * 4, t == 0);
    t += 2;
  }
  if (t < T) gemv_rows4_xn<1>(x + int64_t{t} * K, w, K, out + t * 4, t == 0);
}

// One weight row against T x rows: the row is loaded once per kLanes columns.
template <typename W>
void gemv_row_multi(const float* x, const W* w, int T, int64_t K, float* out, int stride) {
  V acc[kMaxGemvRows];
  for (int t = 0; t < T; ++t) acc[t] = vzero();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    const V wv = vload(w + k);
    for (int t = 0; t < T; ++t) acc[t] = vfma(wv, vload(x + t * K + k), acc[t]);
  }
  for (int t = 0; t < T; ++t) {
    float s = vsum(acc[t]);
    for (int64_t kk = k; kk < K; ++kk) s += load1(w + kk) * x[t * K + kk];
    out[t * stride] = s;
  }
}

template <typename W>
void gemv_tail(const float* x, const W* w, int rows, int T, int64_t K, float* out) {
  for (int j = 0; j < rows; ++j) gemv_row_multi(x, w + j * K, T, K, out + j, 4);
}
