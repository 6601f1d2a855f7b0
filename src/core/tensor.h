// Tensor: an owned, 64-byte aligned, row-major f32 array with a shape. Weights, gradients,
// optimizer moments and activations are all Tensors; kernels take raw pointers plus sizes.
// This is deliberately not a general n-d array library: no strides, no views, no broadcasting.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mlkv {

// Element types of tensors in files and caches. Compute is f32.
enum class DType { kF32, kF16, kBF16, kI32, kI64, kU8, kF64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // safetensors spelling: "F32", "F16", "BF16", ...
// Parses a safetensors dtype string; returns false for an unknown one.
bool dtype_from_name(const std::string& name, DType* out);

// Frees what aligned_alloc_zeroed returned: heap blocks with free(), large blocks with munmap().
struct AlignedFree {
  size_t mapped_bytes = 0;  // non-zero: the block came from mmap and has this length
  void operator()(void* p) const noexcept;
};

// Allocates n bytes aligned to 64 and zero-filled. Large blocks come straight from anonymous
// mmap, so their pages are committed only when first touched (a big KV cache costs nothing until
// it is used).
std::unique_ptr<void, AlignedFree> aligned_alloc_zeroed(size_t n_bytes);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::vector<int64_t> shape);  // zero-filled

  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);

  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i)]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }

  float* data() { return static_cast<float*>(buf_.get()); }
  const float* data() const { return static_cast<const float*>(buf_.get()); }
  float& operator[](int64_t i) { return data()[i]; }
  float operator[](int64_t i) const { return data()[i]; }

  void zero();
  std::string shape_str() const;  // "[768, 2304]"

 private:
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::unique_ptr<void, AlignedFree> buf_;
};

}  // namespace mlkv
