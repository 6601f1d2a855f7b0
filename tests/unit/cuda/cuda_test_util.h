// Helpers of the CUDA tests (tests/unit/cuda): whether a CUDA backend can be used (else the test
// skips, and ctest reports it as skipped), host <-> device copies of test arrays, and the error
// measure every comparison uses. Plain C++ on the backend interface (kernels/backend.h): no CUDA
// header, so the binary builds in every build and runs wherever a GPU is.
//
// The reference is always the CPU backend on the same inputs. Tolerances are normalised errors:
// max_i |got_i - want_i| / max(max_i |want_i|, floor), so a bound says "this fraction of the
// array's scale" (f32 products and sums in another order: 1e-4; weights or activations rounded to
// f16 / bf16 on one side: 2e-3 / 1e-2). Exact results (copies, gathers, stores of f32/f16/bf16
// rows) are compared bit for bit.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"
#include "kernels/backend.h"

namespace mlkv::cuda_test {

// f32 products and sums in another order (cuBLAS, tree reductions, fused kernels).
inline constexpr double kF32Tol = 1e-4;

// MLKV_CUDA_TESTS_ON_CPU=1 runs the suite with the CPU backend standing in for the GPU: a check of
// the tests themselves (shapes, the semantics they assume, that nothing crashes) where no GPU is.
// Every comparison is then the CPU against itself: it says nothing about the CUDA backend.
inline bool self_check_on_cpu() {
  const char* e = std::getenv("MLKV_CUDA_TESTS_ON_CPU");
  return e != nullptr && std::string(e) == "1";
}
// The device under test: Device::kCuda (the CPU in the self-check).
inline Device gpu_device() { return self_check_on_cpu() ? Device::kCpu : Device::kCuda; }

// The CUDA backend, or nullptr with *why saying why it cannot be used: a build without it
// (-DMLKV_CUDA=OFF), or no GPU / driver (creating it throws mlkv::Error).
inline Backend<float>* cuda_backend_or_null(std::string* why) {
  if (self_check_on_cpu()) return &backend<float>(Device::kCpu);
  if (!has_backend(Device::kCuda)) {
    *why = "this build has no CUDA backend (configure with -DMLKV_CUDA=ON to test it)";
    return nullptr;
  }
  try {
    return &backend<float>(Device::kCuda);
  } catch (const std::exception& e) {
    *why = std::string("the CUDA backend cannot start here (no usable GPU?): ") + e.what();
    return nullptr;
  }
}

// Every CUDA test derives from this: SetUp skips the test when the CUDA backend is unavailable.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    gpu_ = cuda_backend_or_null(&why);
    if (gpu_ == nullptr) GTEST_SKIP() << why;
  }
  Backend<float>& gpu() { return *gpu_; }
  static Backend<float>& cpu() { return backend<float>(Device::kCpu); }

 private:
  Backend<float>* gpu_ = nullptr;
};

template <typename P>
class CudaParamTest : public CudaTest, public ::testing::WithParamInterface<P> {};

inline std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<int32_t> rand_ints(size_t n, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(rng() % static_cast<uint32_t>(hi));
  return v;
}

// A host f32 tensor holding v (shape [v.size()] unless given).
inline Tensor host_tensor(const std::vector<float>& v, std::vector<int64_t> shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  Tensor t(std::move(shape));
  MLKV_CHECK(t.numel() == static_cast<int64_t>(v.size()));
  if (!v.empty()) std::memcpy(t.data(), v.data(), v.size() * sizeof(float));
  return t;
}

// An f32 tensor holding v on a device.
inline Tensor on(Device d, const std::vector<float>& v, std::vector<int64_t> shape = {}) {
  return host_tensor(v, std::move(shape)).to(d);
}

// The values of an f32 tensor on any device.
inline std::vector<float> values(const Tensor& t) {
  const Tensor h = t.to(Device::kCpu);
  const float* p = h.data_as<float>();
  return std::vector<float>(p, p + h.numel());
}

// v rounded through an element type and back (f16 / bf16: round to nearest even).
inline std::vector<float> rounded(const std::vector<float>& v, DType dt) {
  return values(host_tensor(v).to(dt).to(DType::kF32));
}

// max |got - want| / max(max |want|, floor); infinity when got has a non-finite entry that want
// does not, or the sizes differ.
inline double norm_err(const std::vector<float>& got, const std::vector<float>& want,
                       double floor = 1e-30) {
  if (got.size() != want.size()) return INFINITY;
  double scale = floor, e = 0;
  for (float w : want) scale = std::max(scale, std::fabs(double(w)));
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isfinite(want[i]) && !std::isfinite(got[i])) return INFINITY;
    e = std::max(e, std::fabs(double(got[i]) - double(want[i])));
  }
  return e / scale;
}

// Expects norm_err(got, want) <= tol and prints the measured error (the bound should sit just
// above what is seen: record it).
inline void expect_close(const std::string& what, const std::vector<float>& got,
                         const std::vector<float>& want, double tol, double floor = 1e-30) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double e = norm_err(got, want, floor);
  EXPECT_LE(e, tol) << what << ": normalised error " << e << " over " << got.size()
                    << " values (bound " << tol << ")";
  std::printf("  %-58s err %.2e (bound %.0e)\n", what.c_str(), e, tol);
}

inline void expect_close(const std::string& what, const Tensor& got, const Tensor& want, double tol,
                         double floor = 1e-30) {
  expect_close(what, values(got), values(want), tol, floor);
}

// The same tensor on the CPU and on the GPU (inputs and outputs of one op on both backends).
struct Pair {
  Tensor c, g;
  Pair() = default;
  explicit Pair(const std::vector<float>& v, std::vector<int64_t> shape = {})
      : c(host_tensor(v, shape)), g(on(gpu_device(), v, shape)) {}
  // zero-filled
  static Pair zeros(int64_t n) { return Pair(std::vector<float>(static_cast<size_t>(n), 0.0f)); }
  float* cp() { return c.empty() ? nullptr : c.data(); }
  float* gp() { return g.empty() ? nullptr : g.data_as<float>(); }
  void expect(const std::string& what, double tol, double floor = 1e-30) const {
    expect_close(what, g, c, tol, floor);
  }
  void expect_equal(const std::string& what) const {
    const auto a = values(g), b = values(c);
    ASSERT_EQ(a.size(), b.size()) << what;
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && !bad++) first = i;
    }
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " values differ, first at " << first << " (gpu "
                       << a[first] << " cpu " << b[first] << ")";
  }
};

}  // namespace mlkv::cuda_test
