// Conversions between f32 and the 16-bit float formats found in checkpoints (IEEE f16, bfloat16).
// Scalar versions are exact reference conversions (round to nearest even); the bulk versions use
// F16C / AVX2 where the build enables them and fall back to the scalar loop otherwise.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mlkv {

inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

void f16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void f32_to_f16_n(const float* src, uint16_t* dst, size_t n);
void bf16_to_f32_n(const uint16_t* src, float* dst, size_t n);
void f32_to_bf16_n(const float* src, uint16_t* dst, size_t n);

}  // namespace mlkv
