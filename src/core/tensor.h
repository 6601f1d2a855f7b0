// Tensor: an owned, row-major array with a shape, an element type and a device. Weights, gradients,
// optimizer moments, activations and KV-cache storage are all Tensors; kernels take raw pointers
// (data_as<T>()) plus sizes. Memory comes from the device's allocator (core/device.h): on the CPU
// 64-byte aligned and zero-filled, large blocks straight from mmap (pages committed on first
// touch). This is deliberately not a general n-d array library: no strides, no views, no
// broadcasting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"

namespace mlkv {

// Element types of tensors in files, caches and compute. Q8_0 and Q4_0 are block formats
// (core/quant.h: 32 values per block with a shared scale); the rest hold one value per element.
// F32_P16 (F16_P16, BF16_P16) is f32 (f16, bf16) in a layout for the decode GEMV, never in a
// file: a matrix [N, K] stored as N / 16 panels of [K][16] (row n, column k of panel p = n / 16 at
// p 16 K + 16 k + n % 16), the last N % 16 rows row-major after them (core/quant.h:
// pack_panels16).
enum class DType { kF32, kF16, kBF16, kI32, kI64, kU8, kF64, kQ8_0, kQ4_0, kF32P16, kF16P16, kBF16P16 };

// Whether t is one of the panel layouts (F32_P16, F16_P16, BF16_P16).
inline bool dtype_is_panels(DType t) {
  return t == DType::kF32P16 || t == DType::kF16P16 || t == DType::kBF16P16;
}

// Bytes of one element; for a block format, 0 (use dtype_row_bytes).
size_t dtype_size(DType t);
// Values per block: 32 for Q8_0 / Q4_0, 1 otherwise.
int dtype_block_values(DType t);
// Bytes of n values (n a multiple of dtype_block_values): n * size, or n / 32 blocks.
size_t dtype_row_bytes(DType t, int64_t n);
// Whether t is a floating format values can be converted to and from (F32, F16, BF16, F64, Q8_0,
// Q4_0; the panel layouts for matrices only).
bool dtype_is_float(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", "BF16", ...
// Parses a safetensors dtype string; returns false for an unknown one.
bool dtype_from_name(const std::string& name, DType* out);
// The DType of a C++ element type (float, double, uint16_t is not deducible: F16 vs BF16).
template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() { return DType::kF32; }
template <>
constexpr DType dtype_of<double>() { return DType::kF64; }
template <>
constexpr DType dtype_of<int32_t>() { return DType::kI32; }

// The index of the first NaN or infinity among p[0, n), or -1 when every value is finite (one
// vectorisable pass; a checkpoint's weights are checked with it as they load).
int64_t first_non_finite(const float* p, int64_t n);

// Asks that the untouched pages of a large host block [p, p + n_bytes) from aligned_alloc_zeroed stay
// 4 KiB pages (MADV_NOHUGEPAGE): for memory filled sparsely over time, where a 2 MiB page per first
// touch would commit (and zero) far more than is used. Smaller blocks: nothing to do.
void advise_small_pages(void* p, size_t n_bytes);

// Frees what aligned_alloc_zeroed returned: heap blocks with free(), large blocks with munmap().
struct AlignedFree {
  size_t mapped_bytes = 0;  // non-zero: the block came from mmap and has this length
  void operator()(void* p) const noexcept;
};

// Allocates n bytes aligned to 64 and zero-filled (host memory). Large blocks (2 MiB or more) come
// straight from anonymous mmap, so their pages are committed only when first touched; they start
// on a 2 MiB boundary and ask for transparent huge pages (madvise MADV_HUGEPAGE, which Linux
// honours unless THP is "never"): streaming weights and a KV cache through 4 KiB pages costs a
// TLB miss per page (decode attention over a q8_0 cache in DRAM ran 1.3x faster on 2 MiB pages,
// 2-core Xeon). MLKV_NO_HUGEPAGES=1 in the environment keeps 4 KiB pages.
std::unique_ptr<void, AlignedFree> aligned_alloc_zeroed(size_t n_bytes);

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled. Throws mlkv::Error for a device without a backend, or a block-format tensor
  // whose last dimension is not a multiple of the block.
  explicit Tensor(std::vector<int64_t> shape, DType dtype = DType::kF32,
                  Device device = Device::kCpu);
  ~Tensor();

  Tensor(Tensor&& other) noexcept;
  Tensor& operator=(Tensor&& other) noexcept;
  Tensor(const Tensor& other);  // a copy on the same device
  Tensor& operator=(const Tensor& other);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return dtype_row_bytes(dtype_, numel_); }

  // Typed access; checks (MLKV_CHECK) that T matches the element type (uint16_t: F16 or BF16).
  template <typename T>
  T* data_as();
  template <typename T>
  const T* data_as() const;
  void* raw() { return buf_; }
  const void* raw() const { return buf_; }

  // f32 host tensors, the common case.
  float* data() { return data_as<float>(); }
  const float* data() const { return data_as<float>(); }
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }

  void zero();
  std::string shape_str() const;  // "[768, 2304]"

  // A copy with another element type (host tensors of F32, F16, BF16, F64, Q8_0, Q4_0; rounding
  // to nearest even, or core/quant.h's rule; a block format needs a last dimension that is a
  // multiple of 32), or on another device.
  Tensor to(DType dtype) const;
  Tensor to(Device device) const;

 private:
  void release() noexcept;

  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::kF32;
  Device device_ = Device::kCpu;
  void* buf_ = nullptr;
};

}  // namespace mlkv
