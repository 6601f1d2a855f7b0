// Streaming matrix-vector products for decode (kernels.h: gemv4, gemv_tail), written once over
// the vector type V of the build that includes this file (vec_{scalar,avx2,avx512}.h) and over the
// weight formats: f32, f16 and bf16 rows through one template (W: the element type), q8_0 rows
// (34-byte blocks of an f16 scale and 32 int8, core/quant.h) through their own loop that widens
// each block in registers, one scale per block and weight row. Beyond one tile of token rows the
// sliced path below widens each slice of the weight rows once into an L1 buffer instead.
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

// T token rows in tiles of kGemvTile, then 2, then 1: rows(std::integral_constant<int, NX>, x_t,
// out_t, first) for each tile, first for the tile that streams the weight rows from memory.
template <class Rows>
inline void gemv_tiles(const float* x, int T, int64_t K, float* out, Rows rows) {
  int t = 0;
  for (; t + kGemvTile <= T; t += kGemvTile) {
    rows(std::integral_constant<int, kGemvTile>{}, x + int64_t{t} * K, out + t * 4, t == 0);
  }
  if (kGemvTile == 4 && t + 2 <= T) {
    rows(std::integral_constant<int, 2>{}, x + int64_t{t} * K, out + t * 4, t == 0);
    t += 2;
  }
  if (t < T) rows(std::integral_constant<int, 1>{}, x + int64_t{t} * K, out + t * 4, t == 0);
}

// More token rows than one tile: K goes in slices of kGemvSliceCols columns. The four weight
// rows' slice is widened to f32 once (into a 2 KiB buffer that stays in L1; f32 rows are used as
// they are) and the slice of all T token rows stays in L1 while every tile of token rows uses
// them; each tile's accumulators wait on the stack between slices. Without slicing, each 4-row
// block of weights re-reads all of x (T K floats) from L2 and widens its rows once per tile.
// Measured on a 2-core Xeon (AVX-512), batch 16, mostly projections (context 64): 1.2x decode with
// f32 weights, 1.1x with q8_0; 64 to 128 columns did best from 8 to 32 rows, wider slices less.
inline constexpr int64_t kGemvSliceCols = 128;

// acc[t][j] += x_t[0, n) . w_j[0, n) for t < NX (token rows K apart), n a multiple of kLanes;
// pf (when not null): four rows to prefetch alongside, column for column.
template <int NX>
inline void gemv_slice(const float* x, int64_t K, const float* const* w, int64_t n, V (*acc)[4],
                       const float* const* pf) {
  V a[NX][4];
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) a[t][j] = acc[t][j];
  }
  for (int64_t k = 0; k < n; k += kLanes) {
    if (pf != nullptr) {
      for (int j = 0; j < 4; ++j) vprefetch(pf[j] + k);
    }
    V xv[NX];
    for (int t = 0; t < NX; ++t) xv[t] = vload(x + t * K + k);
    for (int j = 0; j < 4; ++j) {
      const V wv = vload(w[j] + k);
      for (int t = 0; t < NX; ++t) a[t][j] = vfma(wv, xv[t], a[t][j]);
    }
  }
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = a[t][j];
  }
}

// out[t * 4 + j] = x_t . w_j over columns [0, kv) (kv a multiple of kLanes), for T > kGemvTile
// token rows (the caller adds columns [kv, K)): rows(k0, n, buf, w, pf) points w[0..4) at the four weight rows' columns [k0, k0 + n)
// as f32 (widened into buf when they are not f32, prefetching the next block's meanwhile), and
// returns true with pf[0..4) set when the first tile should prefetch those instead (f32 rows, used
// in place: the prefetches spread over the tile's loop rather than issued all at once).
template <class Rows>
inline void gemv4_sliced(const float* x, int T, int64_t K, int64_t kv, float* out, Rows rows) {
  alignas(64) float buf[4 * kGemvSliceCols];
  V acc[kMaxGemvRows][4];
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = vzero();
  }
  for (int64_t k0 = 0; k0 < kv; k0 += kGemvSliceCols) {
    const int64_t n = k0 + kGemvSliceCols < kv ? kGemvSliceCols : kv - k0;
    const float* w[4];
    const float* pf[4];
    const float* const* first = rows(k0, n, buf, w, pf) ? pf : nullptr;
    int t = 0;
    for (; t + kGemvTile <= T; t += kGemvTile, first = nullptr) {
      gemv_slice<kGemvTile>(x + t * K + k0, K, w, n, acc + t, first);
    }
    if (kGemvTile == 4 && t + 2 <= T) {
      gemv_slice<2>(x + t * K + k0, K, w, n, acc + t, first);
      t += 2;
      first = nullptr;
    }
    if (t < T) gemv_slice<1>(x + t * K + k0, K, w, n, acc + t, first);
  }
  // out[i] = sum of the lanes of acc's i-th vector (acc[t][j] is the vector t * 4 + j): eight
  // at a time, reduced together.
  const V* a = &acc[0][0];
  int i = 0;
  for (; i + 8 <= 4 * T; i += 8) vsum8(a + i, out + i);
  for (; i < 4 * T; ++i) out[i] = vsum(a[i]);
}

template <typename W>
void gemv4_sliced_fmt(const float* x, const W* w, int T, int64_t K, float* out) {
  const W* wr[4] = {w, w + K, w + 2 * K, w + 3 * K};
  const int64_t kv = K / kLanes * kLanes;
  gemv4_sliced(x, T, K, kv, out, [&](int64_t k0, int64_t n, float* buf, const float** wf, const float** pf) {
    for (int j = 0; j < 4; ++j) {
      if constexpr (std::is_same_v<W, float>) {
        wf[j] = wr[j] + k0;
        pf[j] = wr[j] + 4 * K + k0;
      } else {
        for (int64_t c = 0; c < n; c += kLanes) {
          if (c % (64 / static_cast<int64_t>(sizeof(W))) == 0) vprefetch(wr[j] + 4 * K + k0 + c);
          vstore(buf + j * kGemvSliceCols + c, vload(wr[j] + k0 + c));
        }
        wf[j] = buf + j * kGemvSliceCols;
      }
    }
    return std::is_same_v<W, float>;
  });
  for (int t = 0; t < T; ++t) {
    for (int j = 0; j < 4; ++j) {
      for (int64_t kk = kv; kk < K; ++kk) out[t * 4 + j] += load1(wr[j] + kk) * x[t * K + kk];
    }
  }
}

template <typename W>
void gemv4(const float* x, const W* w, int T, int64_t K, float* out) {
  if (T > kGemvTile) return gemv4_sliced_fmt(x, w, T, K, out);
  gemv_tiles(x, T, K, out, [&](auto nx, const float* xt, float* o, bool first) {
    gemv_rows4_xn<decltype(nx)::value>(xt, w, K, o, first);
  });
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

// bfloat16 elements (the high halves of f32), a distinct type so that vload / load1 pick them.
struct Bf16 {
  uint16_t bits;
};
inline V vload(const Bf16* p) { return vload_bf16(&p->bits); }
inline float load1(const Bf16* p) { return bf16_to_f32(p->bits); }

// ---- q8_0 rows: K / 32 blocks of 34 bytes (K a multiple of 32) ----
inline constexpr size_t kQ8Block = 34;
inline float q8_scale(const char* block) { return load1(reinterpret_cast<const uint16_t*>(block)); }
inline const int8_t* q8_values(const char* block) { return reinterpret_cast<const int8_t*>(block + 2); }

// out[t * 4 + j] = x_t . w_j for t < NX, j < 4: per block, the four rows' scales are broadcast
// once and each kLanes-wide slice is widened (int8 -> f32, times the scale) and multiplied into
// the NX token rows. The dequantized value d q is exact in f32 (an 11-bit significand times a
// 7-bit integer), so the sums are those of the f32 GEMV over the dequantized matrix.
template <int NX>
inline void gemv_q8_rows4_xn(const float* x, const char* w, int64_t K, float* out, bool prefetch) {
  const size_t row_bytes = static_cast<size_t>(K / 32) * kQ8Block;
  const char* wr[4] = {w, w + row_bytes, w + 2 * row_bytes, w + 3 * row_bytes};
  V acc[NX][4];
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = vzero();
  }
  const int64_t n_blocks = K / 32;
  for (int64_t blk = 0; blk < n_blocks; ++blk) {
    const size_t off = static_cast<size_t>(blk) * kQ8Block;
    if (prefetch) {
      for (int j = 0; j < 4; ++j) vprefetch(wr[j] + 4 * row_bytes + off);
    }
    V sc[4];
    for (int j = 0; j < 4; ++j) sc[j] = vset1(q8_scale(wr[j] + off));
    const float* xb = x + blk * 32;
    for (int h = 0; h < 32; h += kLanes) {
      V xv[NX];
      for (int t = 0; t < NX; ++t) xv[t] = vload(xb + t * K + h);
      for (int j = 0; j < 4; ++j) {
        const V wv = vmul(sc[j], vload_i8(q8_values(wr[j] + off) + h));
        for (int t = 0; t < NX; ++t) acc[t][j] = vfma(wv, xv[t], acc[t][j]);
      }
    }
  }
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) out[t * 4 + j] = vsum(acc[t][j]);
  }
}

void gemv4_q8(const float* x, const void* wv, int T, int64_t K, float* out) {
  const char* w = static_cast<const char*>(wv);
  if (T > kGemvTile) {  // sliced along K (gemv4_sliced), each slice of blocks widened once
    const size_t row_bytes = static_cast<size_t>(K / 32) * kQ8Block;
    const char* wr[4] = {w, w + row_bytes, w + 2 * row_bytes, w + 3 * row_bytes};
    gemv4_sliced(x, T, K, K, out, [&](int64_t k0, int64_t n, float* buf, const float** wf, const float**) {
      for (int j = 0; j < 4; ++j) {
        float* dst = buf + j * kGemvSliceCols;
        for (int64_t c = 0; c < n; c += 32) {
          const char* b = wr[j] + static_cast<size_t>((k0 + c) / 32) * kQ8Block;
          vprefetch(b + 4 * row_bytes);
          vprefetch(b + 4 * row_bytes + 33);
          const V sc = vset1(q8_scale(b));
          for (int h = 0; h < 32; h += kLanes) vstore(dst + c + h, vmul(sc, vload_i8(q8_values(b) + h)));
        }
        wf[j] = dst;
      }
      return false;
    });
    return;
  }
  gemv_tiles(x, T, K, out, [&](auto nx, const float* xt, float* o, bool first) {
    gemv_q8_rows4_xn<decltype(nx)::value>(xt, w, K, o, first);
  });
}

// One q8_0 row against T token rows (the rows < 4 of a matrix's last block).
void gemv_tail_q8(const float* x, const void* wv, int rows, int T, int64_t K, float* out) {
  const size_t row_bytes = static_cast<size_t>(K / 32) * kQ8Block;
  for (int j = 0; j < rows; ++j) {
    const char* w = static_cast<const char*>(wv) + j * row_bytes;
    V acc[kMaxGemvRows];
    for (int t = 0; t < T; ++t) acc[t] = vzero();
    for (int64_t blk = 0; blk < K / 32; ++blk) {
      const char* b = w + static_cast<size_t>(blk) * kQ8Block;
      const V sc = vset1(q8_scale(b));
      for (int h = 0; h < 32; h += kLanes) {
        const V wv8 = vmul(sc, vload_i8(q8_values(b) + h));
        for (int t = 0; t < T; ++t) acc[t] = vfma(wv8, vload(x + t * K + blk * 32 + h), acc[t]);
      }
    }
    for (int t = 0; t < T; ++t) out[t * 4 + j] = vsum(acc[t]);
  }
}

// The table's entries (kernels.h: index = weight format), w untyped.
template <typename W>
void gemv4_fmt(const float* x, const void* w, int T, int64_t K, float* out) {
  gemv4(x, static_cast<const W*>(w), T, K, out);
}
template <typename W>
void gemv_tail_fmt(const float* x, const void* w, int rows, int T, int64_t K, float* out) {
  gemv_tail(x, static_cast<const W*>(w), rows, T, K, out);
}
