#include "kernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cctype>
#include <cstring>
#include <string>

#include <unistd.h>

#include "core/check.h"

namespace mlkv::ops::cpu {

namespace {

// -1: not chosen yet.
std::atomic<int> g_isa{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

Isa parse_isa(const char* name) {
  // Case and surrounding blanks do not matter: "AVX2", " avx2 ".
  std::string s(name);
  const size_t b = s.find_first_not_of(" \t"), e = s.find_last_not_of(" \t");
  s = b == std::string::npos ? "" : s.substr(b, e - b + 1);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (int i = 0; i < kNumIsas; ++i) {
    if (s == isa_name(static_cast<Isa>(i))) return static_cast<Isa>(i);
  }
  fail("unknown instruction-set path '", name, "' (known: scalar, avx2, avx512)");
}

bool cpu_supports(Isa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::kAvx512:
      return cpu_supports(Isa::kAvx2) && __builtin_cpu_supports("avx512f") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq");
  }
  return false;
}

Isa best_isa() {
  if (cpu_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (cpu_supports(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

void set_isa(Isa isa) {
  MLKV_REQUIRE(cpu_supports(isa), "this CPU cannot run the ", isa_name(isa),
               " kernels (it supports up to ", isa_name(best_isa()), ")");
  g_isa.store(static_cast<int>(isa));
}

Isa active_isa() {
  const int v = g_isa.load(std::memory_order_relaxed);
  if (v >= 0) return static_cast<Isa>(v);
  const char* env = std::getenv("MLKV_ISA");
  const Isa isa = env != nullptr && *env ? parse_isa(env) : best_isa();  // empty: the best
  MLKV_REQUIRE(cpu_supports(isa), "MLKV_ISA=", env ? env : "", ": this CPU cannot run the ",
               isa_name(isa), " kernels (it supports up to ", isa_name(best_isa()), ")");
  g_isa.store(static_cast<int>(isa));
  return isa;
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
    const long b = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return b > 0 ? int64_t{b} : int64_t{1} << 20;
  }();
  return bytes;
}

}  // namespace mlkv::ops::cpu
