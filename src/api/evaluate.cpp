// mlkv::loglikelihood and mlkv::evaluate (include/mlkv/evaluate.h) over score_loglik and
// eval::evaluate of src/eval, with the engine's model and tokenizer.
#include "mlkv/evaluate.h"

#include "api/engine_impl.h"
#include "core/check.h"
#include "eval/evaluate.h"
#include "eval/loglik.h"
#include "runtime/options.h"

namespace mlkv {

std::vector<LoglikelihoodResult> loglikelihood(Engine& engine,
                                               const std::vector<LoglikelihoodRequest>& requests,
                                               const LoglikelihoodOptions& opt) {
  MLKV_REQUIRE(opt.batch > 0, "batch must be positive (got ", opt.batch, ")");
  MLKV_REQUIRE(opt.max_ctx >= 0, "max_ctx must not be negative (got ", opt.max_ctx, ")");
  Model& model = EngineAccess::impl(engine).model;
  std::vector<LoglikRequest> reqs;
  reqs.reserve(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const LoglikelihoodRequest& r = requests[i];
    MLKV_REQUIRE(!r.context.empty(), "request ", i, ": the context is empty");
    MLKV_REQUIRE(!r.continuation.empty(), "request ", i, ": the continuation is empty");
    reqs.push_back({r.context, r.continuation});
  }
  LoglikOptions lo;
  lo.batch = opt.batch;
  lo.max_ctx = opt.max_ctx;
  lo.cache_type = parse_cache_type(opt.cache_type, "cache_type");
  const std::vector<LoglikResult> res = score_loglik(model, reqs, lo);
  std::vector<LoglikelihoodResult> out;
  out.reserve(res.size());
  for (const LoglikResult& r : res) out.push_back({r.logprob, r.greedy, r.n_tokens, r.truncated_tokens});
  return out;
}

std::string evaluate(Engine& engine, const EvaluateOptions& opt) {
  auto& e = EngineAccess::impl(engine);  // Engine::Impl
  eval::EvalOptions o;
  o.batch = opt.batch;
  o.ctx = opt.ctx;
  o.stride = opt.stride;
  o.limit = opt.limit;
  o.max_bytes = opt.max_bytes;
  o.bos = opt.bos;
  o.share_context = opt.share_context;
  o.tmpl = opt.tmpl;
  o.model_name = opt.model_name;
  o.on_warning = opt.on_warning;
  eval::validate_options(o);
  o.cache_type = parse_cache_type(opt.cache_type, "cache_type");
  const std::string eval_dir = opt.eval_dir.empty() ? eval::default_eval_dir() : opt.eval_dir;
  std::vector<eval::EvalInput> inputs;
  for (const std::string& s : opt.inputs) inputs.push_back(eval::classify_input(s, eval_dir));
  MLKV_REQUIRE(!inputs.empty(),
               "nothing to evaluate: give text files, token shards or tasks (e.g. piqa, "
               "lambada_openai, wikitext2_test.txt)");
  MLKV_REQUIRE(e.tokenizer != nullptr || !eval::needs_tokenizer(inputs),
               "text and tasks need a tokenizer, and this engine has none (load with "
               "LoadOptions::tokenizer)");
  return eval::evaluate(e.model, e.tokenizer.get(), inputs, o).document.dump(2);
}

}  // namespace mlkv
