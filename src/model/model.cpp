// The inference forward pass: embedding -> n_layer x the layer loop (model/transformer.h) with the
// KV cache as the attention context -> final norm -> logits for the requested rows.
#include "model/model.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "core/check.h"
#include "core/quant.h"

namespace mlkv {

int Batch::n_outputs() const {
  int n = 0;
  for (uint8_t f : logits) n += f;
  return n;
}

namespace {

// Stores each owner layer's K/V into its cache slot and attends over the cache, run by run.
class CacheAttention final : public AttentionContext<float> {
 public:
  CacheAttention(Backend<float>& be, const ModelConfig& c, KVCache& cache, const Batch& b,
                 const std::vector<AttnRun>& runs, const ops::RopeTable<float>& rt)
      : be_(be), c_(c), cache_(cache), b_(b), runs_(runs), rt_(rt) {}

  void attend(const LayerSpec& s, const LayerActs<float>& a) override {
    const ops::KvSlotView slot = cache_.view(s.kv_slot);
    if (s.owns_kv) {
      // The slot keeps raw keys when the owner shares them before rotary.
      be_.kv_store(slot, b_.seq.data(), b_.pos.data(), b_.size(), s.shares_raw_keys ? a.k_raw : a.k,
                   a.v);
    }
    // Raw keys in the slot but this layer attends with rotated ones: the pre-sharing owner.
    const bool rotate = !slot.keys_rotated && s.reads_rotated_keys;
    be_.attention_cached(slot, runs_, a.q, c_.n_head, rotate, rt_, a.o);
  }

 private:
  Backend<float>& be_;
  const ModelConfig& c_;
  KVCache& cache_;
  const Batch& b_;
  const std::vector<AttnRun>& runs_;
  const ops::RopeTable<float>& rt_;
};

}  // namespace

// Activations of one forward pass on the backend's device, for up to `rows` tokens.
struct Model::Scratch {
  int rows = 0;
  Tensor x, xn, q, k, k_raw, v, o, h2, up, gate, sel, logits;

  // Whether the buffers were reallocated (recorded steps point at the old ones).
  bool grow(Backend<float>& be, const ModelConfig& c, int T) {
    if (T <= rows) return false;
    rows = T;
    const int64_t n = T, E = c.n_embd, Q = c.n_embd_q(), KV = c.n_embd_kv(), F = c.n_ff;
    x = be.buffer({n, E});
    xn = be.buffer({n, E});
    q = be.buffer({n, Q});
    k = be.buffer({n, KV});
    k_raw = be.buffer({n, KV});
    v = be.buffer({n, KV});
    o = be.buffer({n, Q});
    h2 = be.buffer({n, E});
    up = be.buffer({n, F});
    if (c.mlp == MlpType::kSwiGlu) gate = be.buffer({n, F});
    sel = be.buffer({n, E});
    return true;
  }
};

// Recorded decode steps (Backend::begin_capture ...), by shape: the batch size and which rows
// want logits (every run one row), and the cache (object and storage). The key only chooses the
// recording to try: whether replaying it is right is the backend's check at staging time (the
// staged ops must be the recorded ones: kernels, device pointers, sizes), so a stale key costs a
// normal run, never a wrong result.
struct Model::Graphs {
  struct Entry {
    std::vector<uint8_t> flags;  // [T] batch.logits
    const KVCache* cache = nullptr;
    const void* storage = nullptr;
    int64_t id = 0;         // the recording (0: none)
    int seen = 0;           // steps of this shape so far
    int misses = 0;         // recordings failed or refused in a row
    uint64_t last_use = 0;  // for evicting the least recently used
  };
  static constexpr int kMaxEntries = 16;
  static constexpr int kMaxMisses = 3;  // then this shape runs normally (until the next clear)

  Backend<float>* be = nullptr;
  bool enabled = false;
  int64_t launches = 0;
  uint64_t clock = 0;
  std::vector<Entry> entries;

  ~Graphs() { clear(); }
  void clear() {
    for (Entry& e : entries) {
      if (e.id != 0) be->drop_graph(e.id);
    }
    entries.clear();
  }
  Entry& entry(const Batch& b, const KVCache& cache) {
    const void* storage = cache.view(0).k;
    ++clock;
    for (Entry& e : entries) {
      if (e.cache == &cache && e.storage == storage && e.flags == b.logits) {
        e.last_use = clock;
        return e;
      }
    }
    if (static_cast<int>(entries.size()) >= kMaxEntries) {
      auto lru =
          std::min_element(entries.begin(), entries.end(),
                           [](const Entry& x, const Entry& y) { return x.last_use < y.last_use; });
      if (lru->id != 0) be->drop_graph(lru->id);
      entries.erase(lru);
    }
    Entry e;
    e.flags = b.logits;
    e.cache = &cache;
    e.storage = storage;
    e.last_use = clock;
    entries.push_back(std::move(e));
    return entries.back();
  }
};

Model::Model(LoadedModel m, const ModelOptions& opt)
    : cfg_(std::move(m.config)), opt_(opt), w_(std::move(m.weights)) {
  cfg_.validate();
  Backend<float>& be = backend<float>(opt_.device);
  MLKV_REQUIRE(opt_.weights != WeightType::kQ8_0 || opt_.device == Device::kCpu,
               "q8_0 weights run on the CPU; on the GPU use f32, f16 or bf16");
  if (opt_.weights == WeightType::kQ8_0) {
    for (const auto& p : list_params(cfg_, w_)) {
      const Tensor& t = *p.tensor;
      if (p.tensor == &w_.tok_embd && !cfg_.tied_embeddings) continue;  // lookups stay f32
      MLKV_REQUIRE(t.ndim() != 2 || t.dim(1) % kQuantBlock == 0, "q8_0 weights need every "
                   "matrix's rows to hold a multiple of 32 values: ", p.name, " is ", t.shape_str(),
                   "; use --weights f16 for this model");
    }
  }
  if (opt_.weights != WeightType::kF32) {
    // Matrices in f16/bf16/q8_0; the tied output matrix gets a copy (lookups read the f32
    // embedding).
    // f16 / bf16 matrices on the CPU in panels of 16 rows, as f32 ones below.
    const bool panels = opt_.panels && opt_.device == Device::kCpu;
    const DType dt = opt_.weights == WeightType::kF16    ? (panels ? DType::kF16P16 : DType::kF16)
                     : opt_.weights == WeightType::kBF16 ? (panels ? DType::kBF16P16 : DType::kBF16)
                                                         : DType::kQ8_0;
    Tensor embd = std::move(w_.tok_embd);
    w_.tok_embd = Tensor();
    w_ = convert_weights(cfg_, w_, dt, /*matrices_only=*/true);
    if (cfg_.tied_embeddings) output_f16_ = embd.to(dt);
    w_.tok_embd = std::move(embd);
  }
  if (opt_.weights == WeightType::kF32 && opt_.device == Device::kCpu && opt_.panels) {
    // One matrix at a time, so that loading needs one matrix more than the model, not twice it.
    // Lookups (and a tied output matrix) read the embedding table row by row: it stays.
    for (auto& p : list_params(cfg_, w_)) {
      if (p.tensor != &w_.tok_embd && p.tensor->ndim() == 2) *p.tensor = p.tensor->to(DType::kF32P16);
    }
  }
  if (opt_.device != Device::kCpu) {
    for (auto& p : list_params(cfg_, w_)) *p.tensor = p.tensor->to(opt_.device);
    if (!output_f16_.empty()) output_f16_ = output_f16_.to(opt_.device);
  }
  net_ = std::make_unique<Transformer<float>>(cfg_, be);
  scratch_ = std::make_unique<Scratch>();
  graphs_ = std::make_unique<Graphs>();
  graphs_->be = &be;
  const char* env = std::getenv("MLKV_CUDA_GRAPHS");
  // Opt-in (MLKV_CUDA_GRAPHS=1) until the recordings have run on a GPU (scripts/gpu_check.sh).
  graphs_->enabled = be.graphs_supported() && env != nullptr && std::string(env) == "1";
  rope(std::max(cfg_.n_ctx, 1));
}

Model::~Model() = default;  // Graphs drops its recordings

void Model::set_graphs(bool on) {
  graphs_->enabled = on && net_->backend().graphs_supported();
  if (!graphs_->enabled) graphs_->clear();
}
bool Model::graphs() const {
  return graphs_->enabled;
}
int64_t Model::graph_launches() const {
  return graphs_->launches;
}
Model::Model(Model&&) noexcept = default;

int64_t Model::decode_weight_bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : list_params(cfg_, w_)) {
    if (t != &w_.tok_embd || cfg_.tied_embeddings) n += static_cast<int64_t>(t->nbytes());
  }
  // A tied output matrix is the embedding table (f32) unless it has an f16 copy.
  if (!output_f16_.empty()) {
    n += static_cast<int64_t>(output_f16_.nbytes()) - static_cast<int64_t>(w_.tok_embd.nbytes());
  }
  return n;
}

KVCache Model::new_cache(int n_seq, int n_ctx, KvCacheType type, int block_size, int n_blocks) const {
  return KVCache(kv_layout(cfg_), n_seq, n_ctx, type, opt_.device, block_size, n_blocks);
}

const ops::RopeTable<float>& Model::rope(int n_pos) {
  if (rope_.n_pos < n_pos || rope_.n_rot != cfg_.n_rot) rope_.build(cfg_.n_rot, n_pos, cfg_.rope_inv_freq());
  return rope_;
}

void Model::validate_batch(const Batch& b, const KVCache& cache, std::vector<AttnRun>* runs) const {
  const int T = b.size();
  MLKV_REQUIRE(T > 0, "empty batch");
  MLKV_REQUIRE(b.seq.size() == b.token.size() && b.pos.size() == b.token.size() &&
                   b.logits.size() == b.token.size(),
               "malformed batch: token/seq/pos/logits lengths differ");
  MLKV_REQUIRE(cache.n_slots() == cfg_.n_kv_layers() && cache.device() == opt_.device,
               "the KV cache was not made for this model (Model::new_cache)");
  runs->clear();
  std::vector<uint8_t> seen(static_cast<size_t>(cache.n_seq()), 0);
  for (int i = 0; i < T; ++i) {
    const int tok = b.token[i], s = b.seq[i], p = b.pos[i];
    MLKV_REQUIRE(tok >= 0 && tok < cfg_.n_vocab, "token id ", tok, " is outside the vocabulary (",
                 cfg_.n_vocab, " ids)");
    MLKV_REQUIRE(s >= 0 && s < cache.n_seq(), "sequence ", s, " is not a cache slot (the cache has ",
                 cache.n_seq(), ")");
    MLKV_REQUIRE(p < cache.n_ctx(), "context overflow: sequence ", s, " would need position ", p,
                 " but the context holds ", cache.n_ctx(), " tokens");
    MLKV_REQUIRE(p < cache.mapped_positions(s), "sequence ", s, " has no cache block for position ",
                 p, " (its block table maps ", cache.mapped_positions(s), " positions)");
    if (!runs->empty() && runs->back().seq == s) {
      AttnRun& r = runs->back();
      MLKV_REQUIRE(p == r.pos0 + r.n_rows, "batch positions of sequence ", s,
                   " are not consecutive (got ", p, ", expected ", r.pos0 + r.n_rows, ")");
      ++r.n_rows;
    } else {
      MLKV_REQUIRE(!seen[static_cast<size_t>(s)], "tokens of sequence ", s,
                   " are not contiguous in the batch");
      seen[static_cast<size_t>(s)] = 1;
      MLKV_REQUIRE(p == cache.seq_len(s), "sequence ", s, " continues at position ", p,
                   " but its cache holds ", cache.seq_len(s), " tokens");
      runs->push_back({s, i, 1, p});
    }
  }
}

void Model::set_profile(OpProfile* p) { net_->profile = p; }

void Model::forward(const Batch& b, KVCache& cache, float* logits) {
  std::vector<AttnRun> runs;
  validate_batch(b, cache, &runs);
  const ModelConfig& c = cfg_;
  const int T = b.size();
  Backend<float>& be = net_->backend();
  const ops::RopeTable<float>& rt = rope(cache.n_ctx());
  Scratch& s = *scratch_;
  // Logits only for the flagged rows.
  std::vector<int32_t> rows;
  for (int i = 0; i < T; ++i) {
    if (b.logits[i]) rows.push_back(i);
  }
  const int n_out = static_cast<int>(rows.size());
  const bool on_cpu = opt_.device == Device::kCpu;
  bool grew = s.grow(be, c, T);
  if (!on_cpu && n_out > 0 && s.logits.numel() < int64_t{n_out} * c.n_vocab) {
    s.logits = be.buffer({int64_t{n_out}, c.n_vocab});
    grew = true;
  }
  if (grew) graphs_->clear();  // recordings point at the old buffers
  float* out = n_out == 0 ? nullptr : on_cpu ? logits : s.logits.data();

  // Decode steps (one row per sequence) on a backend with graphs: the first step of a shape runs
  // normally (every scratch buffer gets its size), the second is recorded and run, later ones
  // replay the recording after their ops' host work.
  bool done = false;
  if (graphs_->enabled && runs.size() == static_cast<size_t>(T)) {
    Graphs::Entry& g = graphs_->entry(b, cache);
    ++g.seen;
    if (g.id != 0) {
      be.begin_staging(g.id);
      try {
        issue_ops(b, cache, runs, rt, rows, out);
      } catch (...) {
        be.end_staging();
        throw;
      }
      if (be.end_staging()) {
        be.launch_graph(g.id);
        done = true;
        g.misses = 0;
      } else {
        // Something the recording baked in changed (a buffer, a size): run normally now, and
        // record again next time.
        be.drop_graph(g.id);
        g.id = 0;
        ++g.misses;
      }
    } else if (g.seen >= 2 && g.misses < Graphs::kMaxMisses) {
      be.begin_capture();
      bool ok = true;
      try {
        issue_ops(b, cache, runs, rt, rows, out);
      } catch (const std::exception&) {
        be.end_capture(false);  // nothing ran: the normal run below meets the error again
        ok = false;
      } catch (...) {
        be.end_capture(false);
        throw;
      }
      if (ok) g.id = be.end_capture(true);
      if (g.id != 0) {
        be.launch_graph(g.id);
        done = true;
      } else {
        ++g.misses;
      }
    }
    if (done) ++graphs_->launches;
  }
  if (!done) issue_ops(b, cache, runs, rt, rows, out);
  for (const AttnRun& r : runs) cache.set_seq_len(r.seq, r.pos0 + r.n_rows);
  // On a device the logits come back with a synchronisation (which also ends any use of the
  // staged arrays by a replayed step).
  if (!on_cpu && n_out > 0) be.to_host(s.logits.data(), logits, int64_t{n_out} * c.n_vocab);
}

void Model::issue_ops(const Batch& b, KVCache& cache, const std::vector<AttnRun>& runs,
                      const ops::RopeTable<float>& rt, const std::vector<int32_t>& rows,
                      float* out) {
  const ModelConfig& c = cfg_;
  const int T = b.size(), E = c.n_embd;
  Backend<float>& be = net_->backend();
  Scratch& s = *scratch_;
  float* x = s.x.data();
  LayerActs<float> a;
  a.x_in = a.x_out = a.x_mid = x;  // the residual stream, updated in place
  a.xn1 = s.xn.data();
  a.q = s.q.data();
  a.k = s.k.data();
  a.k_raw = s.k_raw.data();
  a.v = s.v.data();
  a.o = s.o.data();
  a.xn2 = s.h2.data();
  a.u = a.act = s.up.data();
  a.gate = s.gate.empty() ? nullptr : s.gate.data();

  net_->lap_start();
  net_->embed(w_, b.token.data(), T, x);
  CacheAttention attn(be, c, cache, b, runs, rt);
  for (int il = 0; il < c.n_layer; ++il) {
    net_->layer_forward(il, w_.layers[static_cast<size_t>(il)], a, T, b.pos.data(), rt, attn);
  }
  const int n_out = static_cast<int>(rows.size());
  if (n_out == 0) return;
  be.gather_rows(x, rows.data(), n_out, E, s.sel.data());
  norm_forward<float>(be, c, w_.out_norm, w_.out_norm_b, s.sel.data(), s.xn.data(), nullptr, nullptr,
                     n_out);
  const Tensor& w_out = output_f16_.empty() ? w_.output_matrix() : output_f16_;
  be.linear_forward(s.xn.data(), w_out, Tensor(), out, n_out, E, c.n_vocab, false);
  net_->lap(Op::kHead, false);
}

}  // namespace mlkv
