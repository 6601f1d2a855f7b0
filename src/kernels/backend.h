// The backend interface: one device's implementation of the op list (kernels/ops.h) and its
// memory, for one compute type T (float; double is the CPU's gradient-check path). The model
// (src/model: blocks, the layer loop, the inference model and the training graph) does all its
// computing through a Backend<T>: activations are Tensors on the backend's device, weights are
// Tensors whose dtype the ops dispatch on (T, or f16 for inference weights), and token ids,
// positions and the KV cache's bookkeeping stay on the host. A device plugs in by implementing
// this class and registering it (register_backend); nothing in the model changes.
//
// Every op has the semantics of its namesake in kernels/ops.h (shapes, what accumulates); only
// the weight arguments differ: a Tensor instead of a pointer, and a bias may be an empty Tensor.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/tensor.h"
#include "kernels/types.h"

namespace mlkv {

// Per-caller state an op may keep between calls (attention scratch): a graph or a model holds one
// and passes it back.
class Workspace {
 public:
  virtual ~Workspace() = default;
  virtual int64_t bytes() const { return 0; }  // memory it holds now
};

template <typename T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;  // "cpu (avx2)"

  // A zero-filled tensor of T on this device.
  Tensor buffer(std::vector<int64_t> shape) const {
    return Tensor(std::move(shape), dtype_of<T>(), device());
  }
  virtual std::unique_ptr<Workspace> new_workspace() const = 0;

  // The element type products of f32 weights are computed in: f32 (default), or bf16 (mixed
  // precision: weights and activations rounded to bf16 per product, f32 accumulation and f32
  // outputs; master weights, gradients and optimizer state stay f32). Throws mlkv::Error where the
  // backend has no such products (the CPU computes f32 only).
  virtual void set_matmul_dtype(DType t) {
    MLKV_REQUIRE(t == dtype_of<T>(), "the ", name(), " backend multiplies in ", dtype_name(dtype_of<T>()),
                 " only (bf16 mixed precision runs on the GPU)");
  }

  // ---- linear: w [N, K] of dtype T (or F16 for float inference weights) ----
  virtual void linear_forward(const T* x, const Tensor& w, const Tensor& b, T* y, int n, int K,
                              int N, bool accumulate) = 0;
  // dw / db may be null (no parameter gradient wanted); dx may be null.
  virtual void linear_backward(const T* dy, const T* x, const Tensor& w, T* dx, Tensor* dw,
                               Tensor* db, int n, int K, int N, bool accumulate_dx) = 0;

  // ---- norms ----
  virtual void layernorm_forward(const T* x, const Tensor& w, const Tensor& b, T* y, T* mean,
                                 T* rstd, int n, int E, double eps) = 0;
  virtual void layernorm_backward(const T* dy, const T* x, const Tensor& w, const T* mean,
                                  const T* rstd, T* dx, Tensor& dw, Tensor* db, int n, int E) = 0;
  virtual void rmsnorm_forward(const T* x, const Tensor& w, T* y, T* rstd, int n, int E,
                               double eps) = 0;
  virtual void rmsnorm_backward(const T* dy, const T* x, const Tensor& w, const T* rstd, T* dx,
                                Tensor& dw, int n, int E) = 0;

  // ---- rotary, activations ----
  virtual void rope(T* x, int n, int n_heads, int head_dim, const int32_t* pos,
                    const ops::RopeTable<T>& rt, bool inverse) = 0;
  virtual void gelu_forward(const T* x, T* y, int64_t n, bool tanh_form) = 0;
  virtual void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_form) = 0;
  virtual void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) = 0;
  virtual void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y,
                               int64_t n) = 0;

  // ---- embedding and output head ----
  virtual void embedding_forward(const int32_t* tok, const Tensor& table, T* x, int n, int E) = 0;
  virtual void embedding_backward(const int32_t* tok, const T* dx, Tensor& dtable, int n,
                                  int E) = 0;
  virtual double cross_entropy(T* logits, const int32_t* target, int n, int V, T scale, bool grad,
                               T* row_loss) = 0;
  // The distillation term (ops::distill_kl_forward_backward). Not every backend has it (the
  // CUDA backend does not yet): the default refuses, and `mlkv train --teacher` checks first.
  virtual double distill_kl(const T* student, T* teacher, int n, int V, T temp, T scale, bool grad,
                            T* row_kl) {
    (void)student, (void)teacher, (void)n, (void)V, (void)temp, (void)scale, (void)grad,
        (void)row_kl;
    fail("the ", name(),
         " backend has no distillation op (knowledge distillation trains on the CPU)");
  }
  virtual bool has_distill_kl() const { return false; }

  // ---- attention ----
  virtual void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse,
                                 const ops::AttnDims& a, Workspace& ws) = 0;
  virtual void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse,
                                  const T* dout, T* dq, T* dk, T* dv, const ops::AttnDims& a,
                                  Workspace& ws) = 0;
  // KV cache (float only; the double backend refuses them).
  virtual void kv_store(const ops::KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n,
                        const T* k, const T* v) = 0;
  virtual void attention_cached(const ops::KvSlotView& slot, const std::vector<ops::AttnRun>& runs,
                                const T* q, int n_head, bool rotate_keys,
                                const ops::RopeTable<T>& rt, T* out) = 0;

  // ---- optimizer (parameters, gradients and moments as f32 tensors on this device) ----
  virtual void adamw_update(Tensor& p, Tensor& g, Tensor& m, Tensor& v, const ops::AdamWStep& h,
                            bool zero_grad) = 0;
  // sum of squares of a gradient tensor, accumulated in double in a fixed order.
  virtual double sum_squares(const Tensor& g) = 0;

  // ---- memory helpers on device arrays ----
  virtual void add(T* y, const T* x, int64_t n) = 0;  // y += x
  virtual void copy(T* dst, const T* src, int64_t n) = 0;
  virtual void zero(T* y, int64_t n) = 0;
  // Rows idx[i] of src [*, E] into dst [i, E] (gathers the rows that want logits).
  virtual void gather_rows(const T* src, const int32_t* idx, int n, int E, T* dst) = 0;
  // Device array -> host (logits, losses).
  virtual void to_host(const T* src, T* host, int64_t n) = 0;

  // ---- recorded op sequences (CUDA graphs; the defaults: none) ----
  // A caller that issues the same sequence of ops again and again (a decode step) may record it
  // once and replay it: launch overhead paid once per step instead of once per op. The ops issued
  // between begin_capture and end_capture are recorded, not run. Between begin_staging and
  // end_staging the ops do only their host work (row indices, attention metadata, staging of
  // host arrays for the recording to read) and check that they are the recorded ones (same
  // kernels, same device pointers, same sizes); launch_graph then runs the recording on the
  // staged arrays. Nothing ever runs twice or not at all: a recording that failed, or staged ops
  // that differ from it, say so (0 / false) and the caller issues the ops normally instead.
  // Only the forward-pass ops of inference can be recorded (others fail the recording).
  virtual bool graphs_supported() const { return false; }
  virtual void begin_capture() {}
  // The recording's id (> 0), ready to launch once, or 0 when it failed (nothing ran). keep =
  // false discards it (an exception interrupted the ops).
  virtual int64_t end_capture(bool keep) {
    (void)keep;
    return 0;
  }
  virtual void begin_staging(int64_t graph) { (void)graph; }
  // Whether the staged ops matched the recording (it may be launched; else nothing ran).
  virtual bool end_staging() { return false; }
  virtual void launch_graph(int64_t graph) { (void)graph; }
  virtual void drop_graph(int64_t graph) { (void)graph; }
};

// The backend of a device for compute type T; throws mlkv::Error when the device has none (or
// none for T: double exists on the CPU only).
template <typename T>
Backend<T>& backend(Device device = Device::kCpu);
// Installs a device's float backend (a CUDA build does this at startup).
void register_backend(Device device, Backend<float>* b);
// Whether a float backend exists for the device (the CPU's always does; a CUDA build's CUDA
// backend is created on first use, which throws when no GPU can be used).
bool has_backend(Device device);
// Which GPU the device's backend uses ("cuda:N"); only before its first use (throws after).
void set_device_index(Device device, int index);

}  // namespace mlkv
