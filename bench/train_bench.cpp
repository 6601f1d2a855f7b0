// Training throughput: one full optimizer step (zero grads, forward + backward of the training
// graph, global grad norm, AdamW) of a Pythia-160M-geometry model, and the machine's OpenBLAS
// sgemm rate on the same threads for scale. Prints a table and one JSON line per context
// (bench/torch_train_bench.py runs this beside PyTorch and writes docs/BENCHMARKS.md's table).
//
//   train_bench [--ctx 256,512] [--tokens 2048] [--steps 3] [--threads 2] [--vocab 8192]
//               [--preset pythia-160m] [--kv-heads G] [--kv-layers M]
//
// FLOPs per step (stated in the output): tokens * (6 * N_mm + 6 * L * n_head * d_head * (ctx + 1))
// where N_mm = the weights of every matrix multiply (q/k/v/o, MLP, output projection; not the input
// embedding lookup, norms or biases), and the second term is causal attention (QK^T and PV, forward
// 2 * 2 * Q * (ctx + 1) / 2 per token and layer, backward twice that; the backward pass's
// recomputation of the scores is not counted).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/timer.h"
#include "kernels/blas/blas.h"
#include "kernels/threads.h"
#include "model/presets.h"
#include "train/optimizer.h"
#include "train/train_model.h"
#include "train/trainer.h"

using namespace mlkv;

namespace {

double sgemm_gflops(int M, int N, int K, int reps) {
  std::vector<float> a(size_t(M) * K), b(size_t(N) * K), c(size_t(M) * N);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1, 1);
  for (auto& x : a) x = u(rng);
  for (auto& x : b) x = u(rng);
  blas::gemm(false, true, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_seconds();
    blas::gemm(false, true, M, N, K, 1.0f, a.data(), K, b.data(), K, 0.0f, c.data(), N);
    best = std::min(best, now_seconds() - t0);
  }
  return 2.0 * M * N * K / best / 1e9;
}

int64_t matmul_params(const ModelConfig& c) {
  const int64_t E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), F = c.n_ff;
  int64_t n = int64_t{c.n_vocab} * E;  // output projection
  for (int il = 0; il < c.n_layer; ++il) {
    n += 2 * Q * E + (c.owns_kv(il) ? 2 * KV * E : 0) + (c.mlp == MlpType::kSwiGlu ? 3 : 2) * E * F;
  }
  return n;
}

std::vector<int> parse_list(const char* s) {
  std::vector<int> v;
  for (const char* p = s; *p;) {
    v.push_back(std::atoi(p));
    while (*p && *p != ',') ++p;
    if (*p == ',') ++p;
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> ctxs = {256, 512};
  int tokens = 2048, steps = 3, threads = 2, vocab = 8192, kv_heads = 0, kv_layers = 0;
  std::string preset = "pythia-160m";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--ctx")
      ctxs = parse_list(argv[i + 1]);
    else if (a == "--tokens")
      tokens = std::atoi(argv[i + 1]);
    else if (a == "--steps")
      steps = std::atoi(argv[i + 1]);
    else if (a == "--threads")
      threads = std::atoi(argv[i + 1]);
    else if (a == "--vocab")
      vocab = std::atoi(argv[i + 1]);
    else if (a == "--preset")
      preset = argv[i + 1];
    else if (a == "--kv-heads")
      kv_heads = std::atoi(argv[i + 1]);
    else if (a == "--kv-layers")
      kv_layers = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  set_num_threads(threads);
  const double sgemm = sgemm_gflops(tokens, 3072, 768, 5);
  std::printf("threads %d; OpenBLAS %s kernels; sgemm %dx3072x768: %.1f GFLOP/s\n", threads, blas::core_name(),
              tokens, sgemm);

  for (int ctx : ctxs) {
    ModelConfig cfg = geometry_preset(preset);
    cfg.n_vocab = vocab;
    cfg.n_ctx = std::max(cfg.n_ctx, ctx);
    apply_sharing(&cfg, kv_heads, {.kv_layers = kv_layers});
    const int batch = std::max(1, tokens / ctx);
    const int64_t n_tok = int64_t{batch} * ctx;
    ModelWeights w, g;
    init_weights_random(cfg, &w, 1);
    allocate_weights(cfg, &g);
    train::TrainGraph<float> graph(cfg, batch, ctx);
    train::AdamW adam(cfg, {});
    std::vector<int32_t> rows(size_t(batch) * (ctx + 1));
    std::mt19937 rng(2);
    for (auto& t : rows) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    train::OpProfile prof;
    double t_norm = 0, t_adam = 0;
    auto step = [&](bool profile) {
      graph.profile = profile ? &prof : nullptr;
      const double t0 = now_seconds();
      // (gradients were zeroed by the previous AdamW pass)
      graph.forward_backward(w, rows.data(), &g, 1.0f / static_cast<float>(n_tok));
      const double t2 = now_seconds();
      const double norm = train::global_grad_norm(cfg, g);
      const double t3 = now_seconds();
      adam.step(w, g, 1e-4, norm > 1 ? 1 / norm : 1.0, /*zero_grads_after=*/true);
      const double t4 = now_seconds();
      if (profile) {
        t_norm += t3 - t2;
        t_adam += t4 - t3;
      }
      return t4 - t0;
    };
    step(false);  // warm-up: first touch of the arena, BLAS buffers
    std::vector<double> times;
    for (int s = 0; s < steps; ++s) times.push_back(step(true));
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    const double n_mm = static_cast<double>(matmul_params(cfg));
    const double attn = 6.0 * cfg.n_layer * cfg.n_embd_q() * (ctx + 1);
    const double flops = static_cast<double>(n_tok) * (6.0 * n_mm + attn);
    const double gf = flops / t / 1e9;
    std::printf(
        "\n%s vocab %d, ctx %d, batch %d (%lld tokens/step), %d threads: %.3f s/step (median of "
        "%d), "
        "%.0f tokens/s, %.1f GFLOP/s = %.0f%% of sgemm  [N_mm %.1fM, attention %.1f%% of FLOPs]\n",
        preset.c_str(), vocab, ctx, batch, static_cast<long long>(n_tok), threads, t, steps,
        static_cast<double>(n_tok) / t, gf, 100 * gf / sgemm, n_mm / 1e6,
        100 * attn / (6.0 * n_mm + attn));
    double total = 0;
    for (double x : times) total += x;
    std::printf("%s", train::format_profile(prof, total).c_str());
    std::printf("  of which: grad norm %.3fs, AdamW (+ zeroing the gradients) %.3fs\n", t_norm, t_adam);
    std::printf(
        "JSON {\"ctx\": %d, \"batch\": %d, \"threads\": %d, \"seconds_per_step\": %.5f, "
        "\"tokens_per_s\": %.2f, "
        "\"gflops\": %.2f, \"sgemm_gflops\": %.2f, \"flops_per_step\": %.6e, \"n_mm\": %.0f, "
        "\"openblas_core\": \"%s\"}\n",
        ctx, batch, threads, t, static_cast<double>(n_tok) / t, gf, sgemm, flops, n_mm,
        blas::core_name());
    std::fflush(stdout);
  }
  return 0;
}
