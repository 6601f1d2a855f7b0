// Plain data shared by the op signatures (kernels/ops.h), the scalar reference (kernels/ref/) and
// the CPU kernels: rotary tables, attention dimensions, one AdamW step's hyper-parameters.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace mlkv::ops {

// theta^(-2i / n_rot) for i < n_rot / 2, in double (rotary inverse frequencies before scaling).
std::vector<double> rope_inv_freq(int n_rot, double theta);

// cos and sin of pos * inv_freq[i] for pos in [0, n_pos), i in [0, n_rot / 2): [n_pos, n_rot / 2].
// Computed in double and rounded once, so long positions keep full accuracy.
template <typename T>
struct RopeTable {
  int n_rot = 0, n_pos = 0;
  std::vector<T> cos, sin;
  // inv_freq: the n_rot / 2 inverse frequencies (ModelConfig::rope_inv_freq, scaling applied).
  void build(int n_rot, int n_pos, const std::vector<double>& inv_freq);
};

// Causal attention over whole sequences (training): q [batch * ctx, n_head, head_dim], k and v
// [batch * ctx, n_head_kv, head_dim]; row b * ctx + s is position s of sequence b and sees keys
// 0..s of its sequence; query head h reads KV head h / (n_head / n_head_kv); scale 1 / sqrt(d).
struct AttnDims {
  int batch = 0, ctx = 0, n_head = 0, n_head_kv = 0, head_dim = 0;
  int64_t n_rows() const { return int64_t{batch} * ctx; }
};

// One AdamW update (torch.optim.AdamW's formula; train/optimizer.h):
//   g' = g grad_scale, m = b1 m + (1 - b1) g', v = b2 v + (1 - b2) g'^2,
//   p -= lr (m bias_corr1 / (sqrt(v bias_corr2) + eps) + weight_decay p).
struct AdamWStep {
  float beta1, beta2, eps;
  float lr;            // learning rate of this step
  float weight_decay;  // 0 for parameters that are not decayed
  float bias_corr1;    // 1 / (1 - beta1^t)
  float bias_corr2;    // 1 / (1 - beta2^t)
  float grad_scale;    // gradients are multiplied by this first (clipping)
};

// The rows of one sequence inside a batch of tokens (inference): attention work of one prefill
// or decode run.
struct AttnRun {
  int seq;     // cache sequence slot
  int row0;    // first row in the batch
  int n_rows;  // consecutive rows
  int pos0;    // position of the first row
};

// A contiguous stretch of one KV head's cache: n positions of keys and values, rows of d_head
// elements back to back.
struct KvChunk {
  const void* k;
  const void* v;
  int n;
};

// One owner slot of a KV cache as the cache lays it out (kv/kv_cache.h), for the attention and
// store ops: per KV head a region of blocks of block_size positions, each position a row of
// head_dim values in the keys' or the values' element format (F32, F16, BF16, Q8_0, Q4_0; keys and
// values may differ); a sequence's logical blocks map to physical blocks through its block table
// (block_tables[seq][i] holds positions i * block_size ...). Pointers are on the cache's device.
struct KvSlotView {
  DType k_dtype = DType::kF32, v_dtype = DType::kF32;
  int n_head_kv = 0, head_dim = 0, block_size = 0;
  size_t k_row_bytes = 0, v_row_bytes = 0;      // bytes of one position's head_dim values
  size_t k_head_stride = 0, v_head_stride = 0;  // bytes between consecutive KV heads' regions
  char* k = nullptr;  // this slot's keys: head h at k + h * k_head_stride
  char* v = nullptr;
  const std::vector<int32_t>* block_tables = nullptr;  // [n_seq]
  // Keys are stored after rotary (true), or before it (pre sharing: consumers read them raw; a
  // reader that needs them rotated rotates a copy).
  bool keys_rotated = true;
  // Keys stored as hadamard32 (core/quant.h) of the above, per block of 32 (q8_0 / q4_0 keys,
  // CPU): a reader multiplies them by the query rotated the same way, or rotates them back.
  bool k_hadamard = false;

  // Row index of (seq, pos) within a head's region.
  size_t row(int seq, int pos) const {
    const int32_t b = block_tables[seq][static_cast<size_t>(pos / block_size)];
    return static_cast<size_t>(b) * block_size + static_cast<size_t>(pos % block_size);
  }
  char* k_row(int seq, int head, int pos) const {
    return k + static_cast<size_t>(head) * k_head_stride + row(seq, pos) * k_row_bytes;
  }
  char* v_row(int seq, int head, int pos) const {
    return v + static_cast<size_t>(head) * v_head_stride + row(seq, pos) * v_row_bytes;
  }
  // The contiguous stretches covering positions [0, len) of (seq, head), consecutive physical
  // blocks merged (a cache whose sequences own consecutive blocks gives one chunk).
  void chunks(int seq, int head, int len, std::vector<KvChunk>* out) const {
    out->clear();
    for (int p = 0; p < len;) {
      int n = std::min(block_size - p % block_size, len - p);
      const char* kp = k_row(seq, head, p);
      if (!out->empty() && static_cast<const char*>(out->back().k) +
                                   static_cast<size_t>(out->back().n) * k_row_bytes == kp) {
        out->back().n += n;
      } else {
        out->push_back({kp, v_row(seq, head, p), n});
      }
      p += n;
    }
  }
};

}  // namespace mlkv::ops
