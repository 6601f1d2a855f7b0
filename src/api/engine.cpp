// mlkv::Engine and ModelInfo (include/mlkv/model.h) over the engine: Model, score_tokens and
// generate of src/runtime, load_tokenizer of src/tokenizer.
#include "runtime/engine.h"

#include <filesystem>
#include <utility>

#include "api/engine_impl.h"
#include "core/check.h"
#include "kernels/threads.h"
#include "io/hf_config.h"
#include "io/hf_model.h"
#include "model/layer_spec.h"
#include "runtime/options.h"

namespace mlkv {

namespace {

ModelInfo info_from_config(const ModelConfig& c) {
  ModelInfo i;
  i.family = family_name(c.family);
  i.n_vocab = c.n_vocab;
  i.n_embd = c.n_embd;
  i.n_layer = c.n_layer;
  i.n_head = c.n_head;
  i.n_head_kv = c.n_head_kv;
  i.n_embd_head = c.n_embd_head;
  i.n_ff = c.n_ff;
  i.n_ctx = c.n_ctx;
  i.n_rot = c.n_rot;
  i.norm = c.norm == NormType::kLayerNorm ? "layernorm" : "rmsnorm";
  i.mlp = c.mlp == MlpType::kGelu ? "gelu" : "swiglu";
  i.parallel_residual = c.parallel_residual;
  i.tied_embeddings = c.tied_embeddings;
  i.kv_source = c.kv_source;
  i.owner_layers = c.owner_layers();
  i.n_kv_layers = c.n_kv_layers();
  i.kv_share_rope = share_rope_name(c.share_rope);
  i.bos_token_id = c.bos_token_id;
  i.eos_token_id = c.eos_token_id();
  i.eos_token_ids = c.eos_token_ids;
  i.n_params = c.n_params();
  i.scheme = sharing_scheme_name(c);
  i.summary = c.summary();
  return i;
}

// The part of a config that sizes the KV cache, rebuilt from the info so the arithmetic stays in
// ModelConfig.
ModelConfig cache_shape(const ModelInfo& i) {
  ModelConfig c;
  c.n_layer = i.n_layer;
  c.n_head = i.n_head;
  c.n_head_kv = i.n_head_kv;
  c.n_embd_head = i.n_embd_head;
  c.kv_source = i.kv_source;
  return c;
}

KvCacheType cache_type_of(const std::string& cache_type) {
  return parse_cache_type(cache_type, "cache_type");
}

// The device named by LoadOptions::device, when this build has a backend for it.
Device check_device(const std::string& device) {
  Device d = Device::kCpu;
  int index = 0;
  try {
    d = parse_device(device, &index);
  } catch (const Error&) {
    fail("unknown device '", device, "' (this build has: cpu", has_backend(Device::kCuda) ? ", cuda" : "",
         ")");
  }
  MLKV_REQUIRE(has_backend(d), "device '", device, "' is not available: this build has no CUDA backend");
  set_device_index(d, index);
  backend<float>(d);  // starts it (finds the GPU, registers its allocator) or says why it cannot
  return d;
}

}  // namespace

int64_t ModelInfo::kv_bytes_per_token(const std::string& cache_type) const {
  return cache_shape(*this).kv_bytes_per_token(cache_type_of(cache_type));
}

int64_t ModelInfo::mha_kv_bytes_per_token(const std::string& cache_type) const {
  return cache_shape(*this).mha_kv_bytes_per_token(cache_type_of(cache_type));
}

double ModelInfo::kv_reduction_vs_mha() const {
  return cache_shape(*this).kv_reduction_vs_mha();
}

int64_t ModelInfo::kv_cache_bytes(int ctx, int batch, const std::string& cache_type) const {
  MLKV_REQUIRE(ctx > 0, "the context must be positive (got ", ctx, ")");
  MLKV_REQUIRE(batch > 0, "the batch must be positive (got ", batch, ")");
  return mlkv::kv_cache_bytes(cache_shape(*this), batch, ctx, parse_cache_type(cache_type, "cache_type"));
}

ModelInfo read_model_info(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) {
    return info_from_config(load_model_config(path));
  }
  return info_from_config(load_model(path).config);
}

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

Engine Engine::load(const std::string& path, const LoadOptions& opt) {
  ModelOptions mo;
  mo.device = check_device(opt.device);
  mo.weights = parse_weight_type(opt.weights, "weights");
  MLKV_REQUIRE(opt.threads >= 0, "threads must not be negative (got ", opt.threads, ")");
  set_num_threads(opt.threads);
  Model model(load_model(path, opt.on_warning), mo);
  std::unique_ptr<Tokenizer> tok;
  const std::string tok_path = opt.tokenizer.empty() ? path : opt.tokenizer;
  // A named tokenizer must be one (load_tokenizer_file), not a file standing for its folder.
  auto named_or_found = [&] {
    return opt.tokenizer.empty() ? load_tokenizer(tok_path) : load_tokenizer_file(opt.tokenizer);
  };
  if (opt.tokenizer_mode == TokenizerMode::kRequired) {
    tok = named_or_found();
  } else if (opt.tokenizer_mode == TokenizerMode::kAuto) {
    try {
      tok = named_or_found();
    } catch (const Error&) {
      tok = nullptr;  // none found or none readable: token ids only
    }
  }
  // Ids the model can sample past the tokenizer's vocabulary (padded embeddings) decode to no text.
  tok = pad_vocabulary(std::move(tok), model.config().n_vocab);
  ModelInfo info = info_from_config(model.config());
  return Engine(std::make_unique<Impl>(Impl{std::move(model), std::move(tok), std::move(info)}));
}

const ModelInfo& Engine::info() const {
  return impl_->info;
}

bool Engine::has_tokenizer() const {
  return impl_->tokenizer != nullptr;
}

const Tokenizer& Engine::tokenizer() const {
  MLKV_REQUIRE(impl_->tokenizer != nullptr,
               "this engine has no tokenizer (load with LoadOptions::tokenizer)");
  return *impl_->tokenizer;
}

int64_t Engine::kv_bytes(int ctx, int batch, const std::string& cache_type) const {
  return impl_->info.kv_cache_bytes(ctx, batch, cache_type);
}

std::vector<float> Engine::score(const std::vector<int32_t>& tokens, bool cached,
                                 const std::string& cache_type) {
  return score_tokens(impl_->model, tokens, cached, parse_cache_type(cache_type, "cache_type"));
}

std::vector<float> Engine::logits(const std::vector<int32_t>& tokens) {
  Model& model = impl_->model;
  const ModelConfig& c = model.config();
  const int n = static_cast<int>(tokens.size());
  MLKV_REQUIRE(n >= 1, "logits need at least one token");
  MLKV_REQUIRE(n <= c.n_ctx, "context overflow: ", n, " tokens but the model's context is ",
               c.n_ctx);
  KVCache cache = model.new_cache(1, n, DType::kF32);
  cache.acquire_seq();
  Batch b;
  for (int i = 0; i < n; ++i) b.add(tokens[static_cast<size_t>(i)], 0, i, true);
  std::vector<float> out(static_cast<size_t>(n) * static_cast<size_t>(c.n_vocab));
  model.forward(b, cache, out.data());
  return out;
}

std::vector<Generation> Engine::generate(const std::vector<std::vector<int32_t>>& prompts,
                                         const GenerationOptions& opt,
                                         const std::function<void(int, int32_t)>& on_token) {
  MLKV_REQUIRE(opt.max_new_tokens >= 0, "max_new_tokens must not be negative (got ",
               opt.max_new_tokens, ")");
  std::vector<GenerateRequest> reqs;
  reqs.reserve(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    SamplerParams sp = opt.sampling;
    sp.seed += i;  // prompt i: seed + i, whatever the batching
    reqs.push_back({prompts[i], opt.max_new_tokens, sp});
  }
  GenerateOptions go;
  go.n_parallel = opt.n_parallel;
  go.n_ctx = opt.n_ctx;
  go.cache_elem = parse_cache_type(opt.cache_type, "cache_type");
  go.stop_at_eos = opt.stop_at_eos;
  go.on_token = on_token;
  const std::vector<GenerateResult> res = mlkv::generate(impl_->model, reqs, go);
  std::vector<Generation> out;
  out.reserve(res.size());
  for (size_t i = 0; i < res.size(); ++i) {
    const GenerateResult& r = res[i];
    // The continuation of prompt i: " there" after "once upon a time", not "there".
    out.push_back({r.tokens,
                   impl_->tokenizer ? decode_continuation(*impl_->tokenizer, prompts[i], r.tokens) : "",
                   r.finish_reason, "", {}, {}});
  }
  return out;
}

}  // namespace mlkv
