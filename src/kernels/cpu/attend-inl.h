// Decode attention (kernels.h: attend_*), written once over the vector type V: a few query rows
// that read the same KV head (the query heads of one GQA/MQA group at one position) against keys
// and values in the cache, f32 or f16, given as contiguous chunks of positions (one chunk when the
// sequence's cache blocks are consecutive, several for a paged cache).
//
// Scores go 8 keys at a time: 8 accumulators of d-wide dot products, reduced together (vsum8, no
// horizontal sum per key), the 8 keys' rows staying in L1 while every query row of the group uses
// them; the next 8 keys are prefetched meanwhile. The weighted sum of values runs over blocks of
// keys and slices of 8 vectors of d, with the slice's accumulators in registers, so each value
// row is read from L1/L2 once per query row and from memory once per group. The softmax
// normalisation is folded into the output rows (d wide) instead of the probabilities (len wide).

inline constexpr int kValueBlock = 128;  // keys per block of the value sum (32 KiB f32 at d = 64)

template <typename E>
float dot_any(const float* q, const E* k, int d) {
  float s = 0;
  for (int i = 0; i < d; ++i) s += q[i] * load1(k + i);
  return s;
}

// scores[r * lds + j] = scale * q_r . K_j for r < n_q, j < len. d % kLanes == 0.
template <typename E>
void scores_block8(const float* q, int n_q, int ldq, const E* K, int len, int d, float scale,
                   float* scores, int64_t lds) {
  int j0 = 0;
  for (; j0 + 8 <= len; j0 += 8) {
    const E* kb = K + int64_t{j0} * d;
    for (int64_t o = 0; o < int64_t{8} * d * int64_t(sizeof(E)); o += 64) {
      vprefetch(reinterpret_cast<const char*>(kb + 8 * d) + o);
    }
    for (int r = 0; r < n_q; ++r) {
      const float* qr = q + int64_t{r} * ldq;
      V acc[8];
      for (int k = 0; k < 8; ++k) acc[k] = vzero();
      for (int c = 0; c < d; c += kLanes) {
        const V qv = vload(qr + c);
        for (int k = 0; k < 8; ++k) acc[k] = vfma(qv, vload(kb + int64_t{k} * d + c), acc[k]);
      }
      float* out = scores + r * lds + j0;
      vsum8(acc, out);
      for (int k = 0; k < 8; ++k) out[k] *= scale;
    }
  }
  for (; j0 < len; ++j0) {
    for (int r = 0; r < n_q; ++r) {
      scores[r * lds + j0] = scale * dot_any(q + int64_t{r} * ldq, K + int64_t{j0} * d, d);
    }
  }
}

// out[0, NV * kLanes) (+)= sum_{j in [j0, j1)} p[j] V[j, 0, NV * kLanes); V rows have stride d.
template <int NV, typename E>
void weighted_sum(const float* p, const E* Vm, int j0, int j1, int d, float* out, bool first) {
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = first ? vzero() : vload(out + kLanes * v);
  for (int j = j0; j < j1; ++j) {
    const V pj = vset1(p[j]);
    const E* vr = Vm + int64_t{j} * d;
    for (int v = 0; v < NV; ++v) acc[v] = vfma(pj, vload(vr + kLanes * v), acc[v]);
  }
  for (int v = 0; v < NV; ++v) vstore(out + kLanes * v, acc[v]);
}

template <typename E>
void weighted_sum_any(int nv, const float* p, const E* Vm, int j0, int j1, int d, float* out,
                      bool first) {
  switch (nv) {
    case 1: return weighted_sum<1>(p, Vm, j0, j1, d, out, first);
    case 2: return weighted_sum<2>(p, Vm, j0, j1, d, out, first);
    case 3: return weighted_sum<3>(p, Vm, j0, j1, d, out, first);
    case 4: return weighted_sum<4>(p, Vm, j0, j1, d, out, first);
    case 5: return weighted_sum<5>(p, Vm, j0, j1, d, out, first);
    case 6: return weighted_sum<6>(p, Vm, j0, j1, d, out, first);
    case 7: return weighted_sum<7>(p, Vm, j0, j1, d, out, first);
    default: return weighted_sum<8>(p, Vm, j0, j1, d, out, first);
  }
}

template <typename E>
void attend(const float* q, int n_q, int ldq, const KvChunk* ch, int n_ch, int d, float scale,
            float* out, int ldo, float* scores) {
  int len = 0;
  for (int c = 0; c < n_ch; ++c) len += ch[c].n;
  if (d % kLanes != 0) {  // head sizes that are not a multiple of the vector width: plain loops
    for (int r = 0; r < n_q; ++r) {
      float* s = scores + int64_t{r} * len;
      int off = 0;
      for (int c = 0; c < n_ch; ++c) {
        const E* K = static_cast<const E*>(ch[c].k);
        for (int j = 0; j < ch[c].n; ++j) s[off + j] = scale * dot_any(q + int64_t{r} * ldq, K + int64_t{j} * d, d);
        off += ch[c].n;
      }
      const float inv = 1.0f / exp_sub_sum(s, len, max_n(s, len));
      float* o = out + int64_t{r} * ldo;
      for (int i = 0; i < d; ++i) o[i] = 0.0f;
      off = 0;
      for (int c = 0; c < n_ch; ++c) {
        const E* Vm = static_cast<const E*>(ch[c].v);
        for (int j = 0; j < ch[c].n; ++j) {
          for (int i = 0; i < d; ++i) o[i] += s[off + j] * inv * load1(Vm + int64_t{j} * d + i);
        }
        off += ch[c].n;
      }
    }
    return;
  }
  for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
    scores_block8(q, n_q, ldq, static_cast<const E*>(ch[c].k), ch[c].n, d, scale, scores + off, len);
  }
  float inv[kMaxGroup];
  for (int r = 0; r < n_q; ++r) {
    float* s = scores + int64_t{r} * len;
    inv[r] = 1.0f / exp_sub_sum(s, len, max_n(s, len));
  }
  for (int c = 0, off = 0; c < n_ch; off += ch[c].n, ++c) {
    const E* Vm = static_cast<const E*>(ch[c].v);
    for (int j0 = 0; j0 < ch[c].n; j0 += kValueBlock) {
      const int j1 = ch[c].n < j0 + kValueBlock ? ch[c].n : j0 + kValueBlock;
      for (int cc = 0; cc < d; cc += 8 * kLanes) {
        const int nv = (d - cc) / kLanes < 8 ? (d - cc) / kLanes : 8;
        for (int r = 0; r < n_q; ++r) {
          weighted_sum_any(nv, scores + int64_t{r} * len + off, Vm + cc, j0, j1, d,
                           out + int64_t{r} * ldo + cc, off == 0 && j0 == 0);
        }
      }
    }
  }
  for (int r = 0; r < n_q; ++r) scale_n(out + int64_t{r} * ldo, d, inv[r]);
}
