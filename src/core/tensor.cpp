#include "core/tensor.h"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#include <sys/mman.h>

#include "core/check.h"
#include "core/half.h"
#include "core/quant.h"

namespace mlkv {

namespace {

constexpr size_t kMmapThreshold = size_t{1} << 21;

// Host memory: aligned heap blocks, or anonymous mmap for large ones.
class CpuAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override { return aligned_alloc_zeroed(bytes).release(); }
  void deallocate(void* p, size_t bytes) noexcept override {
    AlignedFree{bytes >= kMmapThreshold ? bytes : 0}(p);
  }
  // An empty tensor has no buffer (null): memcpy wants valid pointers even for 0 bytes.
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
  }
  void to_host(void* host, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(host, src, bytes);
  }
  void from_host(void* dst, const void* host, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host, bytes);
  }
};

CpuAllocator g_cpu_allocator;
DeviceAllocator* g_allocators[2] = {&g_cpu_allocator, nullptr};

}  // namespace

const char* device_name(Device d) { return d == Device::kCpu ? "cpu" : "cuda"; }

Device parse_device(const std::string& s, int* index) {
  if (index) *index = 0;
  if (s == "cpu") return Device::kCpu;
  if (s == "cuda") return Device::kCuda;
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.size() < 9 &&
      s.find_first_not_of("0123456789", 5) == std::string::npos) {
    if (index) *index = std::atoi(s.c_str() + 5);
    return Device::kCuda;
  }
  fail("unknown device '", s, "' (known: cpu, cuda, cuda:N)");
}

DeviceAllocator& device_allocator(Device d) {
  DeviceAllocator* a = g_allocators[static_cast<int>(d)];
  MLKV_REQUIRE(a != nullptr, "device '", device_name(d),
               "' is not available: this build has no backend for it");
  return *a;
}

void register_device_allocator(Device d, DeviceAllocator* a) { g_allocators[static_cast<int>(d)] = a; }

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
    case DType::kU8: return 1;
    case DType::kF64: return 8;
    case DType::kQ8_0: return 0;
    case DType::kQ4_0: return 0;
    case DType::kF32P16: return 4;
    case DType::kF16P16: return 2;
    case DType::kBF16P16: return 2;
  }
  return 0;
}

int dtype_block_values(DType t) {
  return t == DType::kQ8_0 || t == DType::kQ4_0 ? kQuantBlock : 1;
}

size_t dtype_row_bytes(DType t, int64_t n) {
  switch (t) {
    case DType::kQ8_0: return static_cast<size_t>(n / kQuantBlock) * kQ8_0BlockBytes;
    case DType::kQ4_0: return static_cast<size_t>(n / kQuantBlock) * kQ4_0BlockBytes;
    default: return static_cast<size_t>(n) * dtype_size(t);
  }
}

bool dtype_is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64 ||
         t == DType::kQ8_0 || t == DType::kQ4_0 || dtype_is_panels(t);
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
    case DType::kQ8_0: return "Q8_0";
    case DType::kQ4_0: return "Q4_0";
    case DType::kF32P16: return "F32_P16";
    case DType::kF16P16: return "F16_P16";
    case DType::kBF16P16: return "BF16_P16";
  }
  return "?";
}

bool dtype_from_name(const std::string& name, DType* out) {
  static const struct {
    const char* name;
    DType t;
  } kTable[] = {{"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
                {"I32", DType::kI32}, {"I64", DType::kI64}, {"U8", DType::kU8},
                {"F64", DType::kF64}, {"Q8_0", DType::kQ8_0}, {"Q4_0", DType::kQ4_0}};
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

void advise_small_pages(void* p, size_t n_bytes) {
  if (p != nullptr && n_bytes >= kMmapThreshold) madvise(p, n_bytes, MADV_NOHUGEPAGE);
}

int64_t first_non_finite(const float* p, int64_t n) {
  constexpr int64_t kChunk = 4096;
  for (int64_t i0 = 0; i0 < n; i0 += kChunk) {
    const int64_t i1 = n < i0 + kChunk ? n : i0 + kChunk;
    uint32_t bad = 0;  // an all-ones exponent: NaN or infinity
    for (int64_t i = i0; i < i1; ++i) {
      uint32_t b;
      std::memcpy(&b, p + i, 4);
      bad |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (bad == 0) continue;
    for (int64_t i = i0; i < i1; ++i) {
      if (!std::isfinite(p[i])) return i;
    }
  }
  return -1;
}

std::unique_ptr<void, AlignedFree> aligned_alloc_zeroed(size_t n_bytes) {
  if (n_bytes == 0) return nullptr;
  if (n_bytes >= kMmapThreshold) {
    static const bool huge = [] {
      const char* e = std::getenv("MLKV_NO_HUGEPAGES");
      return e == nullptr || *e == '\0' || std::strcmp(e, "0") == 0;
    }();
    // Map 2 MiB more, keep the part from the first 2 MiB boundary (the rest goes back at once), so
    // that every whole 2 MiB of the block can be one huge page.
    constexpr size_t kHuge = size_t{1} << 21, kPage = 4096;
    const size_t len = (n_bytes + kPage - 1) / kPage * kPage;
    char* p = static_cast<char*>(
        mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (p == MAP_FAILED) throw std::bad_alloc();
    char* a = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) / kHuge * kHuge);
    if (a > p) munmap(p, static_cast<size_t>(a - p));
    if (p + len + kHuge > a + len) munmap(a + len, static_cast<size_t>(p + len + kHuge - (a + len)));
    if (huge) madvise(a, len, MADV_HUGEPAGE);  // advice: an error (THP disabled) changes nothing
    return std::unique_ptr<void, AlignedFree>(a, AlignedFree{n_bytes});
  }
  size_t rounded = (n_bytes + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded);
  return std::unique_ptr<void, AlignedFree>(p);
}

Tensor::Tensor(std::vector<int64_t> shape, DType dtype, Device device)
    : shape_(std::move(shape)), dtype_(dtype), device_(device) {
  numel_ = 1;
  for (int64_t d : shape_) {
    MLKV_CHECK(d >= 0);
    numel_ *= d;
  }
  MLKV_REQUIRE(dtype_block_values(dtype_) == 1 ||
                   (!shape_.empty() && shape_.back() % dtype_block_values(dtype_) == 0),
               "a ", dtype_name(dtype_), " tensor needs a last dimension that is a multiple of ",
               dtype_block_values(dtype_), " (shape ", shape_str(), ")");
  DeviceAllocator& mem = device_allocator(device_);  // even for no elements: the device must exist
  if (numel_ > 0) buf_ = mem.allocate(nbytes());
}

Tensor::~Tensor() { release(); }

void Tensor::release() noexcept {
  if (buf_ != nullptr) device_allocator(device_).deallocate(buf_, nbytes());
  buf_ = nullptr;
}

Tensor::Tensor(Tensor&& o) noexcept
    : shape_(std::move(o.shape_)), numel_(o.numel_), dtype_(o.dtype_), device_(o.device_),
      buf_(o.buf_) {
  o.buf_ = nullptr;
  o.numel_ = 0;
  o.shape_.clear();
}

Tensor& Tensor::operator=(Tensor&& o) noexcept {
  if (this != &o) {
    release();
    shape_ = std::move(o.shape_);
    numel_ = o.numel_;
    dtype_ = o.dtype_;
    device_ = o.device_;
    buf_ = o.buf_;
    o.buf_ = nullptr;
    o.numel_ = 0;
    o.shape_.clear();
  }
  return *this;
}

Tensor::Tensor(const Tensor& o)
    : shape_(o.shape_), numel_(o.numel_), dtype_(o.dtype_), device_(o.device_) {
  // numel, not the shape, says whether there is data: a default (empty) tensor has shape {}.
  if (numel_ > 0) {
    DeviceAllocator& mem = device_allocator(device_);
    buf_ = mem.allocate(nbytes());
    mem.copy(buf_, o.buf_, nbytes());
  }
}

Tensor& Tensor::operator=(const Tensor& o) {
  if (this != &o) {
    Tensor copy(o);
    *this = std::move(copy);
  }
  return *this;
}

namespace {
template <typename T>
bool dtype_matches(DType d) {
  if constexpr (std::is_same_v<T, uint16_t>) return d == DType::kF16 || d == DType::kBF16;
  if constexpr (std::is_same_v<T, uint8_t>) {
    return d == DType::kU8 || d == DType::kQ8_0 || d == DType::kQ4_0;  // raw bytes of blocks
  }
  if constexpr (std::is_same_v<T, int64_t>) return d == DType::kI64;
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, int32_t>) {
    return d == dtype_of<T>();
  }
  return false;
}
}  // namespace

template <typename T>
T* Tensor::data_as() {
  MLKV_CHECK(numel_ == 0 || dtype_matches<T>(dtype_));
  return static_cast<T*>(buf_);
}

template <typename T>
const T* Tensor::data_as() const {
  MLKV_CHECK(numel_ == 0 || dtype_matches<T>(dtype_));
  return static_cast<const T*>(buf_);
}

template float* Tensor::data_as<float>();
template const float* Tensor::data_as<float>() const;
template double* Tensor::data_as<double>();
template const double* Tensor::data_as<double>() const;
template uint16_t* Tensor::data_as<uint16_t>();
template const uint16_t* Tensor::data_as<uint16_t>() const;
template int32_t* Tensor::data_as<int32_t>();
template const int32_t* Tensor::data_as<int32_t>() const;
template uint8_t* Tensor::data_as<uint8_t>();
template const uint8_t* Tensor::data_as<uint8_t>() const;
template int64_t* Tensor::data_as<int64_t>();
template const int64_t* Tensor::data_as<int64_t>() const;

void Tensor::zero() {
  if (numel_ == 0) return;
  if (device_ == Device::kCpu) {
    std::memset(buf_, 0, nbytes());
  } else {
    std::vector<char> z(nbytes(), 0);
    device_allocator(device_).from_host(buf_, z.data(), z.size());
  }
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape_[i]);
  }
  return s + "]";
}

Tensor Tensor::to(DType dt) const {
  MLKV_REQUIRE(device_ == Device::kCpu, "converting a ", device_name(device_),
               " tensor: copy it to the CPU first");
  if (dt == dtype_) return *this;
  MLKV_REQUIRE(dtype_is_float(dtype_) && dtype_is_float(dt), "cannot convert a ", dtype_name(dtype_),
               " tensor to ", dtype_name(dt));
  if (numel_ == 0) {
    Tensor same(*this);
    same.dtype_ = dt;
    return same;
  }
  MLKV_REQUIRE((!dtype_is_panels(dt) && !dtype_is_panels(dtype_)) || shape_.size() == 2,
               "the panel layouts are for matrices (got a tensor of shape ", shape_str(), ")");
  Tensor out(shape_, dt, Device::kCpu);
  const size_t n = static_cast<size_t>(numel_);
  // Through f32 (every conversion here is exact into f32 or rounds once out of it), except
  // f64 <-> f32 directly.
  std::vector<float> tmp;
  const float* src = nullptr;
  switch (dtype_) {
    case DType::kF32: src = data_as<float>(); break;
    case DType::kF16: tmp.resize(n); f16_to_f32_n(data_as<uint16_t>(), tmp.data(), n); src = tmp.data(); break;
    case DType::kBF16: tmp.resize(n); bf16_to_f32_n(data_as<uint16_t>(), tmp.data(), n); src = tmp.data(); break;
    case DType::kF64: {
      tmp.resize(n);
      const double* d = data_as<double>();
      for (size_t i = 0; i < n; ++i) tmp[i] = static_cast<float>(d[i]);
      src = tmp.data();
      break;
    }
    case DType::kQ8_0: tmp.resize(n); dequantize_row_q8_0(raw(), tmp.data(), numel_); src = tmp.data(); break;
    case DType::kQ4_0: tmp.resize(n); dequantize_row_q4_0(raw(), tmp.data(), numel_); src = tmp.data(); break;
    case DType::kF32P16:
      tmp.resize(n);
      unpack_panels16(static_cast<const float*>(raw()), shape_[0], shape_[1], tmp.data());
      src = tmp.data();
      break;
    case DType::kF16P16:
    case DType::kBF16P16: {
      std::vector<uint16_t> h(n);
      unpack_panels16(static_cast<const uint16_t*>(raw()), shape_[0], shape_[1], h.data());
      tmp.resize(n);
      if (dtype_ == DType::kF16P16) {
        f16_to_f32_n(h.data(), tmp.data(), n);
      } else {
        bf16_to_f32_n(h.data(), tmp.data(), n);
      }
      src = tmp.data();
      break;
    }
    default: fail("cannot convert a ", dtype_name(dtype_), " tensor to ", dtype_name(dt));
  }
  switch (dt) {
    case DType::kF32:
      if (n > 0) std::memcpy(out.raw(), src, n * 4);
      break;
    case DType::kF16: f32_to_f16_n(src, out.data_as<uint16_t>(), n); break;
    case DType::kBF16: f32_to_bf16_n(src, out.data_as<uint16_t>(), n); break;
    case DType::kF64: {
      double* d = out.data_as<double>();
      for (size_t i = 0; i < n; ++i) d[i] = static_cast<double>(src[i]);
      break;
    }
    case DType::kQ8_0: quantize_row_q8_0(src, out.raw(), numel_); break;  // blocks run along rows
    case DType::kQ4_0: quantize_row_q4_0(src, out.raw(), numel_); break;
    case DType::kF32P16: pack_panels16(src, shape_[0], shape_[1], static_cast<float*>(out.raw())); break;
    case DType::kF16P16:
    case DType::kBF16P16: {
      std::vector<uint16_t> h(n);
      if (dt == DType::kF16P16) {
        f32_to_f16_n(src, h.data(), n);
      } else {
        f32_to_bf16_n(src, h.data(), n);
      }
      pack_panels16(h.data(), shape_[0], shape_[1], static_cast<uint16_t*>(out.raw()));
      break;
    }
    default: fail("cannot convert a ", dtype_name(dtype_), " tensor to ", dtype_name(dt));
  }
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device_) return *this;
  if (numel_ == 0) {
    device_allocator(dev);  // throws for a device without a backend
    Tensor out(*this);
    out.device_ = dev;
    return out;
  }
  Tensor out(shape_, dtype_, dev);
  if (device_ == Device::kCpu) {
    device_allocator(dev).from_host(out.buf_, buf_, nbytes());
  } else if (dev == Device::kCpu) {
    device_allocator(device_).to_host(out.buf_, buf_, nbytes());
  } else {
    std::vector<char> host(nbytes());
    device_allocator(device_).to_host(host.data(), buf_, host.size());
    device_allocator(dev).from_host(out.buf_, host.data(), host.size());
  }
  return out;
}

}  // namespace mlkv
