#include "core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include <sys/mman.h>

#include "core/check.h"

namespace mlkv {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
    case DType::kF64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
    case DType::kU8: return "U8";
    case DType::kF64: return "F64";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const struct {
    const char* name;
    DType t;
  } kTable[] = {{"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
                {"I32", DType::kI32}, {"I64", DType::kI64}, {"U8", DType::kU8},
                {"F64", DType::kF64}};
  for (const auto& e : kTable) {
    if (name == e.name) {
      *out = e.t;
      return true;
    }
  }
  return false;
}

void AlignedFree::operator()(void* p) const noexcept {
  if (mapped_bytes) {
    munmap(p, mapped_bytes);
  } else {
    std::free(p);
  }
}

std::unique_ptr<void, AlignedFree> aligned_alloc_zeroed(size_t n_bytes) {
  if (n_bytes == 0) return nullptr;
  constexpr size_t kMmapThreshold = size_t{1} << 21;
  if (n_bytes >= kMmapThreshold) {
    void* p = mmap(nullptr, n_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return std::unique_ptr<void, AlignedFree>(p, AlignedFree{n_bytes});
  }
  size_t rounded = (n_bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return std::unique_ptr<void, AlignedFree>(p);
}

Tensor::Tensor(std::vector<int64_t> shape) : shape_(std::move(shape)) {
  numel_ = 1;
  for (int64_t d : shape_) {
    MLKV_CHECK(d >= 0);
    numel_ *= d;
  }
  buf_ = aligned_alloc_zeroed(static_cast<size_t>(numel_) * sizeof(float));
}

Tensor::Tensor(const Tensor& other) : shape_(other.shape_), numel_(other.numel_) {
  buf_ = aligned_alloc_zeroed(static_cast<size_t>(numel_) * sizeof(float));
  if (numel_ > 0) std::memcpy(data(), other.data(), static_cast<size_t>(numel_) * sizeof(float));
}

Tensor& Tensor::operator=(const Tensor& other) {
  if (this != &other) {
    Tensor copy(other);
    *this = std::move(copy);
  }
  return *this;
}

void Tensor::zero() {
  if (numel_ > 0) std::memset(data(), 0, static_cast<size_t>(numel_) * sizeof(float));
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape_[i]);
  }
  return s + "]";
}

}  // namespace mlkv
