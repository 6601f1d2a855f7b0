// Attention against the KV cache on the CPU (kernels/ops.h: kv_store, attention_cached), for
// every sharing scheme. Work is split over (run, group of query heads) items. Query head h reads
// KV head h / (n_head / n_head_kv) of the slot. Keys are read as stored, except when a reader
// needs rotated keys from a slot that stores raw ones (the owner under pre sharing): it rotates a
// copy. Long runs (prefill) use two GEMMs per head over the keys and values gathered into f32
// scratch (no copy when the cache is f32, contiguous and needs no rotation); short runs (decode) go
// to the attend kernel, one call per group of query heads that share a KV head, reading the cache
// rows directly, chunk by chunk. Over q8_0 / q4_0 keys read as stored the attend kernel takes
// integer dot products with the query rounded per block (kernels.h: int_key_scores), and the GEMM
// path rounds the query the same way. Keys stored Hadamard-rotated (KvSlotView::k_hadamard) meet
// a query rotated the same way, or are rotated back where a reader applies the rotary itself.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/check.h"
#include "core/half.h"
#include "core/quant.h"
#include "kernels/blas/blas.h"
#include "kernels/cpu/kernels.h"
#include "kernels/ops.h"

namespace mlkv::ops {

namespace {

constexpr int kGemmMinRows = 16;    // runs at least this long use the GEMM path
constexpr int kGemmRowBlock = 128;  // rows per score block (bounds the scratch to block x ctx)

struct Scratch {
  std::vector<float> keys, values, scores, query, qscale, qrot, krow;
  std::vector<int8_t> qi;
  std::vector<KvChunk> chunks, visible;
  std::vector<int32_t> pos;
  float* grow(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

// Rows [0, len) of the chunks (keys or values) as one f32 array [len, d], widened from the rows'
// format (this head's rows only, for the prefill GEMMs); the cache memory itself when it already
// is that.
const float* gather_f32(const std::vector<KvChunk>& ch, bool keys, DType dt, int len, int d,
                        std::vector<float>& buf_vec, Scratch& s, bool force_copy) {
  if (!force_copy && dt == DType::kF32 && ch.size() == 1) {
    return static_cast<const float*>(keys ? ch[0].k : ch[0].v);
  }
  float* buf = s.grow(buf_vec, size_t(len) * d);
  const auto widen = cpu::kernels().rows_to_f32[cpu::kv_format_index(dt)];
  const size_t rb = dtype_row_bytes(dt, d);
  size_t off = 0;
  for (const KvChunk& c : ch) {
    widen(static_cast<const char*>(keys ? c.k : c.v), rb, c.n, d, buf + off);
    off += size_t(c.n) * d;
  }
  return buf;
}

// Keys [0, len) of one KV head as f32, rotated when asked. Keys stored Hadamard-rotated
// (hadamard) come back as stored when not rotated (the caller rotates the query), and are rotated
// back (H is its own inverse) before the rotary when they are.
const float* keys_f32(const std::vector<KvChunk>& ch, DType dt, int len, int d, bool rotate,
                      bool hadamard, const RopeTable<float>& rt, Scratch& s) {
  const float* K = gather_f32(ch, true, dt, len, d, s.keys, s, rotate);
  if (rotate) {
    if (hadamard) hadamard32(s.keys.data(), int64_t{len} * d);
    s.pos.resize(static_cast<size_t>(len));
    for (int j = 0; j < len; ++j) s.pos[static_cast<size_t>(j)] = j;
    rope_forward<float>(s.keys.data(), len, 1, d, s.pos.data(), rt);
  }
  return K;
}

// n rows of d query values (ldq apart) times the keys' Hadamard rotation: [n, d] in s.qrot.
const float* hadamard_rows(const float* q, int ldq, int n, int d, Scratch& s) {
  float* out = s.grow(s.qrot, size_t(n) * d);
  for (int t = 0; t < n; ++t) std::memcpy(out + int64_t{t} * d, q + int64_t{t} * ldq, size_t(d) * 4);
  hadamard32(out, int64_t{n} * d);
  return out;
}

// n rows of d query values (ldq apart) as quantize_query_q8 rounds them: [n, d] in scratch.
const float* round_query_rows(const float* q, int ldq, int n, int d, Scratch& s) {
  float* out = s.grow(s.query, size_t(n) * d);
  s.qi.resize(static_cast<size_t>(d));
  s.qscale.resize(static_cast<size_t>(d / kQuantBlock));
  for (int t = 0; t < n; ++t) {
    cpu::kernels().quantize_q8(q + int64_t{t} * ldq, s.qi.data(), s.qscale.data(), d);
    for (int i = 0; i < d; ++i) {
      out[int64_t{t} * d + i] = s.qscale[static_cast<size_t>(i / kQuantBlock)] * s.qi[static_cast<size_t>(i)];
    }
  }
  return out;
}

// Rows of one run for one head via GEMM: S = Q K^T * scale, causal mask, softmax, O = S V.
void head_gemm(const float* q, int ldq, const float* K, const float* V, int n_rows, int pos0, int d,
               float scale, float* out, int ldo, Scratch& s) {
  for (int r0 = 0; r0 < n_rows; r0 += kGemmRowBlock) {
    const int rows = std::min(kGemmRowBlock, n_rows - r0);
    const int len = pos0 + r0 + rows;  // keys visible to the last row of the block
    float* S = s.grow(s.scores, size_t(rows) * len);
    blas::gemm(false, true, rows, len, d, scale, q + int64_t{r0} * ldq, ldq, K, d, 0.0f, S, len);
    for (int t = 0; t < rows; ++t) {
      float* row = S + int64_t{t} * len;
      const int visible = pos0 + r0 + t + 1;
      std::fill(row + visible, row + len, -INFINITY);
    }
    softmax_rows(S, rows, len);
    blas::gemm(false, false, rows, d, len, 1.0f, S, len, V, d, 0.0f, out + int64_t{r0} * ldo, ldo);
  }
}

// A unit of work: query heads [h0, h0 + nh) of one run. Decode items group the query heads that
// read one KV head (split further when there are too few items to keep every thread busy); GEMM
// items (long runs) are one head each.
struct Item {
  int run, h0, nh;
};

}  // namespace

namespace {

// One row of d values from f32 into a cache format: the format's definition (core/half.h,
// core/quant.h), the same on every instruction-set path.
void encode_row(DType dt, const float* src, char* dst, int d) {
  switch (dt) {
    case DType::kF32: std::memcpy(dst, src, size_t(d) * 4); return;
    case DType::kF16: f32_to_f16_n(src, reinterpret_cast<uint16_t*>(dst), static_cast<size_t>(d)); return;
    case DType::kBF16: f32_to_bf16_n(src, reinterpret_cast<uint16_t*>(dst), static_cast<size_t>(d)); return;
    case DType::kQ8_0: quantize_row_q8_0(src, dst, d); return;
    case DType::kQ4_0: quantize_row_q4_0(src, dst, d); return;
    default: MLKV_CHECK(false && "not a KV-cache element format");
  }
}

}  // namespace

void kv_store(const KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n, const float* k,
              const float* v) {
  const int g = slot.n_head_kv, d = slot.head_dim;
  std::vector<float> rotated(slot.k_hadamard ? size_t(d) : 0);  // a key row times H
  for (int i = 0; i < n; ++i) {
    for (int h = 0; h < g; ++h) {
      const float* kr = k + (int64_t{i} * g + h) * d;
      if (slot.k_hadamard) {
        std::memcpy(rotated.data(), kr, size_t(d) * 4);
        hadamard32(rotated.data(), d);
        kr = rotated.data();
      }
      encode_row(slot.k_dtype, kr, slot.k_row(seq[i], h, pos[i]), d);
      encode_row(slot.v_dtype, v + (int64_t{i} * g + h) * d, slot.v_row(seq[i], h, pos[i]), d);
    }
  }
}

void attention_cached(const KvSlotView& slot, const std::vector<AttnRun>& runs, const float* q,
                      int n_head, bool rotate_keys, const RopeTable<float>& rt, float* out) {
  const int H = n_head, G = slot.n_head_kv, d = slot.head_dim, rep = H / G;
  MLKV_CHECK(H % G == 0);
  const int ldq = H * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  int n_decode = 0;
  for (const AttnRun& r : runs) n_decode += r.n_rows < kGemmMinRows;
  const int want = 2 * omp_get_max_threads();
  const int split = n_decode * G >= want
                        ? 1
                        : std::min(rep, (want + n_decode * G - 1) / std::max(1, n_decode * G));
  const int per = (rep + split - 1) / split;
  std::vector<Item> items;
  for (int ir = 0; ir < static_cast<int>(runs.size()); ++ir) {
    const bool gemm = runs[static_cast<size_t>(ir)].n_rows >= kGemmMinRows;
    for (int g = 0; g < G; ++g) {
      for (int h = g * rep; h < (g + 1) * rep; h += gemm ? 1 : per) {
        items.push_back({ir, h, gemm ? 1 : std::min(per, (g + 1) * rep - h)});
      }
    }
  }

#pragma omp parallel
  {
    Scratch s;
#pragma omp for schedule(dynamic, 1)
    for (size_t ii = 0; ii < items.size(); ++ii) {
      const Item& it = items[ii];
      const AttnRun& r = runs[static_cast<size_t>(it.run)];
      const int kvh = it.h0 / rep;
      const int len = r.pos0 + r.n_rows;
      const float* qh = q + int64_t{r.row0} * ldq + int64_t{it.h0} * d;
      float* oh = out + int64_t{r.row0} * ldq + int64_t{it.h0} * d;
      slot.chunks(r.seq, kvh, len, &s.chunks);
      if (r.n_rows >= kGemmMinRows) {
        const float* K = keys_f32(s.chunks, slot.k_dtype, len, d, rotate_keys, slot.k_hadamard, rt, s);
        const float* V = gather_f32(s.chunks, false, slot.v_dtype, len, d, s.values, s, false);
        const float* qk = qh;  // the query rows as the stored keys want them
        int ldk = ldq;
        if (!rotate_keys && slot.k_hadamard) {
          qk = hadamard_rows(qh, ldq, r.n_rows, d, s);
          ldk = d;
        }
        if (!rotate_keys && cpu::int_key_scores(slot.k_dtype, d)) {
          // Decode reads these keys by integer dot products with the query rounded per block of
          // 32; prefill rounds it by the same rule, so that both see the same query values (up to
          // a query that prefill's GEMM and decode's GEMV compute a rounding apart).
          qk = round_query_rows(qk, ldk, r.n_rows, d, s);
          ldk = d;
        }
        head_gemm(qk, ldk, K, V, r.n_rows, r.pos0, d, scale, oh, ldq, s);
        continue;
      }
      float* sc = s.grow(s.scores, size_t(std::min(it.nh, kMaxAttendGroup)) * len);
      if (rotate_keys) {
        // Rotated keys in f32 scratch; values read as stored, chunk by chunk.
        const float* K = keys_f32(s.chunks, slot.k_dtype, len, d, true, slot.k_hadamard, rt, s);
        std::vector<KvChunk>& vis = s.visible;
        for (int t = 0; t < r.n_rows; ++t) {
          const int n_vis = r.pos0 + t + 1;
          vis.clear();
          for (int c = 0, p = 0; c < static_cast<int>(s.chunks.size()) && p < n_vis; ++c) {
            const KvChunk& ch = s.chunks[static_cast<size_t>(c)];
            vis.push_back({K + int64_t{p} * d, ch.v, std::min(ch.n, n_vis - p)});
            p += ch.n;
          }
          attend_chunks(qh + int64_t{t} * ldq, it.nh, d, vis.data(), static_cast<int>(vis.size()),
                        DType::kF32, slot.v_dtype, d, scale, oh + int64_t{t} * ldq, d, sc);
        }
      } else {
        std::vector<KvChunk>& vis = s.visible;
        for (int t = 0; t < r.n_rows; ++t) {
          // The chunks cut at this row's last visible position.
          const int n_vis = r.pos0 + t + 1;
          vis.clear();
          for (int c = 0, p = 0; c < static_cast<int>(s.chunks.size()) && p < n_vis; ++c) {
            const KvChunk& ch = s.chunks[static_cast<size_t>(c)];
            vis.push_back({ch.k, ch.v, std::min(ch.n, n_vis - p)});
            p += ch.n;
          }
          // Hadamard-rotated keys: the group's query heads rotated the same way (one row).
          const float* qt = slot.k_hadamard ? hadamard_rows(qh + int64_t{t} * ldq, d, it.nh, d, s)
                                            : qh + int64_t{t} * ldq;
          attend_chunks(qt, it.nh, d, vis.data(), static_cast<int>(vis.size()), slot.k_dtype,
                        slot.v_dtype, d, scale, oh + int64_t{t} * ldq, d, sc);
        }
      }
    }
  }
}

}  // namespace mlkv::ops
