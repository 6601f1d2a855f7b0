// Products with weights in panels of 16 rows (DType::kF32P16, kF16P16, kBF16P16, core/quant.h:
// panel p holds rows [16 p, 16 p + 16) as [K][16]), written once over the vector type V of the
// build that includes this file (vec_{scalar,avx2,avx512}.h) and over the element type W (f16 and
// bf16 widened exactly to f32 in registers): out[t, i] (+)= x_t . w_i.
//
// Each step of k loads the 16 weights of column k of P panels (P 16 / kLanes vectors, one cache
// line per panel) and multiplies them by the broadcast x_t[k] of NT token rows into P 16 NT
// accumulators that stay in registers: no horizontal sums, and each panel is one contiguous stream
// that the loop prefetches ahead. The row-major GEMV (gemv-inl.h) instead reduces every
// accumulator across its lanes and reads four rows K apart.
// Measured on a 2-core Xeon (AVX-512), Pythia-160M geometry, f32 weights: a decode step of 16
// token rows at context 64 took 20.1-20.5 ms against 26.2-27.3 for the row layout, one token row
// 15.4-16.4 ms against 18.3, and a 128-token prefill ran 1.2x OpenBLAS sgemm over row-major
// weights; from ~512 tokens on sgemm was as fast and at 1024 about 10% faster (a tile of 12 token
// rows and 2 panels reaches ~60-70% of the FMA peak where sgemm reaches more) until many token
// rows went in blocks that keep x in L2 (gemv_panels below: 1024 tokens 1.04x, 2000 1.14x).
//
// K goes in chunks of kPanelChunk columns; the partial sums wait in out between chunks, so the
// chunk of the P panels (P 16 KiB at 256 columns) stays in L1 while every tile of NT token rows
// uses it. More token rows than one tile (prefill) repeat over the chunk, which makes this a GEMM
// whose B operand (w^T) is already packed.

inline constexpr int64_t kPanelChunk = 256;
// Vectors per panel row of 16 floats.
inline constexpr int kPanelVecs = kPanelRows / kLanes;
// Token rows per tile: P kPanelVecs NT accumulators in registers (AVX-512: 2 x 12 with 2 panels,
// AVX2: 2 x 6 with one; the scalar path keeps them in memory anyway).
inline constexpr int kPanelTile = kLanes == 16 ? 12 : kLanes == 8 ? 6 : 4;
// Panels per pass for few token rows (more independent streams where registers allow).
inline constexpr int kPanelWide = kLanes == 16 ? 4 : kLanes == 8 ? 2 : 1;

// out[t * ldo + i] (+)= x_t[k0, k0 + kc) . w_i[k0, k0 + kc) for t < NT, i < 16 P; w points at
// column k0 of the first panel, panels 16 K apart; load: add to out (else it starts at zero).
template <int P, int NT, typename W>
inline void panel_tile(const float* x, int64_t K, const W* w, int64_t kc, float* out, int64_t ldo,
                       bool load, bool prefetch) {
  constexpr int NW = P * kPanelVecs;
  V acc[NT][NW];
  for (int t = 0; t < NT; ++t) {
    for (int j = 0; j < NW; ++j) acc[t][j] = load ? vload(out + t * ldo + j * kLanes) : vzero();
  }
  for (int64_t k = 0; k < kc; ++k) {
    V wv[NW];
    for (int p = 0; p < P; ++p) {
      const W* col = w + p * kPanelRows * K + k * kPanelRows;
      // 32 columns ahead in the panel's stream (2 KiB of f32, 1 KiB of f16 / bf16), a line at a time.
      if (prefetch && (sizeof(W) == 4 || k % 2 == 0)) vprefetch(col + 32 * kPanelRows);
      for (int v = 0; v < kPanelVecs; ++v) wv[p * kPanelVecs + v] = vload(col + v * kLanes);
    }
    for (int t = 0; t < NT; ++t) {
      const V xb = vset1(x[t * K + k]);
      for (int j = 0; j < NW; ++j) acc[t][j] = vfma(wv[j], xb, acc[t][j]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    for (int j = 0; j < NW; ++j) vstore(out + t * ldo + j * kLanes, acc[t][j]);
  }
}

// The tile above with NM more token rows whose accumulators live in out instead of registers
// (AVX-512 has 32 vector registers: 2 panels x 12 rows take 24). k goes two columns at a time, so
// each memory row's accumulator is loaded, multiplied into twice and stored once per two columns;
// the register rows' FMAs and these loads and stores overlap with the weights' stream instead of
// a separate pass over the chunk from L1 after it (a batch of 16 = 12 + 4 token rows). The asm
// barrier keeps GCC from promoting the memory accumulators into registers (and spilling).
template <int P, int NR, int NM, typename W>
inline void panel_tile_mem(const float* x, int64_t K, const W* w, int64_t kc, float* out,
                           int64_t ldo, bool load, bool prefetch) {
  constexpr int NW = P * kPanelVecs;
  V acc[NR][NW];
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) acc[t][j] = load ? vload(out + t * ldo + j * kLanes) : vzero();
  }
  float* mo = out + NR * ldo;
  const float* mx = x + NR * K;
  if (!load) {
    for (int t = 0; t < NM; ++t) {
      for (int j = 0; j < NW; ++j) vstore(mo + t * ldo + j * kLanes, vzero());
    }
  }
  int64_t k = 0;
  for (; k + 2 <= kc; k += 2) {
    V w0[NW], w1[NW];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const W* col = w + p * kPanelRows * K + k * kPanelRows;
      if (prefetch) {
        vprefetch(col + 32 * kPanelRows);
        if (sizeof(W) == 4) vprefetch(col + 33 * kPanelRows);
      }
#pragma GCC unroll 4
      for (int v = 0; v < kPanelVecs; ++v) {
        w0[p * kPanelVecs + v] = vload(col + v * kLanes);
        w1[p * kPanelVecs + v] = vload(col + kPanelRows + v * kLanes);
      }
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const V x0 = vset1(x[t * K + k]);
#pragma GCC unroll 4
      for (int j = 0; j < NW; ++j) acc[t][j] = vfma(w0[j], x0, acc[t][j]);
      const V x1 = vset1(x[t * K + k + 1]);
#pragma GCC unroll 4
      for (int j = 0; j < NW; ++j) acc[t][j] = vfma(w1[j], x1, acc[t][j]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < NM; ++t) {
      const V x0 = vset1(mx[t * K + k]);
      const V x1 = vset1(mx[t * K + k + 1]);
#pragma GCC unroll 4
      for (int j = 0; j < NW; ++j) {
        float* a = mo + t * ldo + j * kLanes;
        vstore(a, vfma(w1[j], x1, vfma(w0[j], x0, vload(a))));
      }
    }
    asm volatile("" ::: "memory");
  }
  for (; k < kc; ++k) {
    V w0[NW];
    for (int p = 0; p < P; ++p) {
      const W* col = w + p * kPanelRows * K + k * kPanelRows;
      for (int v = 0; v < kPanelVecs; ++v) w0[p * kPanelVecs + v] = vload(col + v * kLanes);
    }
#pragma GCC unroll 16
    for (int t = 0; t < NR; ++t) {
      const V x0 = vset1(x[t * K + k]);
#pragma GCC unroll 4
      for (int j = 0; j < NW; ++j) acc[t][j] = vfma(w0[j], x0, acc[t][j]);
    }
    for (int t = 0; t < NM; ++t) {
      const V x0 = vset1(mx[t * K + k]);
      for (int j = 0; j < NW; ++j) {
        float* a = mo + t * ldo + j * kLanes;
        vstore(a, vfma(w0[j], x0, vload(a)));
      }
    }
  }
#pragma GCC unroll 16
  for (int t = 0; t < NR; ++t) {
#pragma GCC unroll 4
    for (int j = 0; j < NW; ++j) vstore(out + t * ldo + j * kLanes, acc[t][j]);
  }
}

template <int P, typename W, int... NT>
inline void panel_tile_n(int nt, const float* x, int64_t K, const W* w, int64_t kc, float* out,
                         int64_t ldo, bool load, bool prefetch, std::integer_sequence<int, NT...>) {
  using Fn = void (*)(const float*, int64_t, const W*, int64_t, float*, int64_t, bool, bool);
  static constexpr Fn kTiles[] = {&panel_tile<P, NT + 1, W>...};
  kTiles[nt - 1](x, K, w, kc, out, ldo, load, prefetch);
}

// P panels at w against T token rows: chunks of K, tiles of token rows within each chunk.
template <int P, typename W>
inline void panels_p(const float* x, int T, int64_t K, const W* w, float* out, int64_t ldo,
                     bool accumulate) {
  for (int64_t k0 = 0; k0 < K; k0 += kPanelChunk) {
    const int64_t kc = K - k0 < kPanelChunk ? K - k0 : kPanelChunk;
    const bool load = accumulate || k0 > 0;
    for (int t0 = 0; t0 < T; t0 += kPanelTile) {
      const int nt = T - t0 < kPanelTile ? T - t0 : kPanelTile;
      if constexpr (kLanes == 16 && P == 2) {
        // 1-4 rows after this full tile: they ride along in memory (panel_tile_mem).
        const int rest = T - t0 - nt;
        if (nt == kPanelTile && rest > 0 && rest <= 4) {
          const float* xt = x + t0 * K + k0;
          const W* wk = w + k0 * kPanelRows;
          float* ot = out + t0 * ldo;
          const bool pf = t0 == 0;
          switch (rest) {
            case 1: panel_tile_mem<P, kPanelTile, 1>(xt, K, wk, kc, ot, ldo, load, pf); break;
            case 2: panel_tile_mem<P, kPanelTile, 2>(xt, K, wk, kc, ot, ldo, load, pf); break;
            case 3: panel_tile_mem<P, kPanelTile, 3>(xt, K, wk, kc, ot, ldo, load, pf); break;
            default: panel_tile_mem<P, kPanelTile, 4>(xt, K, wk, kc, ot, ldo, load, pf); break;
          }
          break;
        }
      }
      panel_tile_n<P>(nt, x + t0 * K + k0, K, w + k0 * kPanelRows, kc, out + t0 * ldo, ldo, load,
                      /*prefetch=*/t0 == 0, std::make_integer_sequence<int, kPanelTile>{});
    }
  }
}

// n_panels panels at w against T token rows: kPanelWide at a time for few token rows, else 2
// (one without AVX-512), the rest one by one.
template <typename W>
void gemv_panels_rows(const float* x, int T, int64_t K, const W* w, int n_panels, float* out,
                      int64_t ldo, bool accumulate);

// The table's entries (W: float, uint16_t for f16, Bf16). Many token rows (prefill) go in blocks
// of a quarter of the L2 cache's worth of x once x is larger than three quarters of it: each pair
// of panels then reads its x from L2 rather than from L3 or memory, at the price of reading the
// weights once per block (from L3 after the first), which costs less while K < 4096 (x is re-read
// once per 32 weight rows, the weights once per block).
// A 2-core Xeon (2 MiB L2), 3 alternating runs: prefill of 1024 tokens 1048-1086 -> 1072-1149
// tok/s (medians 1053 -> 1097), 2000 tokens 851-923 -> 1016-1049 (905 -> 1028).
template <typename W>
void gemv_panels(const float* x, int T, int64_t K, const void* wv, int n_panels, float* out,
                 int64_t ldo, bool accumulate) {
  const W* w = static_cast<const W*>(wv);
  const int64_t l2 = l2_cache_bytes(), x_bytes = int64_t{T} * K * int64_t{sizeof(float)};
  int64_t tb = T;
  if (4 * x_bytes > 3 * l2) {
    tb = l2 / 4 / (K * int64_t{sizeof(float)});
    tb = tb < kPanelTile ? kPanelTile : tb - tb % kPanelTile;
  }
  for (int t0 = 0; t0 < T; t0 += int(tb)) {
    const int nt = T - t0 < tb ? T - t0 : int(tb);
    gemv_panels_rows<W>(x + t0 * K, nt, K, w, n_panels, out + t0 * ldo, ldo, accumulate);
  }
}

template <typename W>
void gemv_panels_rows(const float* x, int T, int64_t K, const W* w, int n_panels, float* out,
                      int64_t ldo, bool accumulate) {
  int p = 0;
  if (T <= 4) {
    for (; p + kPanelWide <= n_panels; p += kPanelWide) {
      panels_p<kPanelWide>(x, T, K, w + p * kPanelRows * K, out + p * kPanelRows, ldo, accumulate);
    }
  }
  constexpr int kNarrow = kLanes == 16 ? 2 : 1;
  for (; p + kNarrow <= n_panels; p += kNarrow) {
    panels_p<kNarrow>(x, T, K, w + p * kPanelRows * K, out + p * kPanelRows, ldo, accumulate);
  }
  for (; p < n_panels; ++p) {
    panels_p<1>(x, T, K, w + p * kPanelRows * K, out + p * kPanelRows, ldo, accumulate);
  }
}
