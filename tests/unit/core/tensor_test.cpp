// Tensor (core/tensor.h): shapes, element types and devices, copies and moves, conversions between
// float formats, and the edge cases of tensors without elements.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <vector>

#include "core/check.h"
#include "core/half.h"
#include "core/tensor.h"

namespace mlkv {
namespace {

TEST(Tensor, ShapeTypeDeviceAndZeroFill) {
  Tensor t({3, 4}, DType::kF16);
  EXPECT_EQ(t.numel(), 12);
  EXPECT_EQ(t.nbytes(), 24u);
  EXPECT_EQ(t.dtype(), DType::kF16);
  EXPECT_EQ(t.device(), Device::kCpu);
  EXPECT_EQ(t.shape_str(), "[3, 4]");
  for (int i = 0; i < 12; ++i) EXPECT_EQ(t.data_as<uint16_t>()[i], 0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  Tensor d({5}, DType::kF64);
  EXPECT_EQ(d.nbytes(), 40u);
  d.data_as<double>()[4] = 2.5;
  EXPECT_EQ(d.data_as<double>()[4], 2.5);
}

// Blocks of 2 MiB or more start on a 2 MiB boundary (whole huge pages) and read as zeros to their
// last byte; sizes that are not a multiple of a page, many at once, freed in any order.
TEST(Tensor, LargeBlocksAreZeroAndStartOnA2MiBBoundary) {
  std::vector<std::unique_ptr<void, AlignedFree>> blocks;
  for (size_t n : {size_t{1} << 21, (size_t{5} << 20) + 123, (size_t{3} << 21) + 4096, size_t{(1 << 21) - 1}}) {
    auto b = aligned_alloc_zeroed(n);
    auto* p = static_cast<unsigned char*>(b.get());
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (n >= (size_t{1} << 21) ? size_t{1} << 21 : 64), 0u) << n;
    size_t nonzero = 0;
    for (size_t i = 0; i < n; i += 4093) nonzero += p[i] != 0;
    EXPECT_EQ(nonzero + p[n - 1], 0u) << n;
    p[0] = p[n - 1] = 7;  // writable to the end
    blocks.push_back(std::move(b));
  }
  blocks.erase(blocks.begin() + 1);
  blocks.clear();
}

// NaN and both infinities are found where they are, across the scan's chunks; the largest
// finite values, denormals and -0 are not.
TEST(Tensor, FirstNonFiniteFindsNaNAndInfinities) {
  std::vector<float> v(10000, 1.0f);
  v[1] = std::numeric_limits<float>::max();
  v[2] = -std::numeric_limits<float>::max();
  v[3] = std::numeric_limits<float>::denorm_min();
  v[4] = -0.0f;
  EXPECT_EQ(first_non_finite(v.data(), int64_t(v.size())), -1);
  EXPECT_EQ(first_non_finite(v.data(), 0), -1);
  for (int64_t at : {int64_t{0}, int64_t{4095}, int64_t{4096}, int64_t{9999}}) {
    for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()}) {
      std::vector<float> w = v;
      w[size_t(at)] = bad;
      if (at < 9999) w[9999] = std::nanf("");  // a later one does not hide the first
      EXPECT_EQ(first_non_finite(w.data(), int64_t(w.size())), at) << bad;
    }
  }
}

// The VmFlags of the mapping that holds p (/proc/self/smaps), "" when none is found.
std::string vm_flags(const void* p) {
  std::ifstream f("/proc/self/smaps");
  const auto a = reinterpret_cast<uintptr_t>(p);
  std::string line;
  bool inside = false;
  while (std::getline(f, line)) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      inside = a >= lo && a < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// Large blocks are advised onto huge pages (VmFlags "hg"); advise_small_pages turns that into
// "nh" (a KV cache that fills over time keeps 4 KiB pages).
TEST(Tensor, LargeBlocksAdviseHugePagesUnlessAskedNotTo) {
  if (std::getenv("MLKV_NO_HUGEPAGES") != nullptr) GTEST_SKIP() << "MLKV_NO_HUGEPAGES is set";
  auto b = aligned_alloc_zeroed(size_t{8} << 20);
  const std::string before = vm_flags(b.get());
  if (before.empty()) GTEST_SKIP() << "no /proc/self/smaps here";
  EXPECT_NE(before.find(" hg"), std::string::npos) << before;
  advise_small_pages(b.get(), size_t{8} << 20);
  const std::string after = vm_flags(b.get());
  EXPECT_NE(after.find(" nh"), std::string::npos) << after;
  EXPECT_EQ(after.find(" hg"), std::string::npos) << after;
}

TEST(Tensor, CopiesMovesAndEmptyTensors) {
  Tensor a({4});
  for (int i = 0; i < 4; ++i) a[i] = float(i) + 0.5f;
  Tensor b = a;  // a deep copy
  b[0] = 9.0f;
  EXPECT_EQ(a[0], 0.5f);
  Tensor c = std::move(b);
  EXPECT_EQ(c[0], 9.0f);
  EXPECT_TRUE(b.empty());  // NOLINT: moved-from is empty by contract
  const Tensor none;
  const Tensor copy = none;  // a default tensor copies as empty, not as a one-element scalar
  EXPECT_TRUE(copy.empty());
  EXPECT_EQ(copy.raw(), nullptr);
  const Tensor zero_rows({0, 4});
  EXPECT_TRUE(zero_rows.empty());
  EXPECT_EQ(zero_rows.to(DType::kF16).dtype(), DType::kF16);
  EXPECT_EQ(zero_rows.to(DType::kF16).shape(), zero_rows.shape());
  // Every conversion of an empty tensor, f32 included (no buffer on either side: no copy from or
  // to a null pointer, which UBSan reports), and copies of it.
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kF64}) {
    const Tensor e = zero_rows.to(t);
    EXPECT_TRUE(e.empty());
    EXPECT_TRUE(e.to(DType::kF32).empty());
    const Tensor ec = e;
    EXPECT_EQ(ec.shape(), zero_rows.shape());
  }
}

TEST(Tensor, ConversionsRoundOnceToNearestEven) {
  Tensor f({3});
  f[0] = 1.0f;
  f[1] = 1.0f + 1.0f / 4096;  // between two f16 values: ties to even
  f[2] = -65504.0f;
  const Tensor h = f.to(DType::kF16);
  EXPECT_EQ(h.dtype(), DType::kF16);
  EXPECT_EQ(f16_to_f32(h.data_as<uint16_t>()[1]), 1.0f);
  EXPECT_EQ(f16_to_f32(h.data_as<uint16_t>()[2]), -65504.0f);
  const Tensor back = h.to(DType::kF32);
  EXPECT_EQ(back[2], -65504.0f);
  const Tensor d = f.to(DType::kF64);
  EXPECT_EQ(d.data_as<double>()[1], static_cast<double>(f[1]));
  EXPECT_EQ(d.to(DType::kF32)[1], f[1]);
  EXPECT_EQ(f.to(DType::kBF16).to(DType::kF32)[0], 1.0f);
  EXPECT_THROW(Tensor({2}, DType::kI32).to(DType::kF16), Error);
  EXPECT_THROW(Tensor({0}, DType::kI32).to(DType::kF16), Error);  // no elements: the same rule
}

TEST(Tensor, DevicesWithoutABackendAreErrors) {
  EXPECT_EQ(parse_device("cpu"), Device::kCpu);
  int index = -1;
  EXPECT_EQ(parse_device("cuda:3", &index), Device::kCuda);
  EXPECT_EQ(index, 3);
  EXPECT_THROW(parse_device("tpu"), Error);
  EXPECT_THROW(parse_device("cuda:x"), Error);
  // This build registers no CUDA allocator: creating or moving a tensor there fails, elements or
  // not, naming the device.
  try {
    Tensor t({3}, DType::kF32, Device::kCuda);
    FAIL() << "a CUDA tensor without a CUDA backend";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tensor({0}, DType::kF32, Device::kCuda), Error);
  EXPECT_THROW(Tensor().to(Device::kCuda), Error);
  EXPECT_THROW(Tensor({2}).to(Device::kCuda), Error);
}

}  // namespace
}  // namespace mlkv
