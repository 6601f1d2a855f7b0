// Block formats for quantized storage (KV cache rows, weight rows), the layouts of llama.cpp's
// q8_0 and q4_0 so that figures compare like for like:
//   q8_0: blocks of 32 values: an f16 scale d, then 32 int8 q;        x = d q          (34 bytes)
//   q4_0: blocks of 32 values: an f16 scale d, then 16 bytes of nibbles, value j in the low nibble
//         of byte j and value j + 16 in its high nibble;                 x = d (q - 8)    (18 bytes)
// Quantizing: q8_0 d = max|x| / 127, q = round(x / d); q4_0 d = m / -8 where m is the value of
// largest magnitude (sign kept), q = min(15, int(x / d + 8.5)). Dequantizing is exact given the
// stored bits. These scalar routines are the format's definition: the cache store and the weight
// loader use them on every instruction-set path, and the SIMD kernels that read blocks are tested
// against them. Rows must hold a multiple of 32 values.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mlkv {

inline constexpr int kQuantBlock = 32;
inline constexpr size_t kQ8_0BlockBytes = 34;
inline constexpr size_t kQ4_0BlockBytes = 18;

void quantize_row_q8_0(const float* x, void* dst, int64_t n);
void dequantize_row_q8_0(const void* src, float* y, int64_t n);
void quantize_row_q4_0(const float* x, void* dst, int64_t n);
void dequantize_row_q4_0(const void* src, float* y, int64_t n);

}  // namespace mlkv
