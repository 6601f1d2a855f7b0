#include "runtime/bench_sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

#include "core/check.h"
#include "kernels/backend.h"
#include "kernels/threads.h"
#include "kv/kv_cache.h"
#include "model/layer_spec.h"
#include "model/presets.h"
#include "model/weights.h"
#include "runtime/options.h"

namespace mlkv {

namespace {

const char* weight_name(WeightType w) {
  switch (w) {
    case WeightType::kF16: return "f16";
    case WeightType::kBF16: return "bf16";
    case WeightType::kQ8_0: return "q8_0";
    default: return "f32";
  }
}

std::vector<SweepConfig> default_configs(int L, int H) {
  std::vector<SweepConfig> want = {{L, H}, {L, H / 3}, {L / 3, H}, {L, 1}, {L / 2, 1}, {2, 1}, {1, 1}};
  std::vector<SweepConfig> out;
  for (const SweepConfig& s : want) {
    if (s.kv_layers < 1 || s.kv_heads < 1 || H % s.kv_heads != 0) continue;
    const bool dup = std::any_of(out.begin(), out.end(), [&](const SweepConfig& o) {
      return o.kv_layers == s.kv_layers && o.kv_heads == s.kv_heads;
    });
    if (!dup) out.push_back(s);
  }
  return out;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

std::string sharing_name(int kv_layers, int kv_heads, int n_layer, int n_head) {
  const char* kind = kv_layers < n_layer ? "MLKV" : kv_heads == n_head ? "MHA" : kv_heads == 1 ? "MQA" : "GQA";
  return cat(kind, "-", kv_layers * kv_heads);
}

SweepResult run_sweep(const SweepOptions& opt,
                      const std::function<void(const SweepRow&, int, int)>& progress) {
  const ModelConfig base = geometry_preset(opt.geometry);
  const std::vector<SweepConfig> configs =
      opt.configs.empty() ? default_configs(base.n_layer, base.n_head) : opt.configs;
  MLKV_REQUIRE(!opt.batches.empty() && !opt.contexts.empty() && !opt.cache_types.empty(),
               "bench --sweep: batches, contexts and cache types must not be empty");
  MLKV_REQUIRE(opt.gen >= 1 && opt.reps >= 1, "bench --sweep: gen and reps must be positive");
  for (int b : opt.batches) MLKV_REQUIRE(b >= 1, "bench --sweep: a batch must be positive (got ", b, ")");
  for (int ctx : opt.contexts) {
    MLKV_REQUIRE(ctx > opt.gen && ctx <= base.n_ctx, "bench --sweep: a context must be in [",
                 opt.gen + 1, ", ", base.n_ctx, "] (gen + 1 up to the model's; got ", ctx, ")");
  }
  std::vector<KvCacheType> types;
  for (const std::string& t : opt.cache_types) {
    types.push_back(parse_cache_type(t, "--sweep-cache"));
    KVCache probe(kv_layout(base), 1, 1, types.back(), opt.model.device);  // refuses a misfit now
  }
  for (const SweepConfig& s : configs) {
    MLKV_REQUIRE(s.kv_layers >= 1 && s.kv_layers <= base.n_layer && s.kv_heads >= 1 &&
                     base.n_head % s.kv_heads == 0,
                 "bench --sweep: ", s.kv_layers, " x ", s.kv_heads, " does not fit ", opt.geometry,
                 " (", base.n_layer, " layers x ", base.n_head, " heads: 1 <= m <= ", base.n_layer,
                 ", g dividing ", base.n_head, ")");
  }

  SweepResult out;
  out.geometry = opt.geometry;
  out.weights = weight_name(opt.model.weights);
  out.backend = backend<float>(opt.model.device).name();
  out.threads = num_threads();
  if (opt.probe) {
    out.bw_before = measure_device_bandwidth(opt.model.device);
    out.gemm_before = measure_gemm_peak(opt.model.device);
  }
  const int total = static_cast<int>(configs.size() * types.size() * opt.contexts.size() * opt.batches.size());
  int done = 0;
  for (const SweepConfig& s : configs) {
    LoadedModel lm;
    lm.config = base;
    apply_sharing(&lm.config, s.kv_heads, {.kv_layers = s.kv_layers});
    init_weights_random(lm.config, &lm.weights, 1234);
    Model model(std::move(lm), opt.model);
    const ModelConfig& c = model.config();
    for (size_t ti = 0; ti < types.size(); ++ti) {
      for (int ctx : opt.contexts) {
        for (int batch : opt.batches) {
          SweepRow row;
          row.config = sharing_name(s.kv_layers, s.kv_heads, c.n_layer, c.n_head);
          row.shape = s;
          row.batch = batch;
          row.context = ctx;
          row.cache_type = opt.cache_types[ti];
          row.kv_bytes_per_token = c.kv_bytes_per_token(types[ti]);
          BenchOptions o;
          o.prompt = ctx - opt.gen;
          o.gen = opt.gen;
          o.batch = batch;
          o.reps = opt.reps;
          o.cache_elem = types[ti];
          o.synthetic_context = true;
          row.skipped = opt.max_cache_bytes > 0 &&
                        kv_cache_bytes(c, batch, ctx, types[ti]) > opt.max_cache_bytes;
          if (!row.skipped) row.r = bench_model(model, o);
          out.rows.push_back(row);
          ++done;
          if (progress) progress(out.rows.back(), done, total);
        }
      }
    }
  }
  if (opt.probe) {
    out.bw_after = measure_device_bandwidth(opt.model.device);
    out.gemm_after = measure_gemm_peak(opt.model.device);
  }
  out.bw = std::max(out.bw_before, out.bw_after);
  out.gemm = std::max(out.gemm_before, out.gemm_after);
  for (SweepRow& row : out.rows) {
    if (row.skipped || out.bw <= 0 || out.gemm <= 0) continue;
    const DecodeBound d = decode_bound(row.r, row.batch, out.bw, out.gemm);
    row.compute_bound = d.compute_bound();
    row.bound_steps_s = d.steps_s;
    row.fraction_of_bound = d.fraction;
  }
  return out;
}

std::string sweep_markdown(const SweepResult& s) {
  std::string md = cat("Decode of random ", s.geometry, " models (", s.weights, " weights, ", s.backend,
                       ", ", s.threads, " threads). Read bandwidth ", fmt("%.1f", s.bw / 1e9),
                       " GB/s (before ", fmt("%.1f", s.bw_before / 1e9), ", after ",
                       fmt("%.1f", s.bw_after / 1e9), "), f32 GEMM peak ", fmt("%.1f", s.gemm / 1e9),
                       " GFLOP/s (before ", fmt("%.1f", s.gemm_before / 1e9), ", after ",
                       fmt("%.1f", s.gemm_after / 1e9), "): the bound of a step is the larger of "
                       "its memory time and its compute time.\n\n");
  md += "| config | m x g | cache | KV bytes/token | context | batch | decode tok/s | ms/step | MB read/step "
        "| bound steps/s | % of bound |\n";
  md += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  for (const SweepRow& r : s.rows) {
    md += cat("| ", r.config, " | ", r.shape.kv_layers, " x ", r.shape.kv_heads, " | ", r.cache_type, " | ",
              r.kv_bytes_per_token, " | ", r.context, " | ", r.batch, " | ");
    if (r.skipped) {
      md += "skipped (cache over the limit) | | | | |\n";
      continue;
    }
    md += cat(fmt("%.1f", r.r.decode_tok_s), " | ", fmt("%.2f", r.r.decode_step_ms), " | ",
              fmt("%.1f", static_cast<double>(r.r.weight_bytes + r.r.kv_read_bytes) / 1e6), " | ");
    if (r.bound_steps_s > 0) {
      md += cat(fmt("%.1f", r.bound_steps_s), r.compute_bound ? " (compute)" : " (memory)", " | ",
                fmt("%.1f%%", 100.0 * r.fraction_of_bound), r.fraction_of_bound > 1.0 ? " **above 100%**" : "",
                " |\n");
    } else {
      md += "| |\n";
    }
  }
  return md;
}

namespace {

// A row's measurements; with_bound adds the bound the sweep's probes set.
nlohmann::json row_object(const SweepRow& r, bool with_bound) {
  nlohmann::json j = {{"config", r.config},
                      {"kv_layers", r.shape.kv_layers},
                      {"kv_heads", r.shape.kv_heads},
                      {"cache_type", r.cache_type},
                      {"kv_bytes_per_token", r.kv_bytes_per_token},
                      {"context", r.context},
                      {"batch", r.batch},
                      {"skipped", r.skipped}};
  if (r.skipped) return j;
  j["decode_tok_s"] = r.r.decode_tok_s;
  j["decode_step_ms"] = r.r.decode_step_ms;
  j["weight_bytes_per_step"] = r.r.weight_bytes;
  j["kv_read_bytes_per_step"] = r.r.kv_read_bytes;
  j["kv_cache_bytes"] = r.r.kv_cache_bytes;
  j["step_flops"] = r.r.step_flops;
  if (with_bound) {
    j["bound_steps_s"] = r.bound_steps_s;
    j["bound"] = r.bound_steps_s > 0 ? (r.compute_bound ? "compute" : "memory") : "unknown";
    j["fraction_of_bound"] = r.fraction_of_bound;
    j["fraction_above_100"] = r.fraction_of_bound > 1.0;
  }
  return j;
}

}  // namespace

std::string sweep_row_json(const SweepRow& r) { return row_object(r, false).dump(); }

std::string sweep_json(const SweepResult& s) {
  nlohmann::json rows = nlohmann::json::array();
  for (const SweepRow& r : s.rows) rows.push_back(row_object(r, true));
  const nlohmann::json doc = {{"geometry", s.geometry},
                              {"weights", s.weights},
                              {"backend", s.backend},
                              {"threads", s.threads},
                              {"read_bandwidth_gb_s", s.bw / 1e9},
                              {"read_bandwidth_before_gb_s", s.bw_before / 1e9},
                              {"read_bandwidth_after_gb_s", s.bw_after / 1e9},
                              {"gemm_peak_gflop_s", s.gemm / 1e9},
                              {"gemm_peak_before_gflop_s", s.gemm_before / 1e9},
                              {"gemm_peak_after_gflop_s", s.gemm_after / 1e9},
                              {"rows", rows}};
  return doc.dump(1) + "\n";
}

std::string sweep_svg(const SweepResult& s) {
  // Configurations in sweep order along x; one series per cache type x context x batch.
  // Colour by context x batch, dash pattern by cache type.
  std::vector<std::string> names, shapes, caches;
  std::map<std::string, std::vector<std::pair<int, const SweepRow*>>> series;
  std::vector<std::string> order;
  std::map<std::string, std::pair<size_t, size_t>> style;  // series -> (colour, dash)
  auto index_of = [](std::vector<std::string>& v, const std::string& x) {
    auto it = std::find(v.begin(), v.end(), x);
    if (it != v.end()) return static_cast<size_t>(it - v.begin());
    v.push_back(x);
    return v.size() - 1;
  };
  for (const SweepRow& r : s.rows) {
    index_of(names, r.config);
    if (r.skipped) continue;
    const std::string key = cat(r.cache_type, " ctx ", r.context, " b", r.batch);
    if (!series.count(key)) {
      order.push_back(key);
      style[key] = {index_of(shapes, cat(r.context, "/", r.batch)), index_of(caches, r.cache_type)};
    }
    const int x = static_cast<int>(std::find(names.begin(), names.end(), r.config) - names.begin());
    series[key].push_back({x, &r});
  }
  const char* dashes[] = {"", "6,3", "2,2"};
  const char* colors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                          "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  const double W = 520, H = 360, ml = 70, mr = 20, mt = 40, mb = 70;
  std::string svg = cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", 2 * W + 200, "\" height=\"", H,
                        "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
  // Two panels on log-scale y: decode tokens/s, and MB read per step.
  for (int panel = 0; panel < 2; ++panel) {
    const double x0 = panel * W;
    auto value = [&](const SweepRow* r) {
      return panel == 0 ? r->r.decode_tok_s : static_cast<double>(r->r.weight_bytes + r->r.kv_read_bytes) / 1e6;
    };
    double lo = 1e300, hi = 0;
    for (const auto& [k, pts] : series) {
      for (const auto& [x, r] : pts) {
        const double v = value(r);
        if (v > 0) {
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      }
    }
    if (hi <= 0) continue;
    const double llo = std::floor(std::log10(lo)), lhi = std::max(llo + 1, std::ceil(std::log10(hi)));
    const double pw = W - ml - mr, ph = H - mt - mb;
    auto px = [&](int x) { return x0 + ml + (names.size() > 1 ? pw * x / (names.size() - 1.0) : pw / 2); };
    auto py = [&](double v) { return mt + ph * (1.0 - (std::log10(v) - llo) / (lhi - llo)); };
    svg += cat("<text x=\"", x0 + ml + pw / 2, "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">",
               panel == 0 ? "decode tokens/s" : "MB read per decode step", " (log scale)</text>\n");
    svg += cat("<rect x=\"", x0 + ml, "\" y=\"", mt, "\" width=\"", pw, "\" height=\"", ph,
               "\" fill=\"none\" stroke=\"black\"/>\n");
    for (double e = llo; e <= lhi; e += 1) {
      const double y = py(std::pow(10.0, e));
      svg += cat("<line x1=\"", x0 + ml, "\" x2=\"", x0 + ml + pw, "\" y1=\"", y, "\" y2=\"", y,
                 "\" stroke=\"#ddd\"/><text x=\"", x0 + ml - 6, "\" y=\"", y + 4, "\" text-anchor=\"end\">",
                 fmt("%g", std::pow(10.0, e)), "</text>\n");
    }
    for (size_t i = 0; i < names.size(); ++i) {
      const double x = px(static_cast<int>(i));
      svg += cat("<text x=\"", x, "\" y=\"", mt + ph + 16, "\" text-anchor=\"end\" transform=\"rotate(-35 ", x,
                 " ", mt + ph + 16, ")\">", names[i], "</text>\n");
    }
    for (size_t si = 0; si < order.size(); ++si) {
      const auto& pts = series[order[si]];
      const char* col = colors[style[order[si]].first % 10];
      const char* dash = dashes[style[order[si]].second % 3];
      std::string path;
      for (const auto& [x, r] : pts) {
        if (value(r) <= 0) continue;
        path += cat(path.empty() ? "M" : " L", fmt("%.1f", px(x)), ",", fmt("%.1f", py(value(r))));
        svg += cat("<circle cx=\"", fmt("%.1f", px(x)), "\" cy=\"", fmt("%.1f", py(value(r))),
                   "\" r=\"3\" fill=\"", col, "\"/>\n");
      }
      svg += cat("<path d=\"", path, "\" fill=\"none\" stroke=\"", col, "\" stroke-width=\"1.5\"",
                 dash[0] ? cat(" stroke-dasharray=\"", dash, "\"") : std::string(), "/>\n");
    }
  }
  for (size_t si = 0; si < order.size(); ++si) {
    const double y = 50 + 18 * static_cast<double>(si);
    const char* dash = dashes[style[order[si]].second % 3];
    svg += cat("<line x1=\"", 2 * W + 6, "\" x2=\"", 2 * W + 26, "\" y1=\"", y - 3, "\" y2=\"", y - 3,
               "\" stroke=\"", colors[style[order[si]].first % 10], "\" stroke-width=\"2.5\"",
               dash[0] ? cat(" stroke-dasharray=\"", dash, "\"") : std::string(), "/><text x=\"", 2 * W + 30,
               "\" y=\"", y + 1, "\">", order[si], "</text>\n");
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace mlkv
