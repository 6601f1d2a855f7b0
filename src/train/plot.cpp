// SVG loss plots (plot.h).
#include "train/plot.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/check.h"

namespace mlkv::train {

LossSeries read_train_log(const std::string& path, const std::string& label) {
  std::ifstream in(path);
  if (!in.good()) fail_errno("cannot open training log", path, errno);
  LossSeries s;
  s.label = label.empty() ? path : label;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    // The last line may be cut by a killed run (the trainer drops it on --resume); any other
    // line must parse.
    if (j.is_discarded() && in.eof()) break;
    MLKV_REQUIRE(!j.is_discarded(), path, ":", line_no, ": not a JSON line");
    if (!j.contains("step")) continue;
    const double step = j["step"].get<double>();
    if (j.contains("loss") && j["loss"].is_number())
      s.train.emplace_back(step, j["loss"].get<double>());
    if (j.contains("val_loss") && j["val_loss"].is_number())
      s.val.emplace_back(step, j["val_loss"].get<double>());
  }
  return s;
}

namespace {

// "Nice" tick values covering [lo, hi].
std::vector<double> ticks(double lo, double hi, int target) {
  const double span = hi - lo;
  if (!(span > 0)) return {lo};
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
  return t;
}

std::string fmt(double v) {
  char buf[32];
  if (v != 0 && (std::fabs(v) >= 1e5 || std::fabs(v) < 1e-2)) {
    std::snprintf(buf, sizeof buf, "%.2g", v);
  } else {
    std::snprintf(buf, sizeof buf, "%g", v);
  }
  return buf;
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                         "#9467bd", "#8c564b", "#e377c2", "#17becf"};

}  // namespace

std::string loss_plot_svg(const std::vector<LossSeries>& runs, const std::string& title,
                          bool log_x) {
  const double W = 860, H = 520, ml = 70, mr = 200, mt = 40, mb = 55;
  const double pw = W - ml - mr, ph = H - mt - mb;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
  for (const auto& r : runs) {
    for (const auto* pts : {&r.train, &r.val}) {
      for (const auto& [x, y] : *pts) {
        if (!std::isfinite(y)) continue;
        x0 = std::min(x0, x);
        x1 = std::max(x1, x);
        y0 = std::min(y0, y);
        y1 = std::max(y1, y);
      }
    }
  }
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
       "fill=\"white\"/>\n";
  o << "<text x=\"" << ml + pw / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">"
    << escape(title) << "</text>\n";
  if (!std::isfinite(x0)) {
    o << "<text x=\"" << W / 2 << "\" y=\"" << H / 2
      << "\" text-anchor=\"middle\">no data</text>\n</svg>\n";
    return o.str();
  }
  if (log_x) x0 = std::max(x0, 1.0);
  if (x1 <= x0) x1 = x0 + 1;
  const double pad = (y1 - y0) * 0.05 + 1e-9;
  y0 -= pad;
  y1 += pad;
  auto fx = [&](double x) {
    if (log_x)
      return ml + pw * (std::log(std::max(x, x0)) - std::log(x0)) / (std::log(x1) - std::log(x0));
    return ml + pw * (x - x0) / (x1 - x0);
  };
  auto fy = [&](double y) { return mt + ph * (1 - (y - y0) / (y1 - y0)); };
  // grid, ticks, axes
  for (double t : ticks(y0, y1, 6)) {
    o << "<line x1=\"" << ml << "\" x2=\"" << ml + pw << "\" y1=\"" << fy(t) << "\" y2=\"" << fy(t)
      << "\" stroke=\"#e5e5e5\"/><text x=\"" << ml - 6 << "\" y=\"" << fy(t) + 4
      << "\" text-anchor=\"end\">" << fmt(t) << "</text>\n";
  }
  std::vector<double> xt;
  if (log_x) {
    for (double p = std::pow(10.0, std::floor(std::log10(x0))); p <= x1 * 1.0001; p *= 10) {
      if (p >= x0) xt.push_back(p);
    }
  } else {
    xt = ticks(x0, x1, 8);
  }
  for (double t : xt) {
    o << "<line x1=\"" << fx(t) << "\" x2=\"" << fx(t) << "\" y1=\"" << mt << "\" y2=\"" << mt + ph
      << "\" stroke=\"#e5e5e5\"/><text x=\"" << fx(t) << "\" y=\"" << mt + ph + 18
      << "\" text-anchor=\"middle\">" << fmt(t) << "</text>\n";
  }
  o << "<rect x=\"" << ml << "\" y=\"" << mt << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"#333\"/>\n";
  o << "<text x=\"" << ml + pw / 2 << "\" y=\"" << H - 12
    << "\" text-anchor=\"middle\">step</text>\n";
  o << "<text transform=\"translate(18," << mt + ph / 2
    << ") rotate(-90)\" text-anchor=\"middle\">loss (nats/token)</text>\n";
  auto polyline = [&](const std::vector<std::pair<double, double>>& pts, const char* color,
                      double width, double opacity) {
    if (pts.empty()) return;
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << width
      << "\" stroke-opacity=\"" << opacity << "\" points=\"";
    for (const auto& [x, y] : pts) {
      if (std::isfinite(y)) o << fx(x) << "," << fy(y) << " ";
    }
    o << "\"/>\n";
  };
  double ly = mt + 10;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    const char* color = kColors[i % (sizeof kColors / sizeof kColors[0])];
    const bool smooth = r.train.size() > 50;
    polyline(r.train, color, 1.0, smooth ? 0.3 : 0.9);
    if (smooth) {  // centred moving average (no lag), so trends read through the noise
      const int64_t n = static_cast<int64_t>(r.train.size());
      const int64_t half = std::max<int64_t>(2, std::min<int64_t>(50, n / 40));
      std::vector<double> prefix(static_cast<size_t>(n) + 1, 0.0);
      for (int64_t i = 0; i < n; ++i)
        prefix[static_cast<size_t>(i) + 1] =
            prefix[static_cast<size_t>(i)] + r.train[static_cast<size_t>(i)].second;
      std::vector<std::pair<double, double>> avg;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t w = std::min({half, i, n - 1 - i});  // shrink the window at the ends
        const double m =
            (prefix[static_cast<size_t>(i + w + 1)] - prefix[static_cast<size_t>(i - w)]) /
            static_cast<double>(2 * w + 1);
        avg.emplace_back(r.train[static_cast<size_t>(i)].first, m);
      }
      polyline(avg, color, 1.8, 1.0);
    }
    if (!r.val.empty()) {
      o << "<polyline fill=\"none\" stroke=\"" << color
        << "\" stroke-width=\"2\" stroke-dasharray=\"6,3\" points=\"";
      for (const auto& [x, y] : r.val) o << fx(x) << "," << fy(y) << " ";
      o << "\"/>\n";
      for (const auto& [x, y] : r.val) {
        o << "<circle cx=\"" << fx(x) << "\" cy=\"" << fy(y) << "\" r=\"3\" fill=\"" << color
          << "\"/>\n";
      }
    }
    // legend
    const double lx = ml + pw + 12;
    o << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << ly << "\" y2=\"" << ly
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"/><text x=\"" << lx + 28 << "\" y=\""
      << ly + 4 << "\">" << escape(r.label) << " train</text>\n";
    ly += 18;
    if (!r.val.empty()) {
      o << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"" << ly << "\" y2=\"" << ly
        << "\" stroke=\"" << color << "\" stroke-width=\"2\" stroke-dasharray=\"6,3\"/><text x=\""
        << lx + 28 << "\" y=\"" << ly + 4 << "\">" << escape(r.label) << " val</text>\n";
      ly += 18;
    }
  }
  o << "</svg>\n";
  return o.str();
}

}  // namespace mlkv::train
