// The CPU backend: Backend<float> on the run-time-selected SIMD kernels and BLAS, Backend<double>
// on the scalar reference (kernels/ops.h does the float/double split). Registers nothing: it is
// the built-in backend of Device::kCpu.
#include <cstring>
#include <mutex>
#include <type_traits>

#include "core/check.h"
#include "kernels/backend.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"
#ifdef MLKV_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace mlkv {

namespace {

template <typename T>
const T* ptr_or_null(const Tensor& t) {
  return t.empty() ? nullptr : t.data_as<T>();
}

template <typename T>
struct CpuWorkspace : Workspace {
  ops::AttnScratch<T> attn;
  int64_t bytes() const override {
    return static_cast<int64_t>((attn.dk_heads.size() + attn.dv_heads.size()) * sizeof(T));
  }
};

template <typename T>
class CpuBackend final : public Backend<T> {
 public:
  Device device() const override { return Device::kCpu; }
  std::string name() const override {
    if constexpr (std::is_same_v<T, double>) {
      return "cpu (f64 reference)";
    } else {
      return std::string("cpu (") + ops::cpu::isa_name(ops::cpu::active_isa()) + ")";
    }
  }
  std::unique_ptr<Workspace> new_workspace() const override {
    return std::make_unique<CpuWorkspace<T>>();
  }

  void linear_forward(const T* x, const Tensor& w, const Tensor& b, T* y, int n, int K, int N,
                      bool accumulate) override {
    MLKV_CHECK(w.numel() == int64_t{N} * K);
    if constexpr (std::is_same_v<T, float>) {
      if (w.dtype() != DType::kF32) {
        ops::linear_forward_lowp(x, w.raw(), w.dtype(), ptr_or_null<T>(b), y, n, K, N, accumulate);
        return;
      }
    }
    ops::linear_forward<T>(x, w.data_as<T>(), ptr_or_null<T>(b), y, n, K, N, accumulate);
  }
  void linear_backward(const T* dy, const T* x, const Tensor& w, T* dx, Tensor* dw, Tensor* db,
                       int n, int K, int N, bool accumulate_dx) override {
    ops::linear_backward<T>(dy, x, w.data_as<T>(), dx, dw ? dw->data_as<T>() : nullptr,
                            db && !db->empty() ? db->data_as<T>() : nullptr, n, K, N, accumulate_dx);
  }

  void layernorm_forward(const T* x, const Tensor& w, const Tensor& b, T* y, T* mean, T* rstd, int n,
                         int E, double eps) override {
    ops::layernorm_forward<T>(x, w.data_as<T>(), ptr_or_null<T>(b), y, mean, rstd, n, E, static_cast<T>(eps));
  }
  void layernorm_backward(const T* dy, const T* x, const Tensor& w, const T* mean, const T* rstd,
                          T* dx, Tensor& dw, Tensor* db, int n, int E) override {
    ops::layernorm_backward<T>(dy, x, w.data_as<T>(), mean, rstd, dx, dw.data_as<T>(),
                               db && !db->empty() ? db->data_as<T>() : nullptr, n, E);
  }
  void rmsnorm_forward(const T* x, const Tensor& w, T* y, T* rstd, int n, int E, double eps) override {
    ops::rmsnorm_forward<T>(x, w.data_as<T>(), y, rstd, n, E, static_cast<T>(eps));
  }
  void rmsnorm_backward(const T* dy, const T* x, const Tensor& w, const T* rstd, T* dx, Tensor& dw,
                        int n, int E) override {
    ops::rmsnorm_backward<T>(dy, x, w.data_as<T>(), rstd, dx, dw.data_as<T>(), n, E);
  }

  void rope(T* x, int n, int n_heads, int head_dim, const int32_t* pos, const ops::RopeTable<T>& rt,
            bool inverse) override {
    ops::rope_forward<T>(x, n, n_heads, head_dim, pos, rt, inverse);
  }
  void gelu_forward(const T* x, T* y, int64_t n, bool tanh_form) override {
    ops::gelu_forward<T>(x, y, n, tanh_form);
  }
  void gelu_backward(const T* x, const T* dy, T* dx, T* y, int64_t n, bool tanh_form) override {
    ops::gelu_backward<T>(x, dy, dx, y, n, tanh_form);
  }
  void swiglu_forward(const T* gate, const T* up, T* y, int64_t n) override {
    ops::swiglu_forward<T>(gate, up, y, n);
  }
  void swiglu_backward(const T* gate, const T* up, const T* dy, T* dgate, T* dup, T* y,
                       int64_t n) override {
    ops::swiglu_backward<T>(gate, up, dy, dgate, dup, y, n);
  }

  void embedding_forward(const int32_t* tok, const Tensor& table, T* x, int n, int E) override {
    ops::embedding_forward<T>(tok, table.data_as<T>(), x, n, E);
  }
  void embedding_backward(const int32_t* tok, const T* dx, Tensor& dtable, int n, int E) override {
    ops::embedding_backward<T>(tok, dx, dtable.data_as<T>(), n, E);
  }
  double cross_entropy(T* logits, const int32_t* target, int n, int V, T scale, bool grad,
                       T* row_loss) override {
    return ops::cross_entropy_forward_backward<T>(logits, target, n, V, scale, grad, row_loss);
  }
  double distill_kl(const T* student, T* teacher, int n, int V, T temp, T scale, bool grad,
                    T* row_kl) override {
    return ops::distill_kl_forward_backward<T>(student, teacher, n, V, temp, scale, grad, row_kl);
  }
  bool has_distill_kl() const override { return true; }

  void attention_forward(const T* q, const T* k, const T* v, T* o, T* lse, const ops::AttnDims& a,
                         Workspace& ws) override {
    ops::attention_forward<T>(q, k, v, o, lse, a, static_cast<CpuWorkspace<T>&>(ws).attn);
  }
  void attention_backward(const T* q, const T* k, const T* v, const T* o, const T* lse, const T* dout,
                          T* dq, T* dk, T* dv, const ops::AttnDims& a, Workspace& ws) override {
    ops::attention_backward<T>(q, k, v, o, lse, dout, dq, dk, dv, a,
                               static_cast<CpuWorkspace<T>&>(ws).attn);
  }
  void kv_store(const ops::KvSlotView& slot, const int32_t* seq, const int32_t* pos, int n, const T* k,
                const T* v) override {
    if constexpr (std::is_same_v<T, float>) {
      ops::kv_store(slot, seq, pos, n, k, v);
    } else {
      fail("the KV cache computes in f32 (the f64 backend is for gradient checks)");
    }
  }
  void attention_cached(const ops::KvSlotView& slot, const std::vector<ops::AttnRun>& runs, const T* q,
                        int n_head, bool rotate_keys, const ops::RopeTable<T>& rt, T* out) override {
    if constexpr (std::is_same_v<T, float>) {
      ops::attention_cached(slot, runs, q, n_head, rotate_keys, rt, out);
    } else {
      fail("the KV cache computes in f32 (the f64 backend is for gradient checks)");
    }
  }

  void adamw_update(Tensor& p, Tensor& g, Tensor& m, Tensor& v, const ops::AdamWStep& h,
                    bool zero_grad) override {
    MLKV_CHECK(g.numel() == p.numel() && m.numel() == p.numel() && v.numel() == p.numel());
    ops::adamw_update<float>(p.data(), g.data(), m.data(), v.data(), p.numel(), h, zero_grad);
  }
  double sum_squares(const Tensor& g) override { return ops::sum_squares(g.data(), g.numel()); }

  void add(T* y, const T* x, int64_t n) override { ops::add_inplace<T>(y, x, n); }
  void copy(T* dst, const T* src, int64_t n) override {
    if (dst != src) std::memcpy(dst, src, sizeof(T) * static_cast<size_t>(n));
  }
  void zero(T* y, int64_t n) override { ops::zero<T>(y, n); }
  void gather_rows(const T* src, const int32_t* idx, int n, int E, T* dst) override {
    for (int i = 0; i < n; ++i) {
      std::memcpy(dst + int64_t{i} * E, src + int64_t{idx[i]} * E, sizeof(T) * static_cast<size_t>(E));
    }
  }
  void to_host(const T* src, T* host, int64_t n) override { copy(host, src, n); }
};

int g_device_index[2] = {0, 0};

CpuBackend<float> g_cpu_f32;
CpuBackend<double> g_cpu_f64;
Backend<float>* g_float_backends[2] = {&g_cpu_f32, nullptr};

}  // namespace

template <>
Backend<float>& backend<float>(Device device) {
  // A bad MLKV_ISA is reported here, when something is about to compute, rather than from inside
  // a kernel (or for commands that never compute).
  if (device == Device::kCpu) ops::cpu::active_isa();
#ifdef MLKV_HAVE_CUDA
  if (device == Device::kCuda && g_float_backends[1] == nullptr) {
    // Created on first use: it finds the GPU, its allocator and cuBLAS (throws naming the cause).
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    if (g_float_backends[1] == nullptr) g_float_backends[1] = cuda::make_backend(g_device_index[1]);
  }
#endif
  Backend<float>* b = g_float_backends[static_cast<int>(device)];
  MLKV_REQUIRE(b != nullptr, "device '", device_name(device),
               "' is not available: this build has no backend for it");
  return *b;
}

template <>
Backend<double>& backend<double>(Device device) {
  MLKV_REQUIRE(device == Device::kCpu, "f64 compute (gradient checks) exists on the CPU only");
  ops::cpu::active_isa();
  return g_cpu_f64;
}

bool has_backend(Device device) {
#ifdef MLKV_HAVE_CUDA
  if (device == Device::kCuda) return true;
#endif
  return g_float_backends[static_cast<int>(device)] != nullptr;
}

void set_device_index(Device device, int index) {
  MLKV_REQUIRE(index >= 0, "device index must be >= 0 (got ", index, ")");
  const int d = static_cast<int>(device);
  MLKV_REQUIRE(g_float_backends[d] == nullptr || g_device_index[d] == index || device == Device::kCpu,
               "the ", device_name(device), " backend already runs on device ", g_device_index[d],
               "; it cannot switch to ", index);
  MLKV_REQUIRE(device != Device::kCpu || index == 0, "the CPU has one device (cpu:0)");
  g_device_index[d] = index;
}

void register_backend(Device device, Backend<float>* b) {
  g_float_backends[static_cast<int>(device)] = b;
}

}  // namespace mlkv
