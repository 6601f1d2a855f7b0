// What `mlkv reproduce` writes for people from its results document (reproduce.h): the markdown
// table with the paper's figures beside ours, and the Pareto plot of cache size vs quality.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/check.h"
#include "experiment/reproduce.h"

namespace mlkv::experiment {

using json = nlohmann::json;

namespace {

std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

double num(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

}  // namespace

std::string results_markdown(const json& r) {
  const json& s = r["scale"];
  std::string md;
  md += cat("# mlkv reproduce: preset `", r["preset"].get<std::string>(), "`\n\n");
  md += cat(r.value("note", std::string()), "\n\n");
  md += cat("Scale: 12 layers x 12 heads, ", fmt("%.2f", num(s, "n_params") / 1e6),
            " M parameters, d_head ",
            s["d_head"].get<int>(), ", context ", s["ctx"].get<int>(), "; pretrained on ",
            s["pretrain_tokens"].get<int64_t>(), " tokens (",
            fmt("%.2f", num(s, "pretrain_epochs")), " epochs of ",
            s["train_tokens"].get<int64_t>(), " training tokens), every configuration uptrained on ",
            s["uptrain_tokens"].get<int64_t>(), " tokens; held-out text: ",
            s["heldout_tokens"].get<int64_t>(),
            " tokens no training saw. The paper: Pythia-160M (162 M parameters, d_head 64, "
            "context 2048, pretrained on 300 B tokens of the Pile), uptrained on ~5 B tokens.\n\n");
  md += "Losses are nats per token on the held-out text (after conversion / after uptraining); "
        "the task columns are accuracies after uptraining (lm-evaluation-harness's rules); "
        "\"avg\" is the paper's average of ARC-e, LAMBADA, PIQA and SciQ (%). KV bytes per token "
        "are for an f32 cache.\n\n";
  md += "| config | M x G | KV bytes/token | params | loss converted | loss uptrained | "
        "held-out ppl | bits/byte | WikiText-2 bits/byte | LAMBADA acc | LAMBADA ppl | ARC-e | "
        "PIQA | SciQ | avg | paper avg | paper LAMBADA ppl |\n";
  md += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (const json& c : r["configs"]) {
    md += cat("| ", c["config"].get<std::string>(), " | ", c["kv_layers"].get<int>(), " x ",
              c["kv_heads"].get<int>(), " | ", c["kv_bytes_per_token"].get<int64_t>(), " | ",
              fmt("%.2f M", num(c, "n_params") / 1e6), " | ", fmt("%.4f", num(c, "loss_converted")),
              " | ", fmt("%.4f", num(c, "loss_uptrained")), " | ",
              fmt("%.2f", num(c, "ppl_uptrained")), " | ", fmt("%.4f", num(c, "bits_per_byte")),
              " | ", fmt("%.4f", num(c, "wikitext_bits_per_byte")), " | ",
              fmt("%.4f", num(c, "lambada_acc")), " | ", fmt("%.1f", num(c, "lambada_ppl")), " | ",
              fmt("%.4f", num(c, "arc_easy_acc")), " | ", fmt("%.4f", num(c, "piqa_acc")), " | ",
              fmt("%.4f", num(c, "sciq_acc")), " | ", fmt("%.2f", num(c, "avg_acc")), " | ",
              fmt("%.2f", num(c, "paper_avg_acc")), " | ", fmt("%.1f", num(c, "paper_lambada_ppl")),
              " |\n");
  }
  md += "\nBeyond the paper's procedure: held-out loss right after conversion with each merge of "
        "K/V across layers (`owner`: the owner layer's K/V, used above; `pairwise`: the authors' "
        "running average; `mean`; `calibrated`: the owner's K/V with query and output maps fitted "
        "on training text, no training, docs/CONVERT.md; `calibrated, searched owners`: the same "
        "with the owner layers chosen by the calibration error), after the same uptraining "
        "with distillation from the MHA base (loss = 0.5 CE + 0.5 KL(base || model), "
        "docs/TRAINING.md) where it was run, and after that uptraining started from the calibrated "
        "conversion (searched owners where layers share) instead of `owner`.\n\n";
  md += "| config | converted: owner | pairwise | mean | calibrated | calibrated, searched owners "
        "| searched owner layers | uptrained | uptrained + distillation "
        "| calibrated, uptrained + distillation |\n";
  md += "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const json& c : r["configs"]) {
    std::string owners = "-";
    if (c.contains("kv_source_auto")) {
      std::vector<int> ks = c["kv_source_auto"].get<std::vector<int>>();
      owners.clear();
      for (size_t l = 0; l < ks.size(); ++l) {
        if (ks[l] == static_cast<int>(l)) owners += cat(owners.empty() ? "" : ",", l);
      }
    }
    md += cat("| ", c["config"].get<std::string>(), " | ", fmt("%.4f", num(c, "loss_converted")),
              " | ", fmt("%.4f", num(c, "loss_converted_pairwise")), " | ",
              fmt("%.4f", num(c, "loss_converted_mean")), " | ",
              fmt("%.4f", num(c, "loss_converted_calibrated")), " | ",
              fmt("%.4f", num(c, "loss_converted_calibrated_auto")), " | ", owners, " | ",
              fmt("%.4f", num(c, "loss_uptrained")), " | ",
              fmt("%.4f", num(c, "loss_uptrained_distilled")), " | ",
              fmt("%.4f", num(c, "loss_uptrained_calibrated_distilled")), " |\n");
  }
  return md;
}

std::string pareto_svg(const json& r) {
  struct Pt {
    std::string name;
    double x, conv, up;  // KV bytes/token; perplexity after conversion / uptraining
  };
  std::vector<Pt> pts;
  for (const json& c : r["configs"]) {
    pts.push_back({c["config"].get<std::string>(), num(c, "kv_bytes_per_token"),
                   num(c, "ppl_converted"), num(c, "ppl_uptrained")});
  }
  MLKV_CHECK(!pts.empty());
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const Pt& p : pts) {
    x0 = std::min(x0, std::log2(p.x));
    x1 = std::max(x1, std::log2(p.x));
    for (double y : {p.conv, p.up}) {
      if (!std::isfinite(y)) continue;
      y0 = std::min(y0, y);
      y1 = std::max(y1, y);
    }
  }
  if (x1 - x0 < 1) x1 = x0 + 1;
  if (!(y1 > y0)) y1 = y0 + 1;
  const double pad_y = (y1 - y0) * 0.08;
  y0 -= pad_y;
  y1 += pad_y;
  x0 -= 0.3;
  x1 += 0.3;
  const double W = 760, H = 480, L = 70, R = 150, T = 40, B = 55;
  auto sx = [&](double v) { return L + (std::log2(v) - x0) / (x1 - x0) * (W - L - R); };
  auto sy = [&](double v) { return T + (y1 - v) / (y1 - y0) * (H - T - B); };
  std::string s;
  s += cat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", W, "\" height=\"", H,
           "\" font-family=\"sans-serif\" font-size=\"12\">\n");
  s += cat("<rect width=\"", W, "\" height=\"", H, "\" fill=\"white\"/>\n");
  s += cat("<text x=\"", W / 2, "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">KV cache vs ",
           "held-out perplexity (preset ", r["preset"].get<std::string>(), ")</text>\n");
  // Axes, ticks: powers of two on x, five steps on y.
  s += cat("<line x1=\"", L, "\" y1=\"", H - B, "\" x2=\"", W - R, "\" y2=\"", H - B,
           "\" stroke=\"black\"/>\n<line x1=\"", L, "\" y1=\"", T, "\" x2=\"", L, "\" y2=\"", H - B,
           "\" stroke=\"black\"/>\n");
  for (int e = static_cast<int>(std::ceil(x0)); e <= static_cast<int>(std::floor(x1)); ++e) {
    const double px = L + (e - x0) / (x1 - x0) * (W - L - R);
    s += cat("<line x1=\"", px, "\" y1=\"", H - B, "\" x2=\"", px, "\" y2=\"", H - B + 5,
             "\" stroke=\"black\"/><text x=\"", px, "\" y=\"", H - B + 18,
             "\" text-anchor=\"middle\">", static_cast<int64_t>(1) << e, "</text>\n");
  }
  for (int i = 0; i <= 5; ++i) {
    const double v = y0 + (y1 - y0) * i / 5;
    s += cat("<line x1=\"", L - 5, "\" y1=\"", sy(v), "\" x2=\"", L, "\" y2=\"", sy(v),
             "\" stroke=\"black\"/><text x=\"", L - 8, "\" y=\"", sy(v) + 4,
             "\" text-anchor=\"end\">", fmt("%.4g", v), "</text>\n");
  }
  s += cat("<text x=\"", (L + W - R) / 2, "\" y=\"", H - 12,
           "\" text-anchor=\"middle\">KV cache bytes per token (f32, log scale)</text>\n");
  s += cat("<text x=\"18\" y=\"", (T + H - B) / 2, "\" text-anchor=\"middle\" transform=\"rotate(-90 18 ",
           (T + H - B) / 2, ")\">held-out perplexity</text>\n");
  // The Pareto front of the uptrained points: no other point has a smaller cache and a lower
  // perplexity.
  std::vector<Pt> sorted = pts;
  std::sort(sorted.begin(), sorted.end(), [](const Pt& a, const Pt& b) {
    return a.x < b.x || (a.x == b.x && a.up < b.up);
  });
  std::string front;
  double best = INFINITY;
  for (const Pt& p : sorted) {
    if (!std::isfinite(p.up) || p.up >= best) continue;
    best = p.up;
    front += cat(front.empty() ? "" : " ", sx(p.x), ",", sy(p.up));
  }
  s += cat("<polyline points=\"", front, "\" fill=\"none\" stroke=\"#1f77b4\" stroke-dasharray=\"4 3\"/>\n");
  for (const Pt& p : pts) {
    if (std::isfinite(p.conv)) {
      s += cat("<circle cx=\"", sx(p.x), "\" cy=\"", sy(p.conv),
               "\" r=\"4\" fill=\"none\" stroke=\"#d62728\"/>\n");
    }
    if (std::isfinite(p.up)) {
      s += cat("<circle cx=\"", sx(p.x), "\" cy=\"", sy(p.up), "\" r=\"4\" fill=\"#1f77b4\"/>\n");
      s += cat("<text x=\"", sx(p.x) + 6, "\" y=\"", sy(p.up) - 6, "\" font-size=\"10\">", p.name,
               "</text>\n");
    }
  }
  // Legend.
  const double lx = W - R + 15;
  s += cat("<circle cx=\"", lx, "\" cy=\"", T + 10, "\" r=\"4\" fill=\"#1f77b4\"/><text x=\"", lx + 10,
           "\" y=\"", T + 14, "\">after uptraining</text>\n");
  s += cat("<circle cx=\"", lx, "\" cy=\"", T + 30, "\" r=\"4\" fill=\"none\" stroke=\"#d62728\"/>",
           "<text x=\"", lx + 10, "\" y=\"", T + 34, "\">after conversion</text>\n");
  s += cat("<line x1=\"", lx - 6, "\" y1=\"", T + 50, "\" x2=\"", lx + 6, "\" y2=\"", T + 50,
           "\" stroke=\"#1f77b4\" stroke-dasharray=\"4 3\"/><text x=\"", lx + 10, "\" y=\"", T + 54,
           "\">Pareto front</text>\n");
  s += "</svg>\n";
  return s;
}

}  // namespace mlkv::experiment
