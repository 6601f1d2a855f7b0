// mlkv._mlkv: the extension module under the Python package (python/mlkv), a thin layer over the
// public C++ API (include/mlkv) only. It converts types (token lists, numpy arrays, dicts), releases
// the GIL around every call that computes, and turns mlkv::Error into Python exceptions
// (errors.cpp). The Pythonic surface (prompts as text, stop strings, streaming, lm-eval) is in
// the package's .py files. What this is not: a second engine; nothing here reaches into src/.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "mlkv/mlkv.h"

namespace py = pybind11;

namespace mlkv::python {

namespace {

// An Engine and the lock that keeps its calls one at a time: the GIL is released while the engine
// computes, so two Python threads could otherwise enter the same (not thread-safe) engine. A
// call waits for the lock with the GIL released, so a generation streaming on another thread
// (its callbacks take the GIL) always finishes first.
struct LockedEngine {
  explicit LockedEngine(Engine e) : engine(std::move(e)) {}
  Engine engine;
  std::mutex mu;
};

// A float32 numpy array over a vector's memory: the array owns the vector (zero copy).
py::array_t<float> to_numpy(std::vector<float>&& v, std::vector<py::ssize_t> shape) {
  auto* owned = new std::vector<float>(std::move(v));
  py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<float>*>(p); });
  return py::array_t<float>(shape, owned->data(), free_when_done);
}

py::dict info_dict(const ModelInfo& i) {
  py::dict d;
  d["family"] = i.family;
  d["n_vocab"] = i.n_vocab;
  d["n_embd"] = i.n_embd;
  d["n_layer"] = i.n_layer;
  d["n_head"] = i.n_head;
  d["n_head_kv"] = i.n_head_kv;
  d["n_embd_head"] = i.n_embd_head;
  d["n_ff"] = i.n_ff;
  d["n_ctx"] = i.n_ctx;
  d["n_rot"] = i.n_rot;
  d["norm"] = i.norm;
  d["mlp"] = i.mlp;
  d["parallel_residual"] = i.parallel_residual;
  d["tied_embeddings"] = i.tied_embeddings;
  d["kv_source"] = i.kv_source;
  d["owner_layers"] = i.owner_layers;
  d["n_kv_layers"] = i.n_kv_layers;
  d["kv_share_rope"] = i.kv_share_rope;
  d["bos_token_id"] = i.bos_token_id;
  d["eos_token_id"] = i.eos_token_id;
  d["eos_token_ids"] = i.eos_token_ids;
  d["n_params"] = i.n_params;
  d["scheme"] = i.scheme;
  d["summary"] = i.summary;
  d["kv_bytes_per_token_f32"] = i.kv_bytes_per_token("f32");
  d["kv_reduction_vs_mha"] = i.kv_reduction_vs_mha();
  return d;
}

py::dict generation_dict(const Generation& g) {
  py::dict d;
  d["tokens"] = g.tokens;
  d["text"] = py::str(PyUnicode_DecodeUTF8(g.text.data(), static_cast<py::ssize_t>(g.text.size()),
                                           "replace"));
  d["finish_reason"] = g.finish_reason;
  d["error"] = g.error;
  return d;
}

std::unique_ptr<LockedEngine> load_engine(const std::string& path, int threads, const std::string& weights,
                   const std::string& tokenizer, const std::string& tokenizer_mode,
                   const std::string& device) {
  LoadOptions o;
  o.threads = threads;
  o.weights = weights;
  o.tokenizer = tokenizer;
  o.device = device;
  if (tokenizer_mode == "auto") {
    o.tokenizer_mode = TokenizerMode::kAuto;
  } else if (tokenizer_mode == "required") {
    o.tokenizer_mode = TokenizerMode::kRequired;
  } else if (tokenizer_mode == "none") {
    o.tokenizer_mode = TokenizerMode::kNone;
  } else {
    throw Error("tokenizer_mode must be auto, required or none (got '" + tokenizer_mode + "')");
  }
  // Warnings go to Python's warnings module once the GIL is back (collected meanwhile).
  std::vector<std::string> warnings;
  o.on_warning = [&warnings](const std::string& w) { warnings.push_back(w); };
  Engine e = [&] {
    py::gil_scoped_release unlocked;
    return Engine::load(path, o);
  }();
  for (const std::string& w : warnings) {
    if (PyErr_WarnEx(PyExc_UserWarning, ("mlkv: " + w).c_str(), 1) != 0) throw py::error_already_set();
  }
  return std::make_unique<LockedEngine>(std::move(e));
}

py::list generate(LockedEngine& le, const std::vector<std::vector<int32_t>>& prompts,
                  int max_new_tokens, float temperature, int top_k, float top_p, uint64_t seed,
                  int n_parallel, int n_ctx, const std::string& cache_type, bool stop_at_eos,
                  const std::function<void(int, int32_t)>& on_token) {
  GenerationOptions o;
  o.max_new_tokens = max_new_tokens;
  o.sampling.temperature = temperature;
  o.sampling.top_k = top_k;
  o.sampling.top_p = top_p;
  o.sampling.seed = seed;
  o.n_parallel = n_parallel;
  o.n_ctx = n_ctx;
  o.cache_type = cache_type;
  o.stop_at_eos = stop_at_eos;
  std::vector<Generation> res;
  {
    py::gil_scoped_release unlocked;  // on_token (pybind11's wrapper) takes the GIL per call
    std::lock_guard<std::mutex> lock(le.mu);
    res = le.engine.generate(prompts, o, on_token);
  }
  py::list out;
  for (const Generation& g : res) out.append(generation_dict(g));
  return out;
}

}  // namespace

void bind_engine(py::module_& m) {
  py::class_<LockedEngine>(m, "Engine", "A loaded model (mlkv::Engine). Use mlkv.Model.")
      .def_static("load", &load_engine, py::arg("path"), py::arg("threads") = 0,
                  py::arg("weights") = "f32", py::arg("tokenizer") = "",
                  py::arg("tokenizer_mode") = "auto", py::arg("device") = "cpu")
      // info, the tokenizer and kv_bytes only read what loading set: no lock needed
      .def_property_readonly("info", [](const LockedEngine& le) { return info_dict(le.engine.info()); })
      .def_property_readonly("has_tokenizer", [](const LockedEngine& le) { return le.engine.has_tokenizer(); })
      .def_property_readonly(
          "tokenizer", [](const LockedEngine& le) -> const Tokenizer& { return le.engine.tokenizer(); },
          py::return_value_policy::reference_internal)
      .def("kv_bytes",
           [](const LockedEngine& le, int ctx, int batch, const std::string& cache_type) {
             return le.engine.kv_bytes(ctx, batch, cache_type);
           },
           py::arg("ctx"), py::arg("batch"),
           py::arg("cache_type") = "f32")
      .def(
          "score",
          [](LockedEngine& le, const std::vector<int32_t>& tokens, bool cached,
             const std::string& cache_type) {
            std::vector<float> lp;
            {
              py::gil_scoped_release unlocked;
              std::lock_guard<std::mutex> lock(le.mu);
              lp = le.engine.score(tokens, cached, cache_type);
            }
            const auto n = static_cast<py::ssize_t>(lp.size());
            return to_numpy(std::move(lp), {n});
          },
          py::arg("tokens"), py::arg("cached") = false, py::arg("cache_type") = "f32")
      .def(
          "logits",
          [](LockedEngine& le, const std::vector<int32_t>& tokens) {
            std::vector<float> z;
            {
              py::gil_scoped_release unlocked;
              std::lock_guard<std::mutex> lock(le.mu);
              z = le.engine.logits(tokens);
            }
            const auto n = static_cast<py::ssize_t>(tokens.size());
            return to_numpy(std::move(z), {n, static_cast<py::ssize_t>(le.engine.info().n_vocab)});
          },
          py::arg("tokens"))
      .def("generate", &generate, py::arg("prompts"), py::arg("max_new_tokens") = 32,
           py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("top_p") = 1.0f,
           py::arg("seed") = 0, py::arg("n_parallel") = 8, py::arg("n_ctx") = 0,
           py::arg("cache_type") = "f32", py::arg("stop_at_eos") = true,
           py::arg("on_token") = nullptr)
      .def(
          "loglikelihood",
          [](LockedEngine& le, const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& reqs,
             int batch, int max_ctx, const std::string& cache_type) {
            std::vector<LoglikelihoodRequest> rs;
            rs.reserve(reqs.size());
            for (const auto& [ctx, cont] : reqs) rs.push_back({ctx, cont});
            LoglikelihoodOptions o;
            o.batch = batch;
            o.max_ctx = max_ctx;
            o.cache_type = cache_type;
            std::vector<LoglikelihoodResult> res;
            {
              py::gil_scoped_release unlocked;
              std::lock_guard<std::mutex> lock(le.mu);
              res = loglikelihood(le.engine, rs, o);
            }
            py::list out;
            for (const LoglikelihoodResult& r : res)
              out.append(py::make_tuple(r.logprob, r.greedy, r.n_tokens, r.truncated_tokens));
            return out;
          },
          py::arg("requests"), py::arg("batch") = 16, py::arg("max_ctx") = 0,
          py::arg("cache_type") = "f32")
      .def(
          "evaluate",
          [](LockedEngine& le, const std::vector<std::string>& inputs, const std::string& eval_dir,
             int batch, int ctx, int stride, int64_t limit, int64_t max_bytes, bool bos,
             bool share_context, const std::string& tmpl, const std::string& cache_type,
             const std::string& model_name) {
            EvaluateOptions o;
            o.inputs = inputs;
            o.eval_dir = eval_dir;
            o.batch = batch;
            o.ctx = ctx;
            o.stride = stride;
            o.limit = limit;
            o.max_bytes = max_bytes;
            o.bos = bos;
            o.share_context = share_context;
            o.tmpl = tmpl;
            o.cache_type = cache_type;
            o.model_name = model_name;
            py::gil_scoped_release unlocked;
            std::lock_guard<std::mutex> lock(le.mu);
            return evaluate(le.engine, o);
          },
          py::arg("inputs"), py::arg("eval_dir") = "", py::arg("batch") = 16, py::arg("ctx") = 0,
          py::arg("stride") = 0, py::arg("limit") = 0, py::arg("max_bytes") = 0,
          py::arg("bos") = false, py::arg("share_context") = true, py::arg("template") = "",
          py::arg("cache_type") = "f32", py::arg("model_name") = "");
}

void bind_convert(py::module_& m) {
  m.def(
      "convert",
      [](const std::string& src, const std::string& dst, int kv_heads, int kv_layers,
         const std::vector<int>& owners, const std::vector<int>& kv_source,
         const std::string& merge, const std::string& widen, const std::string& share,
         const std::string& dtype, const std::string& tokenizer, bool force, bool fuse_qkv,
         bool owners_auto, const std::string& calibration, int64_t calibration_tokens,
         int calibration_ctx, const std::string& calibration_stream) {
        ConvertSpec s;
        s.kv_heads = kv_heads;
        s.kv_layers = kv_layers;
        s.owners = owners;
        s.kv_source = kv_source;
        s.owners_auto = owners_auto;
        s.calibration = calibration;
        s.calibration_tokens = calibration_tokens;
        s.calibration_ctx = calibration_ctx;
        s.calibration_stream = calibration_stream;
        s.merge = merge;
        s.widen = widen;
        s.share = share;
        s.dtype = dtype;
        s.tokenizer = tokenizer;
        s.force = force;
        s.fuse_qkv = fuse_qkv;
        py::gil_scoped_release unlocked;
        return convert(src, dst, s);
      },
      py::arg("src"), py::arg("dst"), py::arg("kv_heads") = 0, py::arg("kv_layers") = 0,
      py::arg("owners") = std::vector<int>{}, py::arg("kv_source") = std::vector<int>{},
      py::arg("merge") = "", py::arg("widen") = "none", py::arg("share") = "post",
      py::arg("dtype") = "same", py::arg("tokenizer") = "", py::arg("force") = false,
      py::arg("fuse_qkv") = false, py::arg("owners_auto") = false, py::arg("calibration") = "",
      py::arg("calibration_tokens") = int64_t{16384}, py::arg("calibration_ctx") = 0,
      py::arg("calibration_stream") = "converted");
}

}  // namespace mlkv::python

PYBIND11_MODULE(_mlkv, m) {
  m.doc() = "mlkv's C++ engine (use the mlkv package, not this module)";
  mlkv::python::bind_errors(m);
  mlkv::python::bind_tokenizer(m);
  mlkv::python::bind_engine(m);
  mlkv::python::bind_convert(m);
}
