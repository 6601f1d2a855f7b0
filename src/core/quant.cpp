#include "core/quant.h"

#include <cmath>
#include <cstring>

#include "core/half.h"

namespace mlkv {

namespace {

// Whether the block's 32 values are all finite. A block holding a NaN or an infinity is stored
// with a NaN scale and zero values, so that it reads back as NaN (as an f32 row would carry it)
// rather than as finite numbers that hide it.
bool block_finite(const float* xb) {
  for (int i = 0; i < kQuantBlock; ++i) {
    if (!std::isfinite(xb[i])) return false;
  }
  return true;
}

// One block of 32 values as int8 q (|q| <= 127); returns its scale d = max|x| / 127, q =
// round(x / d): the rule of q8_0 rows and of the query. A non-finite block gives d = NaN, q = 0; a
// scale so small that its reciprocal overflows gives q = 0 (the values are 0 to f32 precision).
float quantize_block_q8(const float* xb, int8_t* q) {
  if (!block_finite(xb)) {
    std::memset(q, 0, kQuantBlock);
    return std::nanf("");
  }
  float amax = 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) amax = std::fmax(amax, std::fabs(xb[i]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f && std::isfinite(1.0f / d) ? 1.0f / d : 0.0f;
  for (int i = 0; i < kQuantBlock; ++i) q[i] = static_cast<int8_t>(std::lround(xb[i] * id));
  return d;
}

}  // namespace

void quantize_row_q8_0(const float* x, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, out += kQ8_0BlockBytes) {
    const float d = quantize_block_q8(x + b * kQuantBlock, reinterpret_cast<int8_t*>(out + 2));
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
  }
}

void quantize_query_q8(const float* x, int8_t* q, float* d, int64_t n) {
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    d[b] = quantize_block_q8(x + b * kQuantBlock, q + b * kQuantBlock);
  }
}

void hadamard32(float* x, int64_t n) {
  const float norm = 0.17677669529663687f;  // 1 / sqrt(32)
  for (int64_t b = 0; b < n / kQuantBlock; ++b) {
    float* v = x + b * kQuantBlock;
    for (int h = 1; h < kQuantBlock; h *= 2) {
      for (int i = 0; i < kQuantBlock; i += 2 * h) {
        for (int j = i; j < i + h; ++j) {
          const float a = v[j], c = v[j + h];
          v[j] = a + c;
          v[j + h] = a - c;
        }
      }
    }
    for (int i = 0; i < kQuantBlock; ++i) v[i] *= norm;
  }
}

void dequantize_row_q8_0(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, in += kQ8_0BlockBytes) {
    uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int i = 0; i < kQuantBlock; ++i) {
      y[b * kQuantBlock + i] = d * static_cast<float>(static_cast<int8_t>(in[2 + i]));
    }
  }
}

void quantize_row_q4_0(const float* x, void* dst, int64_t n) {
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, out += kQ4_0BlockBytes) {
    const float* xb = x + b * kQuantBlock;
    if (!block_finite(xb)) {
      const uint16_t nan = f32_to_f16(std::nanf(""));
      std::memcpy(out, &nan, 2);
      std::memset(out + 2, 0x88, kQuantBlock / 2);  // nibbles of 8: values 0
      continue;
    }
    float amax = 0.0f, m = 0.0f;
    for (int i = 0; i < kQuantBlock; ++i) {
      if (std::fabs(xb[i]) > amax) {
        amax = std::fabs(xb[i]);
        m = xb[i];
      }
    }
    const float d = m / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = f32_to_f16(d);
    std::memcpy(out, &dh, 2);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      // Clamped in float first, so a NaN becomes a defined nibble rather than undefined behaviour.
      const int q0 = static_cast<int>(std::fmax(0.0f, std::fmin(15.0f, xb[j] * id + 8.5f)));
      const int q1 =
          static_cast<int>(std::fmax(0.0f, std::fmin(15.0f, xb[j + kQuantBlock / 2] * id + 8.5f)));
      out[2 + j] = static_cast<uint8_t>(q0 | (q1 << 4));
    }
  }
}

void dequantize_row_q4_0(const void* src, float* y, int64_t n) {
  const auto* in = static_cast<const uint8_t*>(src);
  for (int64_t b = 0; b < n / kQuantBlock; ++b, in += kQ4_0BlockBytes) {
    uint16_t dh;
    std::memcpy(&dh, in, 2);
    const float d = f16_to_f32(dh);
    for (int j = 0; j < kQuantBlock / 2; ++j) {
      y[b * kQuantBlock + j] = d * static_cast<float>((in[2 + j] & 0x0F) - 8);
      y[b * kQuantBlock + j + kQuantBlock / 2] = d * static_cast<float>((in[2 + j] >> 4) - 8);
    }
  }
}

namespace {
template <typename T>
void pack_panels(const T* src, int64_t N, int64_t K, T* dst) {
  const int64_t n16 = N / kPanelRows * kPanelRows;
  for (int64_t p = 0; p < n16; p += kPanelRows) {
    T* panel = dst + p * K;
    for (int64_t i = 0; i < kPanelRows; ++i) {
      const T* row = src + (p + i) * K;
      for (int64_t k = 0; k < K; ++k) panel[k * kPanelRows + i] = row[k];
    }
  }
  for (int64_t i = n16 * K; i < N * K; ++i) dst[i] = src[i];
}

template <typename T>
void unpack_panels(const T* src, int64_t N, int64_t K, T* dst) {
  const int64_t n16 = N / kPanelRows * kPanelRows;
  for (int64_t p = 0; p < n16; p += kPanelRows) {
    const T* panel = src + p * K;
    for (int64_t i = 0; i < kPanelRows; ++i) {
      T* row = dst + (p + i) * K;
      for (int64_t k = 0; k < K; ++k) row[k] = panel[k * kPanelRows + i];
    }
  }
  for (int64_t i = n16 * K; i < N * K; ++i) dst[i] = src[i];
}
}  // namespace

void pack_panels16(const float* src, int64_t N, int64_t K, float* dst) { pack_panels(src, N, K, dst); }
void unpack_panels16(const float* src, int64_t N, int64_t K, float* dst) { unpack_panels(src, N, K, dst); }
void pack_panels16(const uint16_t* src, int64_t N, int64_t K, uint16_t* dst) { pack_panels(src, N, K, dst); }
void unpack_panels16(const uint16_t* src, int64_t N, int64_t K, uint16_t* dst) {
  unpack_panels(src, N, K, dst);
}

}  // namespace mlkv
