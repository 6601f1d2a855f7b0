// The block codecs of core/quant.h: the query-side quantizer of integer attention against its
// definition (scale max|x| / 127, round to nearest, |q| <= 127) and the exact-integer identity
// x . y = sum over blocks of d_x d_y (q_x . q_y) that the integer attention kernels rely on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/half.h"
#include "core/quant.h"
#include "core/tensor.h"

namespace mlkv {
namespace {

TEST(QuantizeQuery, BlocksRoundToNearestWithinHalfAStep) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  const int n = 32 * 5;
  std::vector<float> x(n);
  for (float& v : x) v = nd(rng);
  for (int i = 32; i < 64; ++i) x[size_t(i)] = 0.0f;  // an all-zero block
  x[70] = -1e4f;                                       // one dominant value in block 2
  std::vector<int8_t> q(n);
  std::vector<float> d(n / 32);
  quantize_query_q8(x.data(), q.data(), d.data(), n);
  for (int b = 0; b < n / 32; ++b) {
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::fmax(amax, std::fabs(x[size_t(b * 32 + i)]));
    EXPECT_FLOAT_EQ(d[size_t(b)], amax / 127.0f) << "block " << b;
    bool hits_127 = false;
    for (int i = 0; i < 32; ++i) {
      const size_t j = size_t(b * 32 + i);
      EXPECT_LE(std::abs(int{q[j]}), 127);
      hits_127 |= std::abs(int{q[j]}) == 127;
      EXPECT_LE(std::fabs(x[j] - d[size_t(b)] * q[j]), 0.5001f * d[size_t(b)]) << "value " << j;
      if (amax == 0.0f) {
        EXPECT_EQ(q[j], 0);
      }
    }
    EXPECT_EQ(hits_127, amax > 0.0f) << "block " << b << ": the largest value maps to +-127";
  }
  EXPECT_EQ(q[70], -127);
}

TEST(QuantizeQuery, IntegerDotEqualsTheDotOfTheValuesHeld) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int n = 128;
  std::vector<float> x(n), y(n);
  for (float& v : x) v = nd(rng);
  for (float& v : y) v = nd(rng);
  std::vector<int8_t> qx(n), qy(n);
  std::vector<float> dx(n / 32), dy(n / 32);
  quantize_query_q8(x.data(), qx.data(), dx.data(), n);
  quantize_query_q8(y.data(), qy.data(), dy.data(), n);
  double by_blocks = 0.0, by_values = 0.0, exact = 0.0;
  for (int b = 0; b < n / 32; ++b) {
    int32_t s = 0;
    for (int i = b * 32; i < b * 32 + 32; ++i) s += int32_t{qx[size_t(i)]} * qy[size_t(i)];
    by_blocks += double(dx[size_t(b)]) * dy[size_t(b)] * s;
  }
  for (int i = 0; i < n; ++i) {
    by_values += double(dx[size_t(i / 32)]) * qx[size_t(i)] * (double(dy[size_t(i / 32)]) * qy[size_t(i)]);
    exact += double(x[size_t(i)]) * y[size_t(i)];
  }
  EXPECT_NEAR(by_blocks, by_values, 1e-9 * std::fabs(by_values) + 1e-12);
  // The quantization error of a 128-value dot of unit normals: each product off by at most
  // ~(|x| d_y + |y| d_x) / 2, d ~ 3 / 127.
  EXPECT_NEAR(by_blocks, exact, 0.15);
}

// A NaN or an infinity in a block makes that block read back as NaN (NaN scale), in both cache
// formats and in the query quantizer; the other blocks are untouched.
TEST(QuantizeBlocks, NonFiniteBlocksReadBackAsNaN) {
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> x(96);
    for (int i = 0; i < 96; ++i) x[size_t(i)] = 0.01f * float(i - 40);
    x[40] = bad;  // block 1
    std::vector<uint8_t> q8(3 * kQ8_0BlockBytes), q4(3 * kQ4_0BlockBytes);
    std::vector<float> y8(96), y4(96);
    quantize_row_q8_0(x.data(), q8.data(), 96);
    dequantize_row_q8_0(q8.data(), y8.data(), 96);
    quantize_row_q4_0(x.data(), q4.data(), 96);
    dequantize_row_q4_0(q4.data(), y4.data(), 96);
    std::vector<int8_t> qq(96);
    std::vector<float> dq(3);
    quantize_query_q8(x.data(), qq.data(), dq.data(), 96);
    for (int i = 0; i < 96; ++i) {
      const bool in_bad = i >= 32 && i < 64;
      EXPECT_EQ(std::isnan(y8[size_t(i)]), in_bad) << "q8_0 value " << i << " bad " << bad;
      EXPECT_EQ(std::isnan(y4[size_t(i)]), in_bad) << "q4_0 value " << i << " bad " << bad;
      if (in_bad) {
        EXPECT_EQ(qq[size_t(i)], 0);
      } else {
        EXPECT_NEAR(y8[size_t(i)], x[size_t(i)], 0.01f);
      }
    }
    EXPECT_TRUE(std::isnan(dq[1]));
    EXPECT_FALSE(std::isnan(dq[0]) || std::isnan(dq[2]));
  }
}

// hadamard32 is the 32 x 32 Sylvester Hadamard matrix over sqrt(32), H[i][j] = (-1)^popcount(i & j)
// / sqrt(32), block by block: against that matrix in double, its own inverse, and dot products kept.
TEST(Hadamard32, IsTheNormalizedSylvesterMatrixPerBlock) {
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  std::vector<float> x(96), y;
  for (float& v : x) v = nd(g);
  x[40] = 50.0f;  // an outlier: spread over its block
  y = x;
  hadamard32(y.data(), 96);
  for (int b = 0; b < 3; ++b) {
    for (int i = 0; i < 32; ++i) {
      double want = 0;
      for (int j = 0; j < 32; ++j) want += (__builtin_popcount(i & j) % 2 ? -1.0 : 1.0) * x[size_t(b * 32 + j)];
      want /= std::sqrt(32.0);
      EXPECT_NEAR(y[size_t(b * 32 + i)], want, 1e-5 * (1 + std::fabs(want))) << b << " " << i;
    }
  }
  float ymax = 0;
  for (int i = 32; i < 64; ++i) ymax = std::max(ymax, std::fabs(y[size_t(i)]));
  EXPECT_LT(ymax, 50.0f / 4);  // 50 / sqrt(32) = 8.8 plus the others' share
  std::vector<float> z = y;
  hadamard32(z.data(), 96);
  for (size_t i = 0; i < 96; ++i) {
    EXPECT_NEAR(z[i], x[i], 1e-5f * (1 + std::fabs(x[i]))) << "H H x != x at " << i;
  }
  // (H a) . (H b) = a . b within a block.
  std::vector<float> a(x.begin(), x.begin() + 32), bv(x.begin() + 32, x.begin() + 64);
  double ab = 0, hab = 0;
  for (int i = 0; i < 32; ++i) ab += double(a[size_t(i)]) * bv[size_t(i)];
  hadamard32(a.data(), 32);
  hadamard32(bv.data(), 32);
  for (int i = 0; i < 32; ++i) hab += double(a[size_t(i)]) * bv[size_t(i)];
  EXPECT_NEAR(hab, ab, 1e-4 * (1 + std::fabs(ab)));
}

// The F32_P16 layout by its definition (row n, column k at (n / 16) 16 K + 16 k + n % 16 for the
// rows of whole panels, row-major after them), through Tensor::to both ways, exact; and refused
// for a tensor that is not a matrix.
TEST(PanelLayout, PacksRowsOfSixteenSideBySide) {
  for (auto [N, K] : {std::pair<int64_t, int64_t>{13, 5}, {16, 3}, {50, 7}, {64, 33}}) {
    Tensor w({N, K});
    for (int64_t i = 0; i < N * K; ++i) w.data()[i] = float(i) * 0.5f - 3.0f;
    const Tensor p = w.to(DType::kF32P16);
    ASSERT_EQ(p.dtype(), DType::kF32P16);
    ASSERT_EQ(p.nbytes(), w.nbytes());
    const float* pv = static_cast<const float*>(p.raw());
    const int64_t n16 = N / 16 * 16;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t at = n < n16 ? (n / 16) * 16 * K + 16 * k + n % 16 : n * K + k;
        ASSERT_EQ(pv[at], w.data()[n * K + k]) << "N " << N << " K " << K << " row " << n << " col " << k;
      }
    }
    const Tensor back = p.to(DType::kF32);
    for (int64_t i = 0; i < N * K; ++i) ASSERT_EQ(back.data()[i], w.data()[i]);
    const Tensor h = p.to(DType::kF16);  // through f32
    EXPECT_EQ(h.to(DType::kF32).data()[K + 1], w.to(DType::kF16).to(DType::kF32).data()[K + 1]);
    // 16-bit panels: the same values as the row-major f16 / bf16 tensor, in the same layout.
    for (auto [panel, plain] : {std::pair{DType::kF16P16, DType::kF16}, {DType::kBF16P16, DType::kBF16}}) {
      const Tensor hp = w.to(panel), hr = w.to(plain);
      ASSERT_EQ(hp.nbytes(), hr.nbytes());
      const Tensor a = hp.to(DType::kF32), r = hr.to(DType::kF32);
      for (int64_t i = 0; i < N * K; ++i) ASSERT_EQ(a.data()[i], r.data()[i]) << dtype_name(panel);
      const auto* hv = static_cast<const uint16_t*>(hp.raw());
      const auto* rv = static_cast<const uint16_t*>(hr.raw());
      if (N >= 16) {
        EXPECT_EQ(hv[16 * 1 + 2], rv[2 * K + 1]) << "row 2, column 1 of the first panel";
      }
    }
  }
  EXPECT_THROW(Tensor({64}).to(DType::kF32P16), Error);
  EXPECT_THROW(Tensor({2, 16, 4}).to(DType::kF32P16), Error);
}

}  // namespace
}  // namespace mlkv
