#include "runtime/membw.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "core/tensor.h"
#include "core/timer.h"

namespace mlkv {

// Software prefetch this many floats ahead: the hardware prefetchers alone leave bandwidth unused
// on some hosts (the decode GEMV, which prefetches, read faster than a plain streaming loop).
constexpr size_t kAhead = 1024;

double measure_read_bandwidth(size_t bytes, int reps) {
  const size_t n = bytes / sizeof(float) / 32 * 32;  // whole 32-float blocks
  auto buf = aligned_alloc_zeroed(n * sizeof(float));
  float* p = static_cast<float*>(buf.get());
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) p[i] = 1.0f;  // commit the pages
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
             a3 = _mm256_setzero_ps();
#pragma omp for schedule(static)
      for (size_t i = 0; i < n; i += 32) {
        _mm_prefetch(reinterpret_cast<const char*>(p + i + kAhead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p + i + kAhead + 16), _MM_HINT_T0);
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
      }
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      for (float f : tmp) total += f;
    }
    const double s = t.seconds();
    sink = sink + total;
    best = std::max(best, static_cast<double>(n * sizeof(float)) / s);
  }
  (void)sink;
  return best;
}

}  // namespace mlkv
