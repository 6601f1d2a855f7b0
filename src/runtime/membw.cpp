#include "runtime/membw.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>

#include "core/tensor.h"
#include "core/timer.h"

namespace mlkv {

// Each thread reads its part of the buffer as kStreams interleaved streams (one 32-float block
// of each in turn), prefetching kAhead floats ahead in each: several streams per core keep more
// lines in flight than one, as the decode GEMV's weight panels do (kernels/cpu/gemv_panels-inl.h:
// 2-4 streams per thread). Measured on a 2-core Xeon, 1 GiB: 28.5 GB/s with one stream per
// thread, 32.2 with 4, 32.5 with 8; a bound from a probe that reads slower than the kernels
// would put decode above 100% of it.
constexpr size_t kAhead = 512;
constexpr int kStreams = 8;

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
    size_t read = 0;
#pragma omp parallel reduction(+ : total, read)
    {
      const size_t nt = static_cast<size_t>(omp_get_num_threads());
      const size_t per = n / nt / kStreams / 32 * 32;  // floats per stream
      const float* base = p + static_cast<size_t>(omp_get_thread_num()) * per * kStreams;
      __m256 a[kStreams];
      for (auto& v : a) v = _mm256_setzero_ps();
      for (size_t i = 0; i < per; i += 32) {
        for (int s = 0; s < kStreams; ++s) {
          const float* q = base + s * per + i;
          _mm_prefetch(reinterpret_cast<const char*>(q + kAhead), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(q + kAhead + 16), _MM_HINT_T0);
          const __m256 b = _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(q), _mm256_load_ps(q + 8)),
                                         _mm256_add_ps(_mm256_load_ps(q + 16), _mm256_load_ps(q + 24)));
          a[s] = _mm256_add_ps(a[s], b);
        }
      }
      __m256 z = _mm256_setzero_ps();
      for (const auto& v : a) z = _mm256_add_ps(z, v);
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, z);
      for (float f : tmp) total += f;
      read += per * kStreams * sizeof(float);
    }
    const double s = t.seconds();
    sink = sink + total;
    best = std::max(best, static_cast<double>(read) / s);
  }
  (void)sink;
  return best;
}

}  // namespace mlkv
