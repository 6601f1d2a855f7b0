// q8_0 weight rows times activations rounded to q8 blocks, by integer dot products (kernels.h:
// gemv4_q8_int), and the activations' quantizer (quantize_q8). Written over vec_i8x32.h's blocks
// of 32 int8 (one 256-bit register; vec_scalar.h one product at a time), so the AVX2 build, the
// AVX-512 build and its VNNI region (one dpbusd per block) share it.
//
// Why integers: widening each int8 weight to f32 in registers (gemv-inl.h's gemv4_q8) costs about
// 11 vector operations per block of 32 weights and row, and measured on a Xeon core (L2-resident
// rows) it streams 17-18 GB/s: barely above one core's share of DRAM bandwidth, so batch-1 decode
// with q8_0 weights ran at ~80% of its bound. With the activations quantized once per call (as
// llama.cpp does for its q8_0 weights), a block is one signed product sum (idot), one conversion
// and one fused multiply-add by d_w d_x: 37 GB/s on the same core.
//
// Numbers: each block's products sum to an exact int32; the block sums are scaled by the weight
// block's f16 scale times the activation block's f32 scale and added in f32 (lane partial sums,
// then the lanes).

// Token rows per tile: 4 rows x NX tokens of 8-lane accumulators plus NX pairs of blocks must fit
// the register file (32 vector registers with AVX-512 VL, 16 with AVX2).
inline constexpr int kGemvIntTile = kLanes == 16 ? 4 : 2;
// The first tile fetches the next 4 rows into L1 and, column for column, the rows this many
// ahead into L2, so that more of the matrix is on its way than the L1 fill buffers allow: batch-1
// decode with q8_0 weights (Pythia-160M geometry, 2-core Xeon) went from ~162 to ~183 tok/s
// (distances of 8-32 rows measured alike; none at all: 95).
inline constexpr int kGemvIntPrefetchL2Rows = 24;

// q[0, n) = round(x / d) per block of 32, d[n / 32] the blocks' scales: quantize_query_q8
// (core/quant.h), the same numbers on every path.
void quantize_q8(const float* x, int8_t* q, float* d, int64_t n) {
  for (int64_t b = 0; b < n / 32; ++b) d[b] = iquantize32(x + b * 32, q + b * 32);
}

// out[t * 4 + j] = sum over blocks b of d_w[j, b] d_x[t, b] (q_w[j, b] . q_x[t, b]) for t < NX,
// j < 4: xq / xd the NX token rows' int8 values [NX, K] and block scales [NX, K / 32].
template <int NX>
inline void gemv_q8_int_rows4(const int8_t* xq, const float* xd, const char* w, int64_t K,
                              float* out, bool prefetch) {
  const int64_t nb = K / 32;
  const size_t row_bytes = static_cast<size_t>(nb) * kQ8_0BlockBytes;
  const char* wr[4] = {w, w + row_bytes, w + 2 * row_bytes, w + 3 * row_bytes};
  F32x8 acc[NX][4];
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) acc[t][j] = fzero8();
  }
  for (int64_t b = 0; b < nb; ++b) {
    const size_t off = static_cast<size_t>(b) * kQ8_0BlockBytes;
    if (prefetch) {
      for (int j = 0; j < 4; ++j) vprefetch(wr[j] + 4 * row_bytes + off);
      for (int j = 0; j < 4; ++j) __builtin_prefetch(wr[j] + kGemvIntPrefetchL2Rows * row_bytes + off, 0, 2);
    }
    I8x32 q[NX], aq[NX];
    float dx[NX];
    for (int t = 0; t < NX; ++t) {
      q[t] = iload32(xq + t * K + b * 32);
      aq[t] = iabs(q[t]);
      dx[t] = xd[t * nb + b];
    }
    for (int j = 0; j < 4; ++j) {
      const I8x32 k = iload32(reinterpret_cast<const int8_t*>(wr[j] + off + 2));
      const float dw = load1(reinterpret_cast<const uint16_t*>(wr[j] + off));
      for (int t = 0; t < NX; ++t) acc[t][j] = ifma(idot(aq[t], q[t], k), dw * dx[t], acc[t][j]);
    }
  }
  for (int t = 0; t < NX; ++t) {
    for (int j = 0; j < 4; ++j) out[t * 4 + j] = fsum8(acc[t][j]);
  }
}

void gemv4_q8_int(const int8_t* xq, const float* xd, const void* wv, int T, int64_t K, float* out) {
  const char* w = static_cast<const char*>(wv);
  const int64_t nb = K / 32;
  int t = 0;
  for (; t + kGemvIntTile <= T; t += kGemvIntTile) {
    gemv_q8_int_rows4<kGemvIntTile>(xq + t * K, xd + t * nb, w, K, out + t * 4, t == 0);
  }
  if (kGemvIntTile == 4 && t + 2 <= T) {
    gemv_q8_int_rows4<2>(xq + t * K, xd + t * nb, w, K, out + t * 4, t == 0);
    t += 2;
  }
  if (t < T) gemv_q8_int_rows4<1>(xq + t * K, xd + t * nb, w, K, out + t * 4, t == 0);
}

// The rows < 4 of a matrix's last block, one weight row and token row at a time.
void gemv_tail_q8_int(const int8_t* xq, const float* xd, const void* wv, int rows, int T,
                      int64_t K, float* out) {
  const int64_t nb = K / 32;
  const size_t row_bytes = static_cast<size_t>(nb) * kQ8_0BlockBytes;
  for (int j = 0; j < rows; ++j) {
    const char* w = static_cast<const char*>(wv) + j * row_bytes;
    for (int t = 0; t < T; ++t) {
      F32x8 acc = fzero8();
      for (int64_t b = 0; b < nb; ++b) {
        const char* blk = w + static_cast<size_t>(b) * kQ8_0BlockBytes;
        const I8x32 q = iload32(xq + t * K + b * 32);
        const I8x32 k = iload32(reinterpret_cast<const int8_t*>(blk + 2));
        const float dw = load1(reinterpret_cast<const uint16_t*>(blk));
        acc = ifma(idot(iabs(q), q, k), dw * xd[t * nb + b], acc);
      }
      out[t * 4 + j] = fsum8(acc);
    }
  }
}
