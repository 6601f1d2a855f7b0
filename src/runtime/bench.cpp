#include "runtime/bench.h"

#include <algorithm>
#include <random>
#include <vector>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/backend.h"
#include "model/layer_spec.h"
#include "runtime/membw.h"

namespace mlkv {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Random K/V for positions [0, n) of every sequence and owner slot, written by the backend's store.
void fill_cache(const ModelConfig& c, KVCache& cache, int n) {
  std::mt19937 rng(7);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Tensor kv({int64_t{n} * c.n_head_kv * c.n_embd_head});
  for (int64_t i = 0; i < kv.numel(); ++i) kv[i] = d(rng);
  kv = kv.to(cache.device());  // the store reads keys and values on the cache's device
  std::vector<int32_t> seq(static_cast<size_t>(n)), pos(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = i;
  Backend<float>& be = backend<float>(cache.device());
  for (int slot = 0; slot < cache.n_slots(); ++slot) {
    for (int s = 0; s < cache.n_seq(); ++s) {
      std::fill(seq.begin(), seq.end(), s);
      const float* p = kv.data_as<float>();
      be.kv_store(cache.view(slot), seq.data(), pos.data(), n, p, p);
    }
  }
  for (int s = 0; s < cache.n_seq(); ++s) cache.set_seq_len(s, n);
}

}  // namespace

double measure_device_bandwidth(Device device) {
  if (device == Device::kCpu) return measure_read_bandwidth();
  Backend<float>& be = backend<float>(device);
  const int64_t n = int64_t{1} << 28;  // 1 GiB of floats
  Tensor a({n}, DType::kF32, device), b({n}, DType::kF32, device);
  float sync = 0;
  double best = 0;
  for (int rep = 0; rep < 6; ++rep) {
    Timer t;
    be.copy(b.data_as<float>(), a.data_as<float>(), n);
    be.to_host(b.data_as<float>(), &sync, 1);  // waits for the copy
    const double s = t.seconds();
    if (rep > 0) best = std::max(best, 2.0 * 4.0 * static_cast<double>(n) / s);
  }
  return best;
}

double measure_gemm_peak(Device device) {
  Backend<float>& be = backend<float>(device);
  const int N = 2048;
  Tensor w({N, N}), x({N, N});
  for (int64_t i = 0; i < w.numel(); ++i) w[i] = x[i] = static_cast<float>(i % 7) * 0.01f;
  w = w.to(device);
  x = x.to(device);
  Tensor y = be.buffer({N, N});
  float sync = 0;
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {
    Timer t;
    be.linear_forward(x.data_as<float>(), w, Tensor(), y.data_as<float>(), N, N, N, false);
    be.to_host(y.data_as<float>(), &sync, 1);
    const double s = t.seconds();
    if (rep > 0) best = std::max(best, 2.0 * N * N * static_cast<double>(N) / s);
  }
  return best;
}

DecodeBound decode_bound(const BenchResult& r, int batch, double bandwidth, double gemm_peak) {
  DecodeBound d;
  d.mem_s = bandwidth > 0 ? static_cast<double>(r.weight_bytes + r.kv_read_bytes) / bandwidth : 0;
  d.compute_s = gemm_peak > 0 ? r.step_flops / gemm_peak : 0;
  const double s = std::max(d.mem_s, d.compute_s);
  d.steps_s = s > 0 ? 1.0 / s : 0;
  d.fraction = d.steps_s > 0 ? r.decode_tok_s / batch / d.steps_s : 0;
  return d;
}

BenchResult bench_model(Model& model, const BenchOptions& o) {
  const ModelConfig& c = model.config();
  MLKV_REQUIRE(o.prompt >= 1 && o.gen >= 1 && o.batch >= 1 && o.reps >= 1,
               "bench: prompt, gen, batch and reps must be positive");
  const int ctx = o.prompt + o.gen;
  MLKV_REQUIRE(ctx <= c.n_ctx, "bench: prompt + gen (", ctx, ") exceeds the model context ", c.n_ctx);
  BenchResult r;
  r.weight_bytes = model.decode_weight_bytes();
  // Every layer reads its owner's K and V for the visible context: l * g * ctx * (k_row + v_row).
  const int mid = o.prompt + o.gen / 2;
  r.kv_read_bytes = int64_t{o.batch} * c.n_layer * c.n_head_kv * mid *
                    static_cast<int64_t>(o.cache_elem.pair_bytes(c.n_embd_head));
  r.kv_cache_bytes = kv_cache_bytes(c, o.batch, ctx, o.cache_elem);
  {
    const double E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), F = c.n_ff;
    const double mlp = (c.mlp == MlpType::kSwiGlu ? 3.0 : 2.0) * E * F;
    double w = E * c.n_vocab;  // output head
    for (const LayerSpec& s : layer_specs(c)) w += E * Q + (s.owns_kv ? 2 * E * KV : 0) + Q * E + mlp;
    r.step_flops = static_cast<double>(o.batch) *
                   (2 * w + 4.0 * c.n_layer * c.n_head * c.n_embd_head * mid);
  }

  std::vector<double> prefill, decode;
  std::vector<float> logits(static_cast<size_t>(o.batch) * c.n_vocab);
  MLKV_REQUIRE(o.block_size >= 0, "bench: block size must not be negative");
  KVCache cache = model.new_cache(o.batch, ctx, o.cache_elem, o.block_size);
  if (o.block_size > 0) {
    for (int s = 0; s < o.batch; ++s) {
      std::vector<int32_t> blocks(static_cast<size_t>(cache.blocks_per_seq()));
      for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<int32_t>(i) * o.batch + s;
      cache.set_block_table(s, std::move(blocks));
    }
  }
  Batch b;
  for (int rep = 0; rep <= o.reps; ++rep) {  // repetition 0 warms up
    for (int s = 0; s < o.batch; ++s) {
      if (cache.seq_in_use(s)) cache.release_seq(s);
      MLKV_CHECK(cache.acquire_seq() == s);
    }
    Timer t;
    if (o.synthetic_context) {
      if (rep == 0) fill_cache(c, cache, o.prompt);
      for (int s = 0; s < o.batch; ++s) cache.set_seq_len(s, o.prompt);
    } else {
      for (int s = 0; s < o.batch; ++s) {
        b.clear();
        for (int i = 0; i < o.prompt; ++i) b.add((i * 7919 + s) % c.n_vocab, s, i, i + 1 == o.prompt);
        model.forward(b, cache, logits.data());
      }
    }
    const double t_prefill = t.seconds();
    t.reset();
    if (rep > 0) model.set_profile(o.profile);
    for (int step = 0; step < o.gen; ++step) {
      b.clear();
      for (int s = 0; s < o.batch; ++s) b.add((step * 31 + s) % c.n_vocab, s, o.prompt + step, true);
      model.forward(b, cache, logits.data());
    }
    const double t_decode = t.seconds();
    model.set_profile(nullptr);
    if (rep == 0) continue;
    if (!o.synthetic_context) prefill.push_back(o.batch * o.prompt / t_prefill);
    decode.push_back(o.batch * o.gen / t_decode);
  }
  if (!prefill.empty()) r.prefill_tok_s = median(prefill);
  r.decode_tok_s = median(decode);
  r.decode_step_ms = 1e3 * o.batch / r.decode_tok_s;
  return r;
}

std::vector<ProfileRow> decode_profile(const Model& model, const BenchResult& r,
                                       const OpProfile& p, int steps) {
  MLKV_REQUIRE(steps > 0, "decode_profile: no steps");
  double bytes[static_cast<int>(Op::kCount)] = {};
  auto add = [&](Op op, std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts) bytes[static_cast<int>(op)] += static_cast<double>(t->nbytes());
  };
  double layers = 0;
  for (const LayerWeights& l : model.weights().layers) {
    add(Op::kQkv, {&l.wq, &l.bq, &l.wk, &l.bk, &l.wv, &l.bv});
    add(Op::kAttnOut, {&l.wo, &l.bo});
    add(Op::kMlpMatmul, {&l.w_gate, &l.b_gate, &l.w_up, &l.b_up, &l.w_down, &l.b_down});
    add(Op::kNorm, {&l.attn_norm, &l.attn_norm_b, &l.ffn_norm, &l.ffn_norm_b});
  }
  for (Op op : {Op::kQkv, Op::kAttnOut, Op::kMlpMatmul, Op::kNorm}) layers += bytes[static_cast<int>(op)];
  // The output matrix (and the final norm): what a step streams besides the layers.
  bytes[static_cast<int>(Op::kHead)] = static_cast<double>(r.weight_bytes) - layers;
  bytes[static_cast<int>(Op::kAttention)] = static_cast<double>(r.kv_read_bytes);
  std::vector<ProfileRow> rows;
  double sum = 0;
  for (int i = 0; i < static_cast<int>(Op::kCount); ++i) {
    const double ms = 1e3 * p.fwd[i] / steps;
    sum += ms;
    if (ms > 0) rows.push_back({op_name(static_cast<Op>(i)), ms, bytes[i]});
  }
  rows.push_back({"other", std::max(0.0, r.decode_step_ms - sum), 0});
  return rows;
}

}  // namespace mlkv
