// Block formats for quantized storage (KV cache rows, weight rows), the layouts of llama.cpp's
// q8_0 and q4_0 so that figures compare like for like:
//   q8_0: blocks of 32 values: an f16 scale d, then 32 int8 q;        x = d q          (34 bytes)
//   q4_0: blocks of 32 values: an f16 scale d, then 16 bytes of nibbles, value j in the low nibble
//         of byte j and value j + 16 in its high nibble;                 x = d (q - 8)    (18 bytes)
// Quantizing: q8_0 d = max|x| / 127, q = round(x / d) (so |q| <= 127: the integer attention
// kernels rely on it, attend-inl.h); q4_0 d = m / -8 where m is the value of largest magnitude
// (sign kept), q = min(15, int(x / d + 8.5)). A block holding a NaN or an infinity gets a NaN
// scale and zero values, so that it reads back as NaN. Dequantizing is exact given the stored
// bits. These scalar routines are the format's definition: the cache store and the weight
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

// The query side of integer attention over q8_0 / q4_0 keys: n values (a multiple of 32) as int8
// q[n] with one f32 scale d[n / 32] per block of 32, d = max|x| / 127, q = round(x / d), so that
// q . k over a block is an exact int32 and x . y = sum over blocks of d_x d_y (q . k). The scale
// stays f32 (llama.cpp rounds it to f16; nothing here is stored). |q| <= 127. A block holding a
// NaN or an infinity gets d = NaN and q = 0, so that the scores it enters are NaN.
void quantize_query_q8(const float* x, int8_t* q, float* d, int64_t n);

// x <- H x for each block of 32 of x[0, n) (n a multiple of 32), H the 32 x 32 Walsh-Hadamard
// matrix (Sylvester's construction) over sqrt(32): orthogonal and symmetric, so its own inverse and
// (H a) . (H b) = a . b. Keys rotated so before quantizing (--cache-type-k q4_0+hadamard) spread
// an outlier's magnitude over their block (QuaRot, Ashkboos et al. 2024, reports 4-bit KV nearly
// lossless with it); the query is rotated the same way at attention. 5 butterfly stages per block.
void hadamard32(float* x, int64_t n);

// The panel layout of f32 weight matrices for decode (DType::kF32P16): rows in panels of 16,
// each panel [K][16] (the 16 rows' values of column k side by side), so that the GEMV reads one
// contiguous stream per panel and broadcasts each activation against 16 rows at once, with no
// horizontal sums (kernels/cpu/gemv_panels-inl.h). The last N % 16 rows stay row-major after the
// panels. Rows [16 p, 16 p + 16) of a packed matrix occupy the bytes rows [16 p, 16 p + 16) of the
// row-major one would, so row blocks of a multiple of 16 can be addressed alike. Exact (a
// permutation). src and dst [N, K] must not overlap.
// The same for 16-bit elements (f16, bf16: DType::kF16P16, kBF16P16).
inline constexpr int kPanelRows = 16;
void pack_panels16(const float* src, int64_t N, int64_t K, float* dst);
void unpack_panels16(const float* src, int64_t N, int64_t K, float* dst);
void pack_panels16(const uint16_t* src, int64_t N, int64_t K, uint16_t* dst);
void unpack_panels16(const uint16_t* src, int64_t N, int64_t K, uint16_t* dst);

}  // namespace mlkv
