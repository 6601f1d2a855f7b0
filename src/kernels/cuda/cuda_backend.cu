// The CUDA backend: Backend<float> (kernels/backend.h) on one GPU. Activations and weights live in
// device memory (cudaMalloc through the allocator registered for Device::kCuda); products go to
// cuBLAS (f32 weights: SGEMM with f32 math, no TF32; f16/bf16 weights: the activations are
// rounded to the weights' type and multiplied with f32 accumulation); the other ops are the
// kernels of cuda_ops.h. Everything runs in order on one stream. Host arrays that the interface
// passes (token ids, positions, block tables, targets) are staged through pinned buffers, once per
// distinct content, so a decode step uploads its positions once, not once per layer.
//
// Recorded steps (Backend::begin_capture ...): a decode step can be captured into a CUDA graph and
// replayed. While recording, host arrays go to a fixed arena (pinned and device halves, one copy
// at the graph's root) instead of the uploader, scratch may not grow and ops that cannot be
// recorded (cuBLAS products, training ops, synchronisations) fail the recording. Replays first run
// every op's host work in staging mode, which writes the arrays to the arena and compares each
// op's launch parameters (device pointers, sizes, flags) with the recorded ones: any difference
// and the step runs normally instead.
//
// The KV cache on the GPU holds f32, f16 or bf16 rows (the quantized formats are CPU-only for now
// and are refused with an error). Decode and prefill attention against the cache
// (attention_cached) read each KV head once per group of query heads, split along the context in
// chunks whose partial softmax results are combined afterwards (flash-decoding): the kernels are
// in attention_cached.cu, the few-row products in gemv.cu; this file sizes and stages their work.
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "core/device.h"
#include "kernels/cuda/cuda_ops.h"

namespace mlkv::cuda {

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in ", what, ": ", cudaGetErrorString(e));
}

void check_launch(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) fail("CUDA kernel ", kernel, " failed to launch: ", cudaGetErrorString(e));
}

namespace {

void cublas_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error in ", what, ": status ", static_cast<int>(s));
}

// ---- the allocator of Device::kCuda ----

class CudaAllocator final : public DeviceAllocator {
 public:
  explicit CudaAllocator(cudaStream_t s) : s_(s) {}
  void* allocate(size_t bytes) override {
    void* p = nullptr;
    if (bytes == 0) return nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error state of a failed allocation
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory: ", bytes, " bytes requested, ", free_b, " of ", total_b, " free");
    }
    cuda_check(cudaMemsetAsync(p, 0, bytes, s_), "cudaMemset");
    return p;
  }
  void deallocate(void* p, size_t) noexcept override {
    if (p == nullptr) return;
    // Work queued on the stream may still read p.
    cudaStreamSynchronize(s_);
    cudaFree(p);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s_), "device copy");
  }
  void to_host(void* host, const void* src, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, s_), "copy to host");
    cuda_check(cudaStreamSynchronize(s_), "copy to host");
  }
  void from_host(void* dst, const void* host, size_t bytes) override {
    cuda_check(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, s_), "copy to GPU");
    cuda_check(cudaStreamSynchronize(s_), "copy to GPU");
  }

 private:
  cudaStream_t s_;
};

// A device buffer that only grows (scratch of one purpose).
class DeviceBuffer {
 public:
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  // The buffer if it holds `bytes` already, else null (never allocates: for recorded steps).
  void* fixed(size_t bytes) const { return bytes <= cap_ ? p_ : nullptr; }
  void* get(size_t bytes, cudaStream_t s) {
    if (bytes > cap_) {
      if (p_) {
        cuda_check(cudaStreamSynchronize(s), "scratch release");
        cudaFree(p_);
        p_ = nullptr;
        cap_ = 0;
      }
      cuda_check(cudaMalloc(&p_, bytes), "scratch allocation");
      cap_ = bytes;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Host arrays staged to the device by purpose; an upload whose bytes equal the last one of its
// purpose reuses the device copy (stream order keeps earlier readers safe).
class Uploader {
 public:
  enum Slot { kTokens, kPositions, kStoreRows, kAttnMeta, kGather, kTargets, kCount };
  ~Uploader() {
    for (Entry& e : e_) {
      if (e.pinned) cudaFreeHost(e.pinned);
      if (e.ev) cudaEventDestroy(e.ev);
    }
  }
  const void* put(Slot slot, const void* host, size_t bytes, cudaStream_t s) {
    Entry& e = e_[slot];
    if (e.valid && e.last.size() == bytes && std::memcmp(e.last.data(), host, bytes) == 0) {
      return e.dev.get(bytes, s);
    }
    if (e.ev == nullptr) cuda_check(cudaEventCreateWithFlags(&e.ev, cudaEventDisableTiming), "event");
    cuda_check(cudaEventSynchronize(e.ev), "staging");  // the pinned buffer is free again
    if (bytes > e.pinned_cap) {
      if (e.pinned) cudaFreeHost(e.pinned);
      e.pinned = nullptr;
      cuda_check(cudaMallocHost(&e.pinned, bytes), "pinned staging buffer");
      e.pinned_cap = bytes;
    }
    std::memcpy(e.pinned, host, bytes);
    void* dev = e.dev.get(bytes, s);
    cuda_check(cudaMemcpyAsync(dev, e.pinned, bytes, cudaMemcpyHostToDevice, s), "upload");
    cuda_check(cudaEventRecord(e.ev, s), "upload");
    e.last.assign(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
    e.valid = true;
    return dev;
  }

 private:
  struct Entry {
    std::vector<char> last;
    DeviceBuffer dev;
    void* pinned = nullptr;
    size_t pinned_cap = 0;
    cudaEvent_t ev = nullptr;
    bool valid = false;
  };
  Entry e_[kCount];
};

// ---- cache formats ----

int kv_fmt(DType t) {
  switch (t) {
    case DType::kF32: return kFmtF32;
    case DType::kF16: return kFmtF16;
    case DType::kBF16: return kFmtBF16;
    default: break;
  }
  fail("the CUDA backend keeps the KV cache in f32, f16 or bf16 (got ", dtype_name(t),
       "); quantized KV caches run on the CPU");
}

// ---- the backend ----

class CudaWorkspace final : public Workspace {
 public:
  DeviceBuffer attn;  // attention backward scratch
  size_t attn_bytes = 0;
  int64_t bytes() const override { return static_cast<int64_t>(attn_bytes); }
};

class CudaBackend final : public Backend<float> {
 public:
  explicit CudaBackend(int index) : index_(index) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      cudaGetLastError();
      fail("no usable CUDA GPU: ", cudaGetErrorString(e));
    }
    MLKV_REQUIRE(n > 0, "no CUDA GPU found");
    MLKV_REQUIRE(index < n, "GPU cuda:", index, " does not exist (", n, " found)");
    cuda_check(cudaSetDevice(index), "cudaSetDevice");
    cudaDeviceProp p{};
    cuda_check(cudaGetDeviceProperties(&p, index), "cudaGetDeviceProperties");
    name_ = cat("cuda:", index, " (", p.name, ", sm_", p.major, p.minor, ")");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    cublas_check(cublasCreate(&blas_), "cublasCreate");
    cublas_check(cublasSetStream(blas_, stream_), "cublasSetStream");
    // f32 products stay f32 (no TF32), so results match the CPU within f32 rounding.
    cublas_check(cublasSetMathMode(blas_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    alloc_ = std::make_unique<CudaAllocator>(stream_);
    register_device_allocator(Device::kCuda, alloc_.get());
    cuda_check(cudaEventCreateWithFlags(&graph_done_, cudaEventDisableTiming), "event");
  }

  Device device() const override { return Device::kCuda; }
  std::string name() const override { return name_; }
  std::unique_ptr<Workspace> new_workspace() const override {
    return std::make_unique<CudaWorkspace>();
  }

  void set_matmul_dtype(DType t) override {
    MLKV_REQUIRE(t == DType::kF32 || t == DType::kBF16,
                 "the CUDA backend multiplies in f32 or bf16 (got ", dtype_name(t), ")");
    mixed_bf16_ = t == DType::kBF16;
  }

  // ---- linear ----
  void linear_forward(const float* x, const Tensor& w, const Tensor& b, float* y, int n, int K,
                      int N, bool accumulate) override {
    check_weight(w, int64_t{N} * K, "linear weight");
    const float one = 1.f, beta = accumulate ? 1.f : 0.f;
    if (!b.empty()) {
      check_weight(b, N, "bias");
      MLKV_REQUIRE(b.dtype() == DType::kF32, "biases are f32 on the GPU");
    }
    const bool lowp = w.dtype() == DType::kF16 || w.dtype() == DType::kBF16;
    const bool use_gemv =
        (lowp || w.dtype() == DType::kF32) && gemv_ok(x, w.raw(), n, K, w.dtype());
    // Recorded steps use the GEMV only (cuBLAS may allocate its workspace while recording).
    if (!use_gemv && refuse_recording()) return;
    if (host_only(kOpLinear, x, w, b, y, n, K, N, accumulate)) return;
    if (use_gemv) {
      // Decode-sized batches: one bandwidth-bound kernel, the activations stay f32.
      cuda::gemv(stream_, x, w.raw(), w.dtype(), b.empty() ? nullptr : static_cast<const float*>(b.raw()),
                 y, n, K, N, accumulate);
      return;
    }
    if (w.dtype() == DType::kF32 && mixed_bf16_) {
      const uint16_t* wh = bf16_copy(static_cast<const float*>(w.raw()), int64_t{N} * K, wtmp_);
      const uint16_t* xh = bf16_copy(x, int64_t{n} * K, act16_);
      gemm_bf16(CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, wh, K, xh, K, beta, y, N, "linear (bf16 mixed)");
    } else if (w.dtype() == DType::kF32) {
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, &one,
                               static_cast<const float*>(w.raw()), K, x, K, &beta, y, N),
                   "linear (f32)");
    } else {
      MLKV_REQUIRE(w.dtype() == DType::kF16 || w.dtype() == DType::kBF16,
                   "the CUDA backend multiplies f32, f16 or bf16 weights (got ",
                   dtype_name(w.dtype()), ")");
      const bool bf = w.dtype() == DType::kBF16;
      auto* xh = static_cast<uint16_t*>(act16_.get(static_cast<size_t>(n) * K * 2, stream_));
      if (bf) {
        to_bf16(stream_, x, xh, int64_t{n} * K);
      } else {
        to_f16(stream_, x, xh, int64_t{n} * K);
      }
      const cudaDataType_t t = bf ? CUDA_R_16BF : CUDA_R_16F;
      cublas_check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, N, n, K, &one, w.raw(), t, K, xh,
                                t, K, &beta, y, CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT),
                   bf ? "linear (bf16)" : "linear (f16)");
    }
    if (!b.empty()) add_bias(stream_, y, static_cast<const float*>(b.raw()), n, N);
  }

  void linear_backward(const float* dy, const float* x, const Tensor& w, float* dx, Tensor* dw,
                       Tensor* db, int n, int K, int N, bool accumulate_dx) override {
    if (refuse_recording()) return;
    check_weight(w, int64_t{N} * K, "linear weight");
    MLKV_REQUIRE(w.dtype() == DType::kF32, "training on the GPU needs f32 weights (got ",
                 dtype_name(w.dtype()), ")");
    const float one = 1.f;
    if (mixed_bf16_) {
      // bf16 operands, f32 accumulation into f32 dx and dw.
      const uint16_t* dyh = bf16_copy(dy, int64_t{n} * N, dy16_);
      if (dx != nullptr) {
        const uint16_t* wh = bf16_copy(static_cast<const float*>(w.raw()), int64_t{N} * K, wtmp_);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_N, K, n, N, wh, K, dyh, N, accumulate_dx ? 1.f : 0.f, dx,
                  K, "linear backward (dx, bf16 mixed)");
      }
      if (dw != nullptr && !dw->empty()) {
        check_weight(*dw, int64_t{N} * K, "weight gradient");
        const uint16_t* xh = bf16_copy(x, int64_t{n} * K, act16_);
        gemm_bf16(CUBLAS_OP_N, CUBLAS_OP_T, K, N, n, xh, K, dyh, N, 1.f,
                  static_cast<float*>(dw->raw()), K, "linear backward (dw, bf16 mixed)");
      }
      if (db != nullptr && !db->empty()) column_sums(stream_, dy, static_cast<float*>(db->raw()), n, N);
      return;
    }
    if (dx != nullptr) {
      const float beta = accumulate_dx ? 1.f : 0.f;
      // dx [n, K] = dy [n, N] w [N, K]
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, K, n, N, &one,
                               static_cast<const float*>(w.raw()), K, dy, N, &beta, dx, K),
                   "linear backward (dx)");
    }
    if (dw != nullptr && !dw->empty()) {
      check_weight(*dw, int64_t{N} * K, "weight gradient");
      // dw [N, K] += dy^T [N, n] x [n, K]
      cublas_check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, K, N, n, &one, x, K, dy, N, &one,
                               static_cast<float*>(dw->raw()), K),
                   "linear backward (dw)");
    }
    if (db != nullptr && !db->empty()) {
      column_sums(stream_, dy, static_cast<float*>(db->raw()), n, N);
    }
  }

  // ---- norms ----
  void layernorm_forward(const float* x, const Tensor& w, const Tensor& b, float* y, float* mean,
                         float* rstd, int n, int E, double eps) override {
    check_weight(w, E, "norm weight");
    if (host_only(kOpLayerNorm, x, w, b, y, mean, rstd, n, E, eps)) return;
    cuda::layernorm_forward(stream_, x, f32(w), b.empty() ? nullptr : f32(b), y, mean, rstd, n, E,
                            static_cast<float>(eps));
  }
  void layernorm_backward(const float* dy, const float* x, const Tensor& w, const float* mean,
                          const float* rstd, float* dx, Tensor& dw, Tensor* db, int n,
                          int E) override {
    if (refuse_recording()) return;
    cuda::layernorm_backward(stream_, dy, x, f32(w), mean, rstd, dx, f32m(dw),
                             db && !db->empty() ? f32m(*db) : nullptr, n, E);
  }
  void rmsnorm_forward(const float* x, const Tensor& w, float* y, float* rstd, int n, int E,
                       double eps) override {
    check_weight(w, E, "norm weight");
    if (host_only(kOpRmsNorm, x, w, y, rstd, n, E, eps)) return;
    cuda::rmsnorm_forward(stream_, x, f32(w), y, rstd, n, E, static_cast<float>(eps));
  }
  void rmsnorm_backward(const float* dy, const float* x, const Tensor& w, const float* rstd,
                        float* dx, Tensor& dw, int n, int E) override {
    if (refuse_recording()) return;
    cuda::rmsnorm_backward(stream_, dy, x, f32(w), rstd, dx, f32m(dw), n, E);
  }

  // ---- rotary, activations ----
  void rope(float* x, int n, int n_heads, int head_dim, const int32_t* pos,
            const ops::RopeTable<float>& rt, bool inverse) override {
    if (rt.n_rot == 0 || n == 0) return;
    const auto* dpos = static_cast<const int32_t*>(
        upload(Uploader::kPositions, pos, sizeof(int32_t) * static_cast<size_t>(n)));
    const RopeDev& r = rope_tables(rt);
    if (host_only(kOpRope, x, n, n_heads, head_dim, dpos, r.cos, r.sin, rt.n_rot, inverse)) return;
    cuda::rope(stream_, x, n, n_heads, head_dim, dpos, r.cos, r.sin, rt.n_rot, inverse);
  }
  void gelu_forward(const float* x, float* y, int64_t n, bool tanh_form) override {
    if (host_only(kOpGelu, x, y, n, tanh_form)) return;
    cuda::gelu_forward(stream_, x, y, n, tanh_form);
  }
  void gelu_backward(const float* x, const float* dy, float* dx, float* y, int64_t n,
                     bool tanh_form) override {
    if (refuse_recording()) return;
    cuda::gelu_backward(stream_, x, dy, dx, y, n, tanh_form);
  }
  void swiglu_forward(const float* gate, const float* up, float* y, int64_t n) override {
    if (host_only(kOpSwiglu, gate, up, y, n)) return;
    cuda::swiglu_forward(stream_, gate, up, y, n);
  }
  void swiglu_backward(const float* gate, const float* up, const float* dy, float* dgate,
                       float* dup, float* y, int64_t n) override {
    if (refuse_recording()) return;
    cuda::swiglu_backward(stream_, gate, up, dy, dgate, dup, y, n);
  }

  // ---- embedding, output head ----
  void embedding_forward(const int32_t* tok, const Tensor& table, float* x, int n, int E) override {
    MLKV_REQUIRE(table.dtype() == DType::kF32, "the embedding table is f32 on the GPU");
    const auto* dtok = static_cast<const int32_t*>(
        upload(Uploader::kTokens, tok, sizeof(int32_t) * static_cast<size_t>(n)));
    if (host_only(kOpEmbedding, dtok, table, x, n, E)) return;
    cuda::embedding_forward(stream_, dtok, f32(table), x, n, E);
  }
  void embedding_backward(const int32_t* tok, const float* dx, Tensor& dtable, int n,
                          int E) override {
    if (refuse_recording()) return;
    const auto* dtok = static_cast<const int32_t*>(
        up_.put(Uploader::kTokens, tok, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::embedding_backward(stream_, dtok, dx, f32m(dtable), n, E);
  }
  double cross_entropy(float* logits, const int32_t* target, int n, int V, float scale, bool grad,
                       float* row_loss) override {
    if (refuse_recording()) return 0;
    const auto* dt = static_cast<const int32_t*>(
        up_.put(Uploader::kTargets, target, sizeof(int32_t) * static_cast<size_t>(n), stream_));
    cuda::cross_entropy(stream_, logits, dt, n, V, scale, grad, row_loss);
    host_f_.resize(static_cast<size_t>(n));
    to_host(row_loss, host_f_.data(), n);
    double sum = 0;
    for (float l : host_f_) sum += l;  // row order, in double (as the CPU)
    return sum;
  }

  // ---- attention ----
  void attention_forward(const float* q, const float* k, const float* v, float* o, float* lse,
                         const ops::AttnDims& a, Workspace& ws) override {
    if (refuse_recording()) return;
    if (tensor_core_attention()) {
      cuda::attention_forward_bf16(stream_, q, k, v, o, lse, a.batch, a.ctx, a.n_head, a.n_head_kv,
                                   a.head_dim);
      return;
    }
    cuda::attention_forward(stream_, q, k, v, o, lse, a.batch, a.ctx, a.n_head, a.n_head_kv,
                            a.head_dim);
  }
  void attention_backward(const float* q, const float* k, const float* v, const float* o,
                          const float* lse, const float* dout, float* dq, float* dk, float* dv,
                          const ops::AttnDims& a, Workspace& ws) override {
    if (refuse_recording()) return;
    auto& w = static_cast<CudaWorkspace&>(ws);
    const size_t bytes = sizeof(float) * static_cast<size_t>(attention_backward_scratch(
                                             a.batch, a.ctx, a.n_head, a.n_head_kv, a.head_dim));
    auto* scratch = static_cast<float*>(w.attn.get(bytes, stream_));
    w.attn_bytes = std::max(w.attn_bytes, bytes);
    if (tensor_core_attention()) {
      cuda::attention_backward_bf16(stream_, q, k, v, o, lse, dout, dq, dk, dv, a.batch, a.ctx,
                                    a.n_head, a.n_head_kv, a.head_dim, scratch);
      return;
    }
    cuda::attention_backward(stream_, q, k, v, o, lse, dout, dq, dk, dv, a.batch, a.ctx, a.n_head,
                             a.n_head_kv, a.head_dim, scratch);
  }

  // With MLKV_CUDA_ATTN_TC=1, mixed precision runs the training attention's products on bf16
  // tensor cores too (attention_train_tc.cu). Off by default until it has run on a GPU: the
  // f32 kernels are the verified path (docs/BENCHMARKS.md, the GPU check).
  bool tensor_core_attention() const {
    const char* e = std::getenv("MLKV_CUDA_ATTN_TC");
    return mixed_bf16_ && e != nullptr && std::string(e) == "1";
  }

  void kv_store(const ops::KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n,
                const float* k, const float* v) override {
    if (n == 0) return;
    const int kf = kv_fmt(slot.k_dtype), vf = kv_fmt(slot.v_dtype);
    rows_.resize(static_cast<size_t>(n));
    for (int t = 0; t < n; ++t) rows_[static_cast<size_t>(t)] = static_cast<int32_t>(slot.row(seq[t], pos[t]));
    const auto* drows = static_cast<const int32_t*>(
        upload(Uploader::kStoreRows, rows_.data(), sizeof(int32_t) * rows_.size()));
    if (host_only(kOpKvStore, drows, n, slot.n_head_kv, slot.head_dim, k, v, slot.k, slot.v,
                  slot.k_head_stride, slot.v_head_stride, slot.k_row_bytes, slot.v_row_bytes, kf,
                  vf)) {
      return;
    }
    cuda::kv_store(stream_, drows, n, slot.n_head_kv, slot.head_dim, k, v, slot.k, slot.v,
                   slot.k_head_stride, slot.v_head_stride, slot.k_row_bytes, slot.v_row_bytes, kf,
                   vf);
  }

  void attention_cached(const ops::KvSlotView& slot, const std::vector<ops::AttnRun>& runs,
                        const float* q, int n_head, bool rotate_keys,
                        const ops::RopeTable<float>& rt, float* out) override {
    const int kf = kv_fmt(slot.k_dtype), vf = kv_fmt(slot.v_dtype);
    const int Hkv = slot.n_head_kv, d = slot.head_dim;
    MLKV_REQUIRE(Hkv > 0 && n_head % Hkv == 0, "n_head ", n_head, " is not a multiple of n_head_kv ",
                 Hkv);
    const int G = n_head / Hkv;
    int R = 0, max_len = 0, cap_len = 0;
    bool decode = true;  // one row per run
    for (const auto& r : runs) {
      R += r.n_rows;
      max_len = std::max(max_len, r.pos0 + r.n_rows);
      decode = decode && r.n_rows == 1;
      cap_len =
          std::max(cap_len, static_cast<int>(slot.block_tables[r.seq].size()) * slot.block_size);
    }
    if (R == 0) return;
    // Recorded steps are decode steps (Model only records those).
    const bool fixed = mode_ != Mode::kNormal;
    if (fixed && !decode && refuse_recording()) return;

    // Chunk: as many keys as the shared memory holds for the group's scores, at most 256. The
    // fixed part: the queries and the larger of the two kernels' scratch (a key row per warp, or
    // the key groups' value sums: at most 8 values per thread).
    const size_t fixed_smem =
        static_cast<size_t>(G) * d +
        std::max<size_t>(static_cast<size_t>(kCachedWarps) * d, 8 * kCachedThreads);
    const size_t avail = kCachedSmemMax / sizeof(float);
    MLKV_REQUIRE(fixed_smem + 32u * G <= avail, "attention: a group of ", G, " heads of ", d,
                 " dims does not fit the GPU's shared memory");
    int chunk = static_cast<int>(std::min<size_t>(256, (avail - fixed_smem) / G));
    chunk -= chunk % 32;
    // Split along the context up to the longest row; a recorded step splits up to what the
    // sequences' block tables map instead, so that its grid stays the same as the context grows
    // (chunks past a row's length write empty parts, which the combine skips: the same bits).
    const int n_split_cap = (cap_len + chunk - 1) / chunk;
    const int n_split = fixed ? n_split_cap : (max_len + chunk - 1) / chunk;
    // Decode steps size the parts for the recorded grid already (a recording cannot allocate).
    const int n_split_alloc = decode ? std::max(n_split, n_split_cap) : n_split;

    // Per query row: batch row, position, offset of its sequence's block table; then the block
    // tables: the blocks up to the row's length (recorded: the blocks n_split chunks cover, 0
    // past the table, so the array's size does not change as the context grows).
    meta_.assign(static_cast<size_t>(3 * R), 0);
    std::vector<int32_t>& blocks = blocks_;
    blocks.clear();
    const int fixed_nb = (n_split * chunk + slot.block_size - 1) / slot.block_size;
    int i = 0;
    for (const auto& r : runs) {
      const int len = r.pos0 + r.n_rows;
      const int nb = (len + slot.block_size - 1) / slot.block_size;
      const int off = static_cast<int>(blocks.size());
      const auto& table = slot.block_tables[r.seq];
      MLKV_CHECK(static_cast<int>(table.size()) >= nb);
      if (fixed) {
        const int n_copy = std::min(fixed_nb, static_cast<int>(table.size()));
        blocks.insert(blocks.end(), table.begin(), table.begin() + n_copy);
        blocks.resize(static_cast<size_t>(off + fixed_nb), 0);
      } else {
        blocks.insert(blocks.end(), table.begin(), table.begin() + nb);
      }
      for (int j = 0; j < r.n_rows; ++j, ++i) {
        meta_[static_cast<size_t>(i)] = r.row0 + j;
        meta_[static_cast<size_t>(R + i)] = r.pos0 + j;
        meta_[static_cast<size_t>(2 * R + i)] = off;
      }
    }
    const size_t meta_n = meta_.size();
    meta_.insert(meta_.end(), blocks.begin(), blocks.end());
    const auto* dmeta = static_cast<const int32_t*>(
        upload(Uploader::kAttnMeta, meta_.data(), sizeof(int32_t) * meta_.size()));

    CachedArgs a{};
    a.q = q;
    a.k = slot.k;
    a.v = slot.v;
    a.k_head_stride = slot.k_head_stride;
    a.v_head_stride = slot.v_head_stride;
    a.k_row_bytes = slot.k_row_bytes;
    a.v_row_bytes = slot.v_row_bytes;
    a.meta = dmeta;
    a.blocks = dmeta + meta_n;
    a.R = R;
    a.block_size = slot.block_size;
    a.n_head = n_head;
    a.n_head_kv = Hkv;
    a.d = d;
    a.G = G;
    a.chunk = chunk;
    a.n_split = n_split;
    a.scale = 1.f / std::sqrt(static_cast<float>(d));
    a.rotate = rotate_keys;
    if (rotate_keys && rt.n_rot > 0) {
      // (Chunks past a row's length, which a recorded grid has, read no keys and no angles.)
      MLKV_REQUIRE(rt.n_pos >= max_len, "rotary table holds ", rt.n_pos, " positions, ", max_len,
                   " needed");
      const RopeDev& r = rope_tables(rt);
      a.cos_t = r.cos;
      a.sin_t = r.sin;
      a.n_rot = rt.n_rot;
    } else {
      a.rotate = false;
    }
    const size_t parts = static_cast<size_t>(R) * Hkv * n_split * G;
    const size_t parts_alloc = static_cast<size_t>(R) * Hkv * n_split_alloc * G;
    auto* part = static_cast<float*>(scratch(attn_parts_, sizeof(float) * parts_alloc * (d + 2)));
    a.part_o = part;
    a.part_ml = part + parts * d;
    const size_t smem = sizeof(float) * (fixed_smem + static_cast<size_t>(G) * chunk);
    const bool vec = cached_vec_ok(a, kf, vf) && std::getenv("MLKV_CUDA_ATTN_SCALAR") == nullptr;
    if (host_only(kOpAttnCached, a.q, a.k, a.v, a.k_head_stride, a.v_head_stride, a.k_row_bytes,
                  a.v_row_bytes, a.meta, a.blocks, a.R, a.block_size, a.n_head, a.n_head_kv, a.d,
                  a.G, a.chunk, a.n_split, a.scale, a.rotate, a.cos_t, a.sin_t, a.n_rot, a.part_o,
                  a.part_ml, kf, vf, vec, smem, out)) {
      return;
    }
    cuda::attn_cached_parts(stream_, a, kf, vf, vec, smem);
    cuda::attn_cached_combine(stream_, a, out);
  }

  // ---- optimizer ----
  void adamw_update(Tensor& p, Tensor& g, Tensor& m, Tensor& v, const ops::AdamWStep& h,
                    bool zero_grad) override {
    if (refuse_recording()) return;
    MLKV_CHECK(g.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel());
    cuda::adamw_update(stream_, f32m(p), f32m(g), f32m(m), f32m(v), p.numel(), h.beta1, h.beta2,
                       h.eps, h.lr, h.weight_decay, h.bias_corr1, h.bias_corr2, h.grad_scale,
                       zero_grad);
  }
  double sum_squares(const Tensor& g) override {
    if (refuse_recording() || g.empty()) return 0;
    const int parts = sum_squares_parts(g.numel());
    auto* dp = static_cast<double*>(ss_.get(sizeof(double) * static_cast<size_t>(parts), stream_));
    cuda::sum_squares(stream_, f32(g), g.numel(), dp);
    host_d_.resize(static_cast<size_t>(parts));
    alloc_->to_host(host_d_.data(), dp, sizeof(double) * host_d_.size());
    double s = 0;
    for (double x : host_d_) s += x;
    return s;
  }

  // ---- memory ----
  void add(float* y, const float* x, int64_t n) override {
    if (host_only(kOpAdd, y, x, n)) return;
    add_inplace(stream_, y, x, n);
  }
  void copy(float* dst, const float* src, int64_t n) override {
    if (n <= 0 || dst == src || host_only(kOpCopy, dst, src, n)) return;
    alloc_->copy(dst, src, sizeof(float) * static_cast<size_t>(n));
  }
  void zero(float* y, int64_t n) override {
    if (n <= 0 || host_only(kOpZero, y, n)) return;
    cuda_check(cudaMemsetAsync(y, 0, sizeof(float) * static_cast<size_t>(n), stream_), "zero");
  }
  void gather_rows(const float* src, const int32_t* idx, int n, int E, float* dst) override {
    if (n == 0) return;
    const auto* didx = static_cast<const int32_t*>(
        upload(Uploader::kGather, idx, sizeof(int32_t) * static_cast<size_t>(n)));
    if (host_only(kOpGather, src, didx, n, E, dst)) return;
    cuda::gather_rows(stream_, src, didx, n, E, dst);
  }
  void to_host(const float* src, float* host, int64_t n) override {
    if (refuse_recording()) return;
    if (n > 0) alloc_->to_host(host, src, sizeof(float) * static_cast<size_t>(n));
  }

 private:
  struct RopeDev {
    const void* key = nullptr;
    const float* host_cos = nullptr;
    int n_rot = 0, n_pos = 0;
    float last_cos = 0, last_sin = 0;
    DeviceBuffer buf;
    float* cos = nullptr;
    float* sin = nullptr;
  };

  // The device copy of a rotary table (uploaded again when the table changed).
  const RopeDev& rope_tables(const ops::RopeTable<float>& rt) {
    RopeDev& r = rope_;
    const size_t n = rt.cos.size();
    MLKV_CHECK(rt.sin.size() == n && n > 0);
    if (r.key != &rt || r.host_cos != rt.cos.data() || r.n_rot != rt.n_rot || r.n_pos != rt.n_pos ||
        r.last_cos != rt.cos.back() || r.last_sin != rt.sin.back()) {
      // A recorded step cannot upload (it synchronises): recorded against another table, or the
      // table changed since; a normal run uploads it.
      if (mode_ != Mode::kNormal) {
        rec_failed_ = true;
        return r;
      }
      auto* p = static_cast<float*>(r.buf.get(sizeof(float) * 2 * n, stream_));
      cuda_check(cudaStreamSynchronize(stream_), "rotary table");
      cuda_check(cudaMemcpy(p, rt.cos.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "rotary table");
      cuda_check(cudaMemcpy(p + n, rt.sin.data(), sizeof(float) * n, cudaMemcpyHostToDevice), "rotary table");
      r.key = &rt;
      r.host_cos = rt.cos.data();
      r.n_rot = rt.n_rot;
      r.n_pos = rt.n_pos;
      r.last_cos = rt.cos.back();
      r.last_sin = rt.sin.back();
      r.cos = p;
      r.sin = p + n;
    }
    return r;
  }

  // x rounded to bf16 in a scratch buffer.
  const uint16_t* bf16_copy(const float* x, int64_t n, DeviceBuffer& buf) {
    auto* h = static_cast<uint16_t*>(buf.get(static_cast<size_t>(n) * 2, stream_));
    to_bf16(stream_, x, h, n);
    return h;
  }
  // C (f32, column-major m x n) = alpha op(A) op(B) + beta C with bf16 A and B, f32 accumulation.
  void gemm_bf16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* A,
                 int lda, const void* B, int ldb, float beta, float* C, int ldc, const char* what) {
    const float one = 1.f;
    cublas_check(cublasGemmEx(blas_, ta, tb, m, n, k, &one, A, CUDA_R_16BF, lda, B, CUDA_R_16BF, ldb,
                              &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 what);
  }

  static void check_weight(const Tensor& w, int64_t numel, const char* what) {
    MLKV_REQUIRE(w.device() == Device::kCuda, "the ", what, " is on the ", device_name(w.device()),
                 ", not the GPU");
    MLKV_CHECK(w.numel() == numel);
  }
  static const float* f32(const Tensor& t) {
    MLKV_REQUIRE(t.dtype() == DType::kF32 && t.device() == Device::kCuda,
                 "expected an f32 tensor on the GPU (got ", dtype_name(t.dtype()), " on the ",
                 device_name(t.device()), ")");
    return static_cast<const float*>(t.raw());
  }
  static float* f32m(Tensor& t) { return const_cast<float*>(f32(t)); }

  // ---- recorded steps (CUDA graphs) ----
  // Normal: ops run. Capture: ops are recorded into a graph (cudaStreamBeginCapture on stream_),
  // with their host arrays staged in the arena. Staging: ops do their host work only, write their
  // host arrays to the places the recording reads them from, and are checked against the
  // recording: every op appends what its launches depend on (kernel, device pointers, sizes,
  // flags) to a signature, and a staged step may replay the recording only when its signature is
  // the recorded one, word for word.
  enum class Mode { kNormal, kCapture, kStaging };
  enum OpTag : uint64_t {
    kOpLinear = 1,
    kOpLayerNorm,
    kOpRmsNorm,
    kOpRope,
    kOpGelu,
    kOpSwiglu,
    kOpEmbedding,
    kOpKvStore,
    kOpAttnCached,
    kOpAdd,
    kOpCopy,
    kOpZero,
    kOpGather,
    kOpUpload,
    kOpScratch
  };
  // One host array of a recording: staged at `off` in the arena (pinned and device alike), or the
  // same bytes as an earlier array of the step (alias: its index), then read from there.
  struct PutRec {
    int slot;
    size_t bytes, off;
    int alias;
  };
  struct Graph {
    cudaGraphExec_t exec = nullptr;
    std::vector<uint64_t> sig;
    std::vector<PutRec> puts;
    uint64_t arena_gen = 0;  // the arena it reads (a grown arena is another)
    bool ready = false;      // staged (or just recorded): may be launched once
  };

  void sig_word(uint64_t w) {
    if (mode_ == Mode::kCapture) {
      sig_.push_back(w);
    } else if (staged_ == nullptr || sig_pos_ >= staged_->sig.size() ||
               staged_->sig[sig_pos_] != w) {
      rec_failed_ = true;
      ++sig_pos_;
    } else {
      ++sig_pos_;
    }
  }
  template <typename A>
  void sig_arg(const A& a) {
    if constexpr (std::is_same_v<A, Tensor>) {
      sig_word(reinterpret_cast<uintptr_t>(a.raw()));
      sig_word(static_cast<uint64_t>(a.dtype()));
      sig_word(static_cast<uint64_t>(a.numel()));
    } else if constexpr (std::is_pointer_v<A>) {
      sig_word(reinterpret_cast<uintptr_t>(a));
    } else if constexpr (std::is_floating_point_v<A>) {
      const double x = a;
      uint64_t u = 0;
      std::memcpy(&u, &x, sizeof u);
      sig_word(u);
    } else if constexpr (std::is_enum_v<A>) {
      sig_word(static_cast<uint64_t>(a));
    } else {
      static_assert(std::is_integral_v<A>, "signature words are pointers, numbers or tensors");
      sig_word(static_cast<uint64_t>(a));
    }
  }
  // In a recording: appends the op's launch parameters to the signature; true when the op must
  // launch nothing (staging, or a recording that already failed).
  template <typename... A>
  bool host_only(OpTag op, const A&... a) {
    if (mode_ == Mode::kNormal) return false;
    sig_word(op);
    (sig_arg(a), ...);
    return mode_ == Mode::kStaging || rec_failed_;
  }
  // An op that cannot be part of a recording: fails it (true: launch nothing).
  bool refuse_recording() {
    if (mode_ == Mode::kNormal) return false;
    rec_failed_ = true;
    return true;
  }

  // A host array on the device: through the uploader, or in a recording through the arena.
  const void* upload(Uploader::Slot slot, const void* host, size_t bytes) {
    if (mode_ == Mode::kNormal) return up_.put(slot, host, bytes, stream_);
    char* hbase = static_cast<char*>(arena_host_);
    char* dbase = static_cast<char*>(arena_dev_);
    if (mode_ == Mode::kCapture) {
      if (rec_failed_ || arena_cap_ == 0) {
        rec_failed_ = true;
        return dbase;
      }
      // The same bytes as an earlier array of this step (the positions of every layer, the
      // attention metadata of every owner layer): read from there.
      for (size_t i = 0; i < puts_.size(); ++i) {
        const PutRec p = puts_[i];
        if (p.slot == slot && p.bytes == bytes && p.alias < 0 &&
            std::memcmp(hbase + p.off, host, bytes) == 0) {
          puts_.push_back({slot, bytes, p.off, static_cast<int>(i)});
          sig_word(kOpUpload);
          sig_arg(p.off);
          return dbase + p.off;
        }
      }
      const size_t off = (arena_used_ + 15) / 16 * 16;
      if (off + bytes > arena_cap_) {
        rec_failed_ = true;  // the next recording gets a larger arena
        arena_want_ = std::max(arena_want_, 2 * (off + bytes));
        return dbase;
      }
      std::memcpy(hbase + off, host, bytes);
      arena_used_ = off + bytes;
      puts_.push_back({slot, bytes, off, -1});
      sig_word(kOpUpload);
      sig_arg(off);
      return dbase + off;
    }
    // Staging: the recording's next array must be this one (purpose and size).
    if (rec_failed_ || staged_ == nullptr || put_pos_ >= staged_->puts.size()) {
      rec_failed_ = true;
      return dbase;
    }
    const PutRec p = staged_->puts[put_pos_++];
    if (p.slot != slot || p.bytes != bytes) {
      rec_failed_ = true;
      return dbase;
    }
    if (p.alias >= 0) {
      // The recording reads the earlier array's bytes: they must still be equal.
      if (std::memcmp(hbase + p.off, host, bytes) != 0) rec_failed_ = true;
    } else {
      std::memcpy(hbase + p.off, host, bytes);
    }
    sig_word(kOpUpload);
    sig_arg(p.off);
    return dbase + p.off;
  }
  // Device scratch of a purpose: grown as needed, except in a recording (which fails instead).
  void* scratch(DeviceBuffer& b, size_t bytes) {
    if (mode_ == Mode::kNormal) return b.get(bytes, stream_);
    void* p = b.fixed(bytes);
    if (p == nullptr) rec_failed_ = true;
    sig_word(kOpScratch);
    sig_arg(p);
    return p;
  }

  // Until the last launched recording is done with the arena's pinned half.
  void wait_graph_done() { cuda_check(cudaEventSynchronize(graph_done_), "graph"); }
  // The arena at (at least) arena_want_ bytes; false when it cannot be had. Growing it makes
  // every existing recording stale (they read the old one).
  bool ensure_arena() {
    if (arena_cap_ >= arena_want_) return true;
    cuda_check(cudaStreamSynchronize(stream_), "graph arena");
    if (arena_host_) cudaFreeHost(arena_host_);
    if (arena_dev_) cudaFree(arena_dev_);
    arena_host_ = arena_dev_ = nullptr;
    arena_cap_ = 0;
    ++arena_gen_;
    if (cudaMallocHost(&arena_host_, arena_want_) != cudaSuccess ||
        cudaMalloc(&arena_dev_, arena_want_) != cudaSuccess) {
      cudaGetLastError();
      if (arena_host_) cudaFreeHost(arena_host_);
      if (arena_dev_) cudaFree(arena_dev_);
      arena_host_ = arena_dev_ = nullptr;
      return false;
    }
    arena_cap_ = arena_want_;
    return true;
  }
  // The captured graph as a recording: its root (the arena's host-to-device copy, captured
  // first) set to the bytes the step staged, instantiated. 0 when anything fails.
  int64_t instantiate(cudaGraph_t g) {
    size_t n_roots = 0;
    if (cudaGraphGetRootNodes(g, nullptr, &n_roots) != cudaSuccess || n_roots != 1) return 0;
    cudaGraphNode_t root = nullptr;
    cudaGraphNodeType type{};
    if (cudaGraphGetRootNodes(g, &root, &n_roots) != cudaSuccess ||
        cudaGraphNodeGetType(root, &type) != cudaSuccess || type != cudaGraphNodeTypeMemcpy) {
      return 0;
    }
    const size_t used = std::max<size_t>(arena_used_, 16);
    if (cudaGraphMemcpyNodeSetParams1D(root, arena_dev_, arena_host_, used,
                                       cudaMemcpyHostToDevice) != cudaSuccess) {
      return 0;
    }
    cudaGraphExec_t exec = nullptr;
    if (cudaGraphInstantiate(&exec, g, 0) != cudaSuccess) return 0;
    const int64_t id = next_graph_++;
    Graph& r = graphs_[id];
    r.exec = exec;
    r.sig = std::move(sig_);
    r.puts = std::move(puts_);
    r.arena_gen = arena_gen_;
    r.ready = true;  // the arena holds this step's arrays
    return id;
  }

 public:
  bool graphs_supported() const override { return true; }

  void begin_capture() override {
    MLKV_CHECK(mode_ == Mode::kNormal);
    wait_graph_done();  // the pinned arena is free again
    sig_.clear();
    puts_.clear();
    arena_used_ = 0;
    rec_failed_ = false;
    capturing_ = false;
    mode_ = Mode::kCapture;
    if (!ensure_arena()) {
      rec_failed_ = true;
      return;
    }
    // Thread-local: a call on this thread that cannot be recorded (a synchronisation, an
    // allocation) fails the recording instead of running.
    if (cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
      cudaGetLastError();
      rec_failed_ = true;
      return;
    }
    capturing_ = true;
    // The root: the staged arrays to the device in one copy (sized when the recording ends).
    if (cudaMemcpyAsync(arena_dev_, arena_host_, arena_cap_, cudaMemcpyHostToDevice, stream_) !=
        cudaSuccess) {
      cudaGetLastError();
      rec_failed_ = true;
    }
  }

  int64_t end_capture(bool keep) override {
    MLKV_CHECK(mode_ == Mode::kCapture);
    mode_ = Mode::kNormal;
    cudaGraph_t g = nullptr;
    if (capturing_) {
      capturing_ = false;
      if (cudaStreamEndCapture(stream_, &g) != cudaSuccess) {  // invalidated by a refused call
        cudaGetLastError();
        rec_failed_ = true;
      }
    }
    int64_t id = 0;
    if (keep && !rec_failed_ && g != nullptr) id = instantiate(g);
    if (g != nullptr) cudaGraphDestroy(g);
    if (id == 0) cudaGetLastError();  // a failed recording leaves no error behind
    sig_.clear();
    puts_.clear();
    return id;
  }

  void begin_staging(int64_t graph) override {
    MLKV_CHECK(mode_ == Mode::kNormal);
    auto it = graphs_.find(graph);
    staged_ = it == graphs_.end() ? nullptr : &it->second;
    wait_graph_done();  // the pinned arena is free again
    mode_ = Mode::kStaging;
    rec_failed_ = staged_ == nullptr || staged_->arena_gen != arena_gen_ || arena_cap_ == 0;
    sig_pos_ = put_pos_ = 0;
  }

  bool end_staging() override {
    MLKV_CHECK(mode_ == Mode::kStaging);
    const bool ok = !rec_failed_ && staged_ != nullptr && sig_pos_ == staged_->sig.size() &&
                    put_pos_ == staged_->puts.size();
    if (ok) staged_->ready = true;
    mode_ = Mode::kNormal;
    staged_ = nullptr;
    return ok;
  }

  void launch_graph(int64_t graph) override {
    MLKV_CHECK(mode_ == Mode::kNormal);
    auto it = graphs_.find(graph);
    MLKV_CHECK(it != graphs_.end() && it->second.ready && it->second.arena_gen == arena_gen_);
    it->second.ready = false;
    cuda_check(cudaGraphLaunch(it->second.exec, stream_), "graph launch");
    cuda_check(cudaEventRecord(graph_done_, stream_), "graph launch");
  }

  void drop_graph(int64_t graph) override {
    auto it = graphs_.find(graph);
    if (it == graphs_.end()) return;
    cudaGraphExecDestroy(it->second.exec);  // a launch in flight completes first
    graphs_.erase(it);
  }

 private:
  Mode mode_ = Mode::kNormal;
  bool rec_failed_ = false;  // capture: something could not be recorded; staging: a mismatch
  bool capturing_ = false;   // the stream is capturing
  std::vector<uint64_t> sig_;
  std::vector<PutRec> puts_;
  Graph* staged_ = nullptr;
  size_t sig_pos_ = 0, put_pos_ = 0;
  std::map<int64_t, Graph> graphs_;
  int64_t next_graph_ = 1;
  // The arena of recorded steps' host arrays: pinned and device halves at the same offsets,
  // shared by all recordings (one step runs at a time; each stages its arrays before launching).
  void* arena_host_ = nullptr;
  void* arena_dev_ = nullptr;
  size_t arena_cap_ = 0, arena_used_ = 0, arena_want_ = size_t{1} << 20;
  uint64_t arena_gen_ = 0;
  cudaEvent_t graph_done_ = nullptr;  // recorded after each launch

  int index_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::unique_ptr<CudaAllocator> alloc_;
  Uploader up_;
  DeviceBuffer act16_, dy16_, wtmp_, attn_parts_, ss_;
  bool mixed_bf16_ = false;  // products of f32 weights in bf16 (training's mixed precision)
  RopeDev rope_;
  std::vector<int32_t> rows_, meta_, blocks_;
  std::vector<float> host_f_;
  std::vector<double> host_d_;
};

}  // namespace

Backend<float>* make_backend(int device_index) {
  // Lives for the program (tensors on the GPU may outlive any scope that could own it).
  static CudaBackend* b = nullptr;
  if (b == nullptr) b = new CudaBackend(device_index);
  return b;
}

}  // namespace mlkv::cuda
