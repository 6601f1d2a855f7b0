// Decode attention (kernels.h: attn_scores_*, attn_values_*), written once over the vector type V
// and over the cache's element formats: a few query rows that read the same KV head (the query
// heads of one GQA/MQA group at one position) against key and value rows in the cache, given as
// contiguous chunks of positions (one chunk when the sequence's cache blocks are consecutive,
// several for a paged cache). Quantized rows are read block by block in registers, never
// dequantized into a copy: q8_0 / q4_0 keys by integer dot products with the query quantized per
// block (attn_scores_int below), block-format values widened with the block's scale folded into
// the attention weight.
//
// Scores go 8 keys at a time: 8 accumulators of d-wide dot products, reduced together (vsum8, no
// horizontal sum per key), the 8 keys' rows staying in L1 while every query row of the group uses
// them; the next 8 keys are prefetched meanwhile. The weighted sum of values runs over blocks of
// keys and slices of 8 vectors of d, with the slice's accumulators in registers, so each value
// row is read from L1/L2 once per query row and from memory once per group. The softmax between
// the two (and its normalisation, folded into the output rows) is the caller's.

inline constexpr int kValueBlock = 128;  // keys per block of the value sum (32 KiB f32 at d = 64)
// Keys ahead that the score loops also fetch into L2 (8 KiB of f32 keys at d = 64): on a 2-core
// Xeon it raised decode attention over a cache in DRAM by 2-5% (groups of 1, 3 and 12 rows).
inline constexpr int kKeyPrefetchL2 = 32;
// Value rows ahead that the one-row value loop fetches into L1: over a q8_0 cache in DRAM it
// raised decode attention of one query row per KV head from 13.7 to 17-17.8 GB/s (2-core Xeon).
inline constexpr int kValuePrefetch = 32;

// The 64-byte lines of [p, p + bytes) into L1, or with L2 into L2 only.
template <bool L2 = false>
inline void prefetch_lines(const char* p, size_t bytes) {
  for (size_t o = 0; o < bytes; o += 64) {
    if constexpr (L2) {
      __builtin_prefetch(p + o, 0, 2);
    } else {
      vprefetch(p + o);
    }
  }
}

// Prefetching across the chunks of a paged cache. The loops below fetch rows ahead of the one
// they read; within one chunk that is an address a fixed distance on. A paged cache's chunks are
// blocks of a few positions scattered through the pool (a server's sequences take blocks as they
// grow), so past a chunk's end lie other sequences' rows: the address would fetch the wrong data,
// and the next chunk's rows would arrive with a full memory latency each. Over several chunks a
// cursor walks the rows in the order they are read instead, a fixed number of rows ahead, and the
// loops fetch from it at the pace they read (decode at batch 16, context 2k, blocks of 16
// positions, MHA, 2-core Xeon: attention over a q8_0 cache 65 -> 44 ms per step, over 34 ms for a
// contiguous cache; without these, prefetches by address past a block's end had made it 2x
// slower than contiguous).
class AheadRows {
 public:
  // The rows of the chunks' keys (keys) or values, from `ahead` rows past the first.
  AheadRows(const KvChunk* ch, int n_ch, bool keys, size_t row_bytes, int ahead)
      : ch_(ch), n_ch_(n_ch), keys_(keys), row_bytes_(row_bytes) {
    move(static_cast<size_t>(ahead) * row_bytes, false);
  }
  // The next `bytes` of rows into L2 (whole lines; nothing past the last chunk).
  void fetch(size_t bytes) { move(bytes, true); }
  void fetch_rows(int n) { move(static_cast<size_t>(n) * row_bytes_, true); }

 private:
  void move(size_t bytes, bool fetch) {
    while (bytes > 0 && c_ < n_ch_) {
      const size_t end = static_cast<size_t>(ch_[c_].n) * row_bytes_;
      const size_t m = end - o_ < bytes ? end - o_ : bytes;
      if (fetch) {
        const char* base = static_cast<const char*>(keys_ ? ch_[c_].k : ch_[c_].v);
        for (size_t o = 0; o < m; o += 64) __builtin_prefetch(base + o_ + o, 0, 2);
      }
      bytes -= m;
      o_ += m;
      if (o_ == end) {
        o_ = 0;
        ++c_;
      }
    }
  }
  const KvChunk* ch_;
  int n_ch_;
  bool keys_;
  size_t row_bytes_;
  int c_ = 0;
  size_t o_ = 0;
};

// While n keys from kb are scored: the next n keys into L1 and the n keys kKeyPrefetchL2 ahead
// into L2. With `ahead` (several chunks) the next keys only where they lie before `end` (the
// chunk's end), and the L2 rows from the cursor. One chunk (a contiguous cache) goes by address
// past its end too: what lies there is the next sequence's cache, read next (measured 3% faster
// than stopping at the end).
inline void prefetch_keys(const char* kb, int n, size_t row_bytes, const char* end, AheadRows* ahead) {
  const size_t bytes = static_cast<size_t>(n) * row_bytes;
  if (!ahead) {
    prefetch_lines(kb + bytes, bytes);
    prefetch_lines<true>(kb + kKeyPrefetchL2 * row_bytes, bytes);
    return;
  }
  if (kb + 2 * bytes <= end) prefetch_lines(kb + bytes, bytes);
  ahead->fetch(bytes);
}

// The chunks' keys in blocks of N: block(kb, j) for the N key rows at kb (prefetch_keys done),
// the first at position j of the concatenated chunks; then rest(kb, n, j) for a chunk's last
// n < N keys, if any.
template <int N, class Block, class Rest>
inline void for_key_blocks(const KvChunk* ch, int n_ch, size_t row_bytes, Block&& block, Rest&& rest) {
  AheadRows ahead(ch, n_ch, true, row_bytes, kKeyPrefetchL2);
  AheadRows* pf = n_ch > 1 ? &ahead : nullptr;
  for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
    const char* K = static_cast<const char*>(ch[c].k);
    const int n = ch[c].n;
    const char* end = K + static_cast<size_t>(n) * row_bytes;
    int j0 = 0;
    for (; j0 + N <= n; j0 += N) {
      const char* kb = K + static_cast<size_t>(j0) * row_bytes;
      prefetch_keys(kb, N, row_bytes, end, pf);
      block(kb, off + j0);
    }
    if (j0 < n) {
      if (pf) pf->fetch_rows(n - j0);  // in step with the rows read
      rest(K + static_cast<size_t>(j0) * row_bytes, n - j0, off + j0);
    }
  }
}

// Readers of one row of head_dim values stored at `row` in each format. get(row, i) gives values
// [i, i + kLanes) (i a multiple of kLanes, so never across a 32-value block); get1 one value.
struct RowF32 {
  static V get(const char* row, int i) { return vload(reinterpret_cast<const float*>(row) + i); }
  static float get1(const char* row, int i) { return reinterpret_cast<const float*>(row)[i]; }
};
struct RowF16 {
  static V get(const char* row, int i) { return vload(reinterpret_cast<const uint16_t*>(row) + i); }
  static float get1(const char* row, int i) { return load1(reinterpret_cast<const uint16_t*>(row) + i); }
};
struct RowBF16 {
  static V get(const char* row, int i) { return vload_bf16(reinterpret_cast<const uint16_t*>(row) + i); }
  static float get1(const char* row, int i) { return bf16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]); }
};
// The block formats, at two levels: a block b (its scale, its 32 values as int8 for the integer
// scores, value i as an int) and a row (the scale of the block holding value i; values [i, i +
// kLanes) without that scale, raw, and with it, get; one value, get1).
struct RowQ8 {  // 34-byte blocks: f16 scale, 32 int8
  static constexpr size_t kBlockBytes = 34;
  static float scale(const char* b) { return load1(reinterpret_cast<const uint16_t*>(b)); }
  static I8x32 load(const char* b) { return iload32(reinterpret_cast<const int8_t*>(b + 2)); }
  static int value(const char* b, int i) { return reinterpret_cast<const int8_t*>(b + 2)[i]; }
  static float block_scale(const char* row, int i) { return scale(row + (i / 32) * kBlockBytes); }
  static V raw(const char* row, int i) {
    return vload_i8(reinterpret_cast<const int8_t*>(row + (i / 32) * kBlockBytes + 2) + i % 32);
  }
  static V get(const char* row, int i) { return vmul(vset1(block_scale(row, i)), raw(row, i)); }
  static float get1(const char* row, int i) {
    const char* b = row + (i / 32) * kBlockBytes;
    return scale(b) * static_cast<float>(value(b, i % 32));
  }
};
struct RowQ4 {  // 18-byte blocks: f16 scale, 16 bytes of nibbles (value j low, j + 16 high)
  static constexpr size_t kBlockBytes = 18;
  static float scale(const char* b) { return RowQ8::scale(b); }
  static I8x32 load(const char* b) { return iload_q4(reinterpret_cast<const uint8_t*>(b + 2)); }
  static int value(const char* b, int i) {
    const uint8_t q = reinterpret_cast<const uint8_t*>(b + 2)[i % 16];
    return ((i >= 16 ? q >> 4 : q) & 15) - 8;
  }
  static float block_scale(const char* row, int i) { return scale(row + (i / 32) * kBlockBytes); }
  static V raw(const char* row, int i) {
    return vload_u4(reinterpret_cast<const uint8_t*>(row + (i / 32) * kBlockBytes + 2) + i % 16,
                    i % 32 >= 16);
  }
  static V get(const char* row, int i) { return vmul(vset1(block_scale(row, i)), raw(row, i)); }
  static float get1(const char* row, int i) {
    const char* b = row + (i / 32) * kBlockBytes;
    return scale(b) * static_cast<float>(value(b, i % 32));
  }
};

template <class R>
float dot_row(const float* q, const char* row, int d) {
  float s = 0;
  for (int i = 0; i < d; ++i) s += q[i] * R::get1(row, i);
  return s;
}

// scores[r * lds + j] = scale * q_r . K_j for r < n_q, j < len; K rows row_bytes apart.
// ahead: attn_scores's cursor over several chunks (null: prefetch within this one).
template <class R>
void scores_block8(const float* q, int n_q, int ldq, const char* K, size_t row_bytes, int len,
                   int d, float scale, float* scores, int64_t lds, AheadRows* ahead) {
  const char* end = K + static_cast<size_t>(len) * row_bytes;
  int j0 = 0;
  if (d % kLanes == 0) {
    for (; j0 + 8 <= len; j0 += 8) {
      const char* kb = K + static_cast<size_t>(j0) * row_bytes;
      prefetch_keys(kb, 8, row_bytes, end, ahead);
      for (int r = 0; r < n_q; ++r) {
        const float* qr = q + int64_t{r} * ldq;
        V acc[8];
        for (int k = 0; k < 8; ++k) acc[k] = vzero();
        for (int c = 0; c < d; c += kLanes) {
          const V qv = vload(qr + c);
          for (int k = 0; k < 8; ++k) acc[k] = vfma(qv, R::get(kb + k * row_bytes, c), acc[k]);
        }
        float* out = scores + r * lds + j0;
        vsum8(acc, out);
        for (int k = 0; k < 8; ++k) out[k] *= scale;
      }
    }
  }
  if (ahead && j0 < len) ahead->fetch_rows(len - j0);
  for (; j0 < len; ++j0) {
    for (int r = 0; r < n_q; ++r) {
      scores[r * lds + j0] = scale * dot_row<R>(q + int64_t{r} * ldq, K + static_cast<size_t>(j0) * row_bytes, d);
    }
  }
}

// The same for a group of kLanes / 2 < n_q <= kLanes query rows (an MQA / MLKV group of 12 on
// AVX-512, 5-8 on AVX2) with the rows in the vector lanes: the group's rows are transposed once
// into qt[c] = (q_0[c], ..., q_{n_q - 1}[c], 0, ...), and for a block of kLanes keys acc[k] +=
// qt[c] K_k[c] (the key value broadcast) over c, so each FMA yields kLanes products of the
// scores and no horizontal sums are needed; the block's accumulators (key k: every row's score)
// are transposed once in registers into rows of scores. d <= kMaxLanesHead. The remaining
// len % kLanes keys go through scores_block8.
inline constexpr int kMaxLanesHead = 256;

// qt [d][kLanes]: the group's rows transposed (transpose_group), once for all of a call's chunks.
inline void transpose_group(const float* q, int n_q, int ldq, int d, float* qt) {
  for (int c = 0; c < d; ++c) {
    for (int r = 0; r < kLanes; ++r) qt[c * kLanes + r] = r < n_q ? q[int64_t{r} * ldq + c] : 0.0f;
  }
}

template <class R>
void scores_lanes(const float* q, const float* qt, int n_q, int ldq, const char* K, size_t row_bytes,
                  int len, int d, float scale, float* scores, int64_t lds, AheadRows* ahead) {
  const V vscale = vset1(scale);
  const size_t block_bytes = kLanes * row_bytes;
  int j0 = 0;
  for (; j0 + kLanes <= len; j0 += kLanes) {
    const char* kb = K + static_cast<size_t>(j0) * row_bytes;
    // As prefetch_keys: the next block only within the chunk when a cursor serves several.
    const bool pf1 = !ahead || j0 + 2 * kLanes <= len;
    V acc[kLanes];
    for (int k = 0; k < kLanes; ++k) acc[k] = vzero();
    for (int c = 0; c < d; ++c) {
      // The next block, one line per column step (its kLanes d floats: d lines at d = 64 and 16 lanes).
      if (size_t(c) * 64 < block_bytes) {
        if (pf1) vprefetch(kb + block_bytes + size_t(c) * 64);
        if (ahead) {
          ahead->fetch(64);
        } else {
          __builtin_prefetch(kb + kKeyPrefetchL2 * row_bytes + size_t(c) * 64, 0, 2);
        }
      }
      const V qv = vload(qt + c * kLanes);
      for (int k = 0; k < kLanes; ++k) acc[k] = vfma(qv, vset1(R::get1(kb + k * row_bytes, c)), acc[k]);
    }
    vtranspose(acc);
    for (int r = 0; r < n_q; ++r) vstore(scores + r * lds + j0, vmul(acc[r], vscale));
  }
  if (j0 < len) {
    scores_block8<R>(q, n_q, ldq, K + static_cast<size_t>(j0) * row_bytes, row_bytes, len - j0, d,
                     scale, scores + j0, lds, ahead);
  }
}

template <class R>
void attn_scores(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                 size_t row_bytes, float scale, float* scores, int64_t lds) {
  const bool lanes = kLanes >= 8 && std::is_same_v<R, RowF32> && 2 * n_q > kLanes &&
                     n_q <= kLanes && d % kLanes == 0 && d <= kMaxLanesHead;
  AheadRows ahead(ch, n_ch, true, row_bytes, kKeyPrefetchL2);
  AheadRows* pf = n_ch > 1 ? &ahead : nullptr;
  alignas(64) float qt[kMaxLanesHead * kLanes];
  if (lanes) transpose_group(q, n_q, ldq, d, qt);
  for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
    if (lanes) {
      scores_lanes<R>(q, qt, n_q, ldq, static_cast<const char*>(ch[c].k), row_bytes, ch[c].n, d,
                      scale, scores + off, lds, pf);
    } else {
      scores_block8<R>(q, n_q, ldq, static_cast<const char*>(ch[c].k), row_bytes, ch[c].n, d, scale,
                       scores + off, lds, pf);
    }
  }
}

// ---- scores over q8_0 / q4_0 keys by integer dot products ----
// The query rows are quantized once per call, per block of 32 (iquantize32, quantize_query_q8's
// rule: int8, f32 scale), so that each key block's dot product is an exact int32 (idot: maddubs/madd, or one
// dpbusd with AVX-512 VNNI), as llama.cpp's quantized vec_dot does. 8 keys go at a time: their 8
// integer sums of one block are reduced together (isum8), then scaled by the key blocks' f16
// scales times the query block's scale and summed over the blocks. Every path (and the tail keys,
// one at a time) forms the same exact integers and scales them in the same order.
template <class KB>
void scores_int_block8(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                       size_t row_bytes, float scale, float* scores, int64_t lds);

#ifdef MLKV_VNNI
// q8_0 keys against a group of 9-16 query rows (MQA / MLKV groups) with the rows in the lanes of
// 512-bit dpbusd: lane r of qt[b][g] holds row r's 4 int8 values [32 b + 4 g, 32 b + 4 g + 4), and
// a key's 4 values at the same place, broadcast and offset by 128 to unsigned (xor 0x80), give
// every row's 4 products at once: sum (k + 128) q = k.q + 128 sum q, the second term subtracted
// per block (corr). The integers are the exact k.q of the 8-key path; each block's sum is then
// scaled by the key's f16 scale times the row's query scale and added in block order, as there.
// Blocks of 16 keys; their [key][row] sums are transposed once into rows of scores. The last
// len % 16 keys of a chunk go through the 8-key path.
inline void scores_q8_lanes(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                            size_t row_bytes, float scale, float* scores, int64_t lds) {
  const int nb = d / 32;
  alignas(64) int8_t qt[kMaxIntHeadDim / 32][8][16 * 4] = {};
  alignas(64) int8_t qq[kMaxIntHeadDim];
  alignas(64) float dqv[kMaxIntHeadDim / 32][16] = {};
  alignas(64) int32_t corr[kMaxIntHeadDim / 32][16] = {};
  for (int r = 0; r < n_q; ++r) {
    for (int b = 0; b < nb; ++b) {
      dqv[b][r] = iquantize32(q + int64_t{r} * ldq + b * 32, qq + b * 32);
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) {
        qt[b][i / 4][r * 4 + i % 4] = qq[b * 32 + i];
        sum += qq[b * 32 + i];
      }
      corr[b][r] = 128 * sum;
    }
  }
  const __m512i flip = _mm512_set1_epi32(int32_t(0x80808080u));
  const V vscale = vset1(scale);
  for_key_blocks<16>(
      ch, n_ch, row_bytes,
      [&](const char* kb, int j) {
        V acc[16];
        for (int k = 0; k < 16; ++k) acc[k] = vzero();
        for (int b = 0; b < nb; ++b) {
          __m512i is[16];
          for (int k = 0; k < 16; ++k) is[k] = _mm512_setzero_si512();
          const char* kv = kb + b * RowQ8::kBlockBytes + 2;
          for (int g = 0; g < 8; ++g) {
            const __m512i qv = _mm512_load_si512(qt[b][g]);
            for (int k = 0; k < 16; ++k) {
              int32_t k4;
              std::memcpy(&k4, kv + k * row_bytes + 4 * g, 4);
              is[k] = _mm512_dpbusd_epi32(is[k], _mm512_xor_si512(_mm512_set1_epi32(k4), flip), qv);
            }
          }
          const __m512i cb = _mm512_load_si512(corr[b]);
          const V dq = vload(dqv[b]);
          for (int k = 0; k < 16; ++k) {
            const V sk = {_mm512_cvtepi32_ps(_mm512_sub_epi32(is[k], cb))};
            const V w = vmul(vset1(RowQ8::scale(kb + k * row_bytes + b * RowQ8::kBlockBytes)), dq);
            acc[k] = vfma(sk, w, acc[k]);
          }
        }
        vtranspose(acc);
        for (int r = 0; r < n_q; ++r) vstore(scores + r * lds + j, vmul(acc[r], vscale));
      },
      [&](const char* kb, int n, int j) {
        const KvChunk rest{kb, nullptr, n};
        scores_int_block8<RowQ8>(q, n_q, ldq, &rest, 1, d, row_bytes, scale, scores + j, lds);
      });
}

// 8 registers of 16 int32 partial sums (key k: lanes 0-7 the 8 partials of its first block, 8-15
// of its second) reduced together, with no horizontal sum per key, into one register: lane
// 8 (k / 4) + 4 h + k % 4 holds block h of key k. Pairs of keys interleave within 128-bit lanes
// (unpack 32, then 64 bits), then the two 128-bit halves of each block are added.
inline __m512i reduce8_pairs(const __m512i* s) {
  __m512i t[4];
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(s[2 * i], s[2 * i + 1]),
                            _mm512_unpackhi_epi32(s[2 * i], s[2 * i + 1]));
  }
  const __m512i u0 = _mm512_add_epi32(_mm512_unpacklo_epi64(t[0], t[1]), _mm512_unpackhi_epi64(t[0], t[1]));
  const __m512i u1 = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2], t[3]), _mm512_unpackhi_epi64(t[2], t[3]));
  return _mm512_add_epi32(_mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)));
}

// q8_0 keys against 1-8 query rows (one query head per KV head, or a GQA group) with a key's two
// blocks (64 values) in one 512-bit register, offset to unsigned (xor 0x80) once for every row:
// one dpbusd per row and key gives 16 partial sums of k.q + 128 sum q, the second term cancelled
// by starting block h's lane 8 h at -128 sum q. 8 keys' partial sums are reduced together
// (reduce8_pairs); the key blocks' f16 scales are gathered in the same lane order. The integers
// are the exact k.q of the 8-key path, scaled by the key's scale times the query block's scale
// and added in block order as there (bit-identical). d a multiple of 64, at most kMaxIntHeadDim.
inline void scores_q8_keys(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                           size_t row_bytes, float scale, float* scores, int64_t lds) {
  constexpr int kPairs = kMaxIntHeadDim / 64;
  const int np = d / 64;
  alignas(64) int8_t qz[8][kPairs][64];
  alignas(64) float dqv[8][kPairs][16];
  alignas(64) int32_t cz[8][kPairs][16] = {};
  for (int r = 0; r < n_q; ++r) {
    for (int b = 0; b < 2 * np; ++b) {
      int8_t* qb = qz[r][b / 2] + 32 * (b % 2);
      const float dq = iquantize32(q + int64_t{r} * ldq + b * 32, qb);
      int32_t sum = 0;
      for (int i = 0; i < 32; ++i) sum += qb[i];
      cz[r][b / 2][8 * (b % 2)] = -128 * sum;
      for (int k = 0; k < 8; ++k) dqv[r][b / 2][8 * (k / 4) + 4 * (b % 2) + k % 4] = dq;
    }
  }
  alignas(64) int32_t ix[16];
  for (int k = 0; k < 8; ++k) {
    for (int h = 0; h < 2; ++h) ix[8 * (k / 4) + 4 * h + k % 4] = k * int(row_bytes) + h * int(RowQ8::kBlockBytes);
  }
  const __m512i sidx = _mm512_load_si512(ix);
  const __m512i flip = _mm512_set1_epi32(int32_t(0x80808080u));
  const __m512i first8 = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11);
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 acc[8];
  for_key_blocks<8>(
      ch, n_ch, row_bytes,
      [&](const char* kb, int j) {
        for (int p = 0; p < np; ++p) {
          const char* kp = kb + p * 2 * RowQ8::kBlockBytes;
          __m512i kz[8];
          for (int k = 0; k < 8; ++k) {
            const char* kr = kp + k * row_bytes + 2;
            const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kr));
            const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kr + RowQ8::kBlockBytes));
            kz[k] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(b0), b1, 1), flip);
          }
          const __m512 ks = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_i32gather_epi32(sidx, kp, 1)));
          for (int r = 0; r < n_q; ++r) {
            const __m512i qv = _mm512_load_si512(qz[r][p]), c0 = _mm512_load_si512(cz[r][p]);
            __m512i sums[8];
            for (int k = 0; k < 8; ++k) sums[k] = _mm512_dpbusd_epi32(c0, kz[k], qv);
            const __m512 sf = _mm512_cvtepi32_ps(reduce8_pairs(sums));
            const __m512 w = _mm512_mul_ps(ks, _mm512_load_ps(dqv[r][p]));
            // In the lanes of block 0 of the pair: acc + s w of block 0, then of block 1 (its
            // lanes moved over), fused as the 8-key path's acc += s * (scale * dq) compiles.
            const __m512 a = _mm512_fmadd_ps(sf, w, p == 0 ? _mm512_setzero_ps() : acc[r]);
            acc[r] = _mm512_fmadd_ps(_mm512_shuffle_f32x4(sf, sf, _MM_SHUFFLE(2, 3, 0, 1)),
                                     _mm512_shuffle_f32x4(w, w, _MM_SHUFFLE(2, 3, 0, 1)), a);
          }
        }
        for (int r = 0; r < n_q; ++r) {
          const __m512 o = _mm512_permutexvar_ps(first8, _mm512_mul_ps(acc[r], vscale));
          _mm256_storeu_ps(scores + r * lds + j, _mm512_castps512_ps256(o));
        }
      },
      [&](const char* kb, int n, int j) {
        const KvChunk rest{kb, nullptr, n};
        scores_int_block8<RowQ8>(q, n_q, ldq, &rest, 1, d, row_bytes, scale, scores + j, lds);
      });
}
#endif

template <class KB>  // RowQ8 or RowQ4
void attn_scores_int(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                     size_t row_bytes, float scale, float* scores, int64_t lds) {
  if (!int_key_scores(DType::kQ8_0, d) || n_q > kMaxGroup) {  // larger heads: widened in registers
    return attn_scores<KB>(q, n_q, ldq, ch, n_ch, d, row_bytes, scale, scores, lds);
  }
#ifdef MLKV_VNNI
  if constexpr (std::is_same_v<KB, RowQ8>) {
    // Groups of 9-16 rows over chunks of 16 keys or more; 1-8 rows over chunks of 8 or more (the
    // 8-key path below takes a shorter one whole).
    if (2 * n_q > 16 && n_q <= 16 &&
        std::all_of(ch, ch + n_ch, [](const KvChunk& c) { return c.n >= 16; })) {
      return scores_q8_lanes(q, n_q, ldq, ch, n_ch, d, row_bytes, scale, scores, lds);
    }
    if (n_q <= 8 && d % 64 == 0 && std::all_of(ch, ch + n_ch, [](const KvChunk& c) { return c.n >= 8; })) {
      return scores_q8_keys(q, n_q, ldq, ch, n_ch, d, row_bytes, scale, scores, lds);
    }
  }
#endif
  scores_int_block8<KB>(q, n_q, ldq, ch, n_ch, d, row_bytes, scale, scores, lds);
}

template <class KB>
void scores_int_block8(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d,
                       size_t row_bytes, float scale, float* scores, int64_t lds) {
  const int nb = d / 32;
  alignas(64) int8_t qq[kMaxGroup * kMaxIntHeadDim], aq[kMaxGroup * kMaxIntHeadDim];
  float dq[kMaxGroup * (kMaxIntHeadDim / 32)];
  for (int r = 0; r < n_q; ++r) {
    for (int b = 0; b < nb; ++b) dq[r * nb + b] = iquantize32(q + int64_t{r} * ldq + b * 32, qq + r * d + b * 32);
    for (int b = 0; b < nb; ++b) {
      const I8x32 a = iabs(iload32(qq + r * d + b * 32));
      std::memcpy(aq + r * d + b * 32, &a, 32);
    }
  }
  float ks[kMaxIntHeadDim / 32][8];  // the 8 keys' block scales
  for_key_blocks<8>(
      ch, n_ch, row_bytes,
      [&](const char* kb, int j) {
        for (int b = 0; b < nb; ++b) {
          for (int k = 0; k < 8; ++k) ks[b][k] = KB::scale(kb + k * row_bytes + b * KB::kBlockBytes);
        }
        for (int r = 0; r < n_q; ++r) {
          float acc[8] = {};
          for (int b = 0; b < nb; ++b) {
            const I8x32 qv = iload32(qq + r * d + b * 32), av = iload32(aq + r * d + b * 32);
            I32Sums t[8];
            for (int k = 0; k < 8; ++k) t[k] = idot(av, qv, KB::load(kb + k * row_bytes + b * KB::kBlockBytes));
            float s[8];
            isum8(t, s);
            const float w = dq[r * nb + b];
            for (int k = 0; k < 8; ++k) acc[k] += s[k] * (ks[b][k] * w);
          }
          float* out = scores + r * lds + j;
          for (int k = 0; k < 8; ++k) out[k] = acc[k] * scale;
        }
      },
      [&](const char* kb, int n, int j) {  // the last < 8 keys of a chunk, one at a time
        for (int i = 0; i < n; ++i) {
          const char* kr = kb + static_cast<size_t>(i) * row_bytes;
          for (int r = 0; r < n_q; ++r) {
            float acc = 0.0f;
            for (int b = 0; b < nb; ++b) {
              const char* blk = kr + b * KB::kBlockBytes;
              int32_t isum = 0;
              for (int e = 0; e < 32; ++e) isum += int32_t{qq[r * d + b * 32 + e]} * KB::value(blk, e);
              acc += static_cast<float>(isum) * (KB::scale(blk) * dq[r * nb + b]);
            }
            scores[r * lds + j + i] = acc * scale;
          }
        }
      });
}

// Value row j + kValuePrefetch (from the row vr of j) into L1, by address as prefetch_keys does
// for one chunk; or the next row from `ahead` into L2 (several chunks).
inline void prefetch_value_row(const char* vr, size_t row_bytes, AheadRows* ahead) {
  if (ahead) {
    ahead->fetch(row_bytes);
  } else {
    prefetch_lines(vr + kValuePrefetch * row_bytes, row_bytes);
  }
}

// out[0, NV * kLanes) (+)= sum_{j in [j0, j1)} p[j] V_j[c0, c0 + NV * kLanes). The first column
// slice (c0 = 0) fetches a row ahead per row read (prefetch_value_row).
template <int NV, class R>
void weighted_sum(const float* p, const char* Vm, size_t row_bytes, int c0, int j0, int j1,
                  float* out, bool first, AheadRows* ahead) {
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = first ? vzero() : vload(out + kLanes * v);
  if constexpr (std::is_same_v<R, RowQ8> || std::is_same_v<R, RowQ4>) {
    // Block formats: the block's scale folded into the weight, p[j] d_b, once per block of 32
    // values. c0 is a multiple of 8 kLanes: with kLanes >= 4 a multiple of 32, so a block's
    // vectors are consecutive from its start; with kLanes = 1 the NV <= 8 values from c0 lie in
    // one block (kPer = 32), so the weight computed at v = 0 serves them all.
    constexpr int kPer = kLanes >= 32 ? 1 : 32 / kLanes;  // vectors per block
    for (int j = j0; j < j1; ++j) {
      const char* vr = Vm + static_cast<size_t>(j) * row_bytes;
      if (c0 == 0) prefetch_value_row(vr, row_bytes, ahead);
      V w = vzero();
      for (int v = 0; v < NV; ++v) {
        if (v % kPer == 0) w = vset1(p[j] * R::block_scale(vr, c0 + kLanes * v));
        acc[v] = vfma(w, R::raw(vr, c0 + kLanes * v), acc[v]);
      }
    }
  } else {
    for (int j = j0; j < j1; ++j) {
      const V pj = vset1(p[j]);
      const char* vr = Vm + static_cast<size_t>(j) * row_bytes;
      if (c0 == 0) prefetch_value_row(vr, row_bytes, ahead);
      for (int v = 0; v < NV; ++v) acc[v] = vfma(pj, R::get(vr, c0 + kLanes * v), acc[v]);
    }
  }
  for (int v = 0; v < NV; ++v) vstore(out + kLanes * v, acc[v]);
}

template <class R>
void weighted_sum_any(int nv, const float* p, const char* Vm, size_t row_bytes, int c0, int j0,
                      int j1, float* out, bool first, AheadRows* ahead) {
  switch (nv) {
    case 1: return weighted_sum<1, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 2: return weighted_sum<2, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 3: return weighted_sum<3, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 4: return weighted_sum<4, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 5: return weighted_sum<5, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 6: return weighted_sum<6, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    case 7: return weighted_sum<7, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
    default: return weighted_sum<8, R>(p, Vm, row_bytes, c0, j0, j1, out, first, ahead);
  }
}

// Query rows in passes (the rows of a GQA/MQA group that read one KV head): out rows [0, NR) (ldo
// apart), columns [c0, c0 + NV kLanes), (+)= sum_{j in [j0, j1)} p[r ldp + j] V_j: each value
// row's NV vectors are read, and widened when quantized, once for all NR rows instead of once per
// row. NV NR <= 24 accumulators (of AVX-512's 32 registers; 12 of AVX2's 16): 4 vectors x 6 rows
// where the head allows, so that a pass reads whole 64-byte lines of each value row.
inline constexpr int kRowAccumulators = kLanes == 16 ? 24 : kLanes == 8 ? 12 : 16;

// pf (or null): rows to fetch into L2 meanwhile, one per key (the next block's, while a pass
// reads this block from L1, so that memory does not idle); or, over several chunks, a row per key
// from `ahead` (null: neither).
template <int NV, int NR, class R>
void weighted_sum_rows(const float* p, int64_t ldp, const char* Vm, size_t row_bytes, int c0, int j0,
                       int j1, float* out, int ldo, bool first, const char* pf, AheadRows* ahead) {
  V acc[NR][NV];
  for (int r = 0; r < NR; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = first ? vzero() : vload(out + int64_t{r} * ldo + c0 + kLanes * v);
  }
  for (int j = j0; j < j1; ++j) {
    const char* vr = Vm + static_cast<size_t>(j) * row_bytes;
    if (pf) prefetch_lines<true>(pf + static_cast<size_t>(j - j0) * row_bytes, row_bytes);
    if (ahead) ahead->fetch(row_bytes);
    V vv[NV];
    if constexpr (std::is_same_v<R, RowQ8> || std::is_same_v<R, RowQ4>) {
      // One scale per block (as in weighted_sum: c0 is a multiple of NV kLanes), not per vector.
      constexpr int kPer = kLanes >= 32 ? 1 : 32 / kLanes;
      V sb = vzero();
      for (int v = 0; v < NV; ++v) {
        if (v % kPer == 0) sb = vset1(R::block_scale(vr, c0 + kLanes * v));
        vv[v] = vmul(sb, R::raw(vr, c0 + kLanes * v));
      }
    } else {
      for (int v = 0; v < NV; ++v) vv[v] = R::get(vr, c0 + kLanes * v);
    }
    for (int r = 0; r < NR; ++r) {
      const V w = vset1(p[r * ldp + j]);
      for (int v = 0; v < NV; ++v) acc[r][v] = vfma(w, vv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < NR; ++r) {
    for (int v = 0; v < NV; ++v) vstore(out + int64_t{r} * ldo + c0 + kLanes * v, acc[r][v]);
  }
}

template <int NV, class R, int N = kRowAccumulators / NV>
void weighted_sum_rows_any(int nr, const float* p, int64_t ldp, const char* Vm, size_t row_bytes,
                           int c0, int j0, int j1, float* out, int ldo, bool first, const char* pf,
                           AheadRows* ahead) {
  if constexpr (N >= 1) {
    if (nr == N) {
      return weighted_sum_rows<NV, N, R>(p, ldp, Vm, row_bytes, c0, j0, j1, out, ldo, first, pf, ahead);
    }
    return weighted_sum_rows_any<NV, R, N - 1>(nr, p, ldp, Vm, row_bytes, c0, j0, j1, out, ldo, first,
                                               pf, ahead);
  }
}

// Passes of rows and column slices of NV vectors over one block of keys [j0, j1); the last
// pass of the first slice fetches the rows from next (null: none) into L2, as many as this block,
// or as many rows from `ahead` (several chunks).
template <int NV, class R>
void values_rows(const float* p, int n_q, int64_t ldp, const char* Vm, size_t row_bytes, int d,
                 int j0, int j1, float* out, int ldo, bool first, const char* next, AheadRows* ahead) {
  constexpr int kRows = kRowAccumulators / NV;
  for (int cc = 0; cc < d; cc += NV * kLanes) {
    for (int r0 = 0; r0 < n_q; r0 += kRows) {
      const int nr = n_q - r0 < kRows ? n_q - r0 : kRows;
      const bool last = cc == 0 && r0 + nr >= n_q;
      weighted_sum_rows_any<NV, R>(nr, p + r0 * ldp, ldp, Vm, row_bytes, cc, j0, j1,
                                   out + int64_t{r0} * ldo, ldo, first, last ? next : nullptr,
                                   last ? ahead : nullptr);
    }
  }
}

// out[r * ldo + i] = sum_j p[r * ldp + j] V_j[i] over the chunks' positions in order (writes).
// Two or more query rows go through weighted_sum_rows (each value vector read once per pass of
// rows), one row through weighted_sum (up to 8 vectors of a row at a time).
template <class R>
void attn_values(const float* p, int n_q, int64_t ldp, const KvChunk* ch, int n_ch, int d,
                 size_t row_bytes, float* out, int ldo) {
  if (d % kLanes != 0) {  // head sizes that are not a multiple of the vector width: plain loops
    for (int r = 0; r < n_q; ++r) {
      float* o = out + int64_t{r} * ldo;
      for (int i = 0; i < d; ++i) o[i] = 0.0f;
      for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
        const char* Vm = static_cast<const char*>(ch[c].v);
        for (int j = 0; j < ch[c].n; ++j) {
          const float pj = p[r * ldp + off + j];
          for (int i = 0; i < d; ++i) o[i] += pj * R::get1(Vm + static_cast<size_t>(j) * row_bytes, i);
        }
      }
    }
    return;
  }
  // Over several chunks (a paged cache) rows are fetched from a cursor in the order they are read.
  AheadRows ahead(ch, n_ch, false, row_bytes, n_q >= 2 ? kValueBlock : kValuePrefetch);
  AheadRows* pf = n_ch > 1 ? &ahead : nullptr;
  if (n_q >= 2 && d % (2 * kLanes) == 0) {
    for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
      const char* Vm = static_cast<const char*>(ch[c].v);
      for (int j0 = 0; j0 < ch[c].n; j0 += kValueBlock) {
        const int j1 = ch[c].n < j0 + kValueBlock ? ch[c].n : j0 + kValueBlock;
        const bool first = off == 0 && j0 == 0;
        // The next block's rows, while this one is read from L1 (not past the chunk's end).
        const char* next = !pf && j1 + (j1 - j0) <= ch[c].n ? Vm + static_cast<size_t>(j1) * row_bytes
                                                            : nullptr;
        // Quantized rows are widened once per pass of rows: a group of more rows than a 4-vector
        // pass holds goes in 2-vector passes of twice the rows (each vector widened once).
        constexpr bool kWiden = std::is_same_v<R, RowQ8> || std::is_same_v<R, RowQ4>;
        if (d % (4 * kLanes) == 0 && !(kWiden && n_q > kRowAccumulators / 4)) {
          values_rows<4, R>(p + off, n_q, ldp, Vm, row_bytes, d, j0, j1, out, ldo, first, next, pf);
        } else {
          values_rows<2, R>(p + off, n_q, ldp, Vm, row_bytes, d, j0, j1, out, ldo, first, next, pf);
        }
      }
    }
    return;
  }
  for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
    const char* Vm = static_cast<const char*>(ch[c].v);
    for (int j0 = 0; j0 < ch[c].n; j0 += kValueBlock) {
      const int j1 = ch[c].n < j0 + kValueBlock ? ch[c].n : j0 + kValueBlock;
      for (int cc = 0; cc < d; cc += 8 * kLanes) {
        const int nv = (d - cc) / kLanes < 8 ? (d - cc) / kLanes : 8;
        for (int r = 0; r < n_q; ++r) {
          // One pass over the rows fetches (the first row's; the cursor reads each row once).
          weighted_sum_any<R>(nv, p + r * ldp + off, Vm, row_bytes, cc, j0, j1,
                              out + int64_t{r} * ldo + cc, off == 0 && j0 == 0, r == 0 ? pf : nullptr);
        }
      }
    }
  }
}

// n_rows rows of head_dim values in format R (row_bytes apart) as f32 [n_rows, d].
template <class R>
void rows_to_f32(const char* src, size_t row_bytes, int n_rows, int d, float* dst) {
  for (int j = 0; j < n_rows; ++j) {
    const char* row = src + static_cast<size_t>(j) * row_bytes;
    float* out = dst + int64_t{j} * d;
    int i = 0;
    if (d % kLanes == 0) {
      for (; i < d; i += kLanes) vstore(out + i, R::get(row, i));
    }
    for (; i < d; ++i) out[i] = R::get1(row, i);
  }
}
