#include "core/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/timer.h"

namespace mlkv {

bool ProgressBar::enabled() {
  const char* env = std::getenv("MLKV_PROGRESS");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  if (env != nullptr && std::strcmp(env, "1") == 0) return true;
  return isatty(STDERR_FILENO) != 0;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  char buf[32];
  long t = std::lround(s);
  if (t >= 3600) {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
  } else if (t >= 60) {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lds", t);
  }
  return buf;
}

ProgressBar::ProgressBar(std::string label, double total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), start_(now_seconds()),
      enabled_(enabled()) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::update(double done, const std::string& suffix) {
  done_ = done;
  suffix_ = suffix;
  double t = now_seconds();
  if (t - last_draw_ >= 0.1) {
    last_draw_ = t;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final_draw) {
  if (!enabled_) return;
  double elapsed = now_seconds() - start_;
  std::string line = "\r" + label_ + " ";
  char buf[160];
  if (total_ > 0) {
    double frac = std::min(1.0, done_ / total_);
    constexpr int kWidth = 24;
    int filled = static_cast<int>(frac * kWidth);
    line += "[" + std::string(filled, '#') + std::string(kWidth - filled, '.') + "] ";
    double eta = done_ > 0 ? elapsed * (total_ - done_) / done_ : NAN;
    std::snprintf(buf, sizeof buf, "%5.1f%% %.0f/%.0f %s | %s elapsed, ETA %s", 100 * frac, done_,
                  total_, unit_.c_str(), format_duration(elapsed).c_str(),
                  format_duration(eta).c_str());
  } else {
    std::snprintf(buf, sizeof buf, "%.0f %s | %s elapsed", done_, unit_.c_str(),
                  format_duration(elapsed).c_str());
  }
  line += buf;
  if (!suffix_.empty()) line += " | " + suffix_;
  line += "\x1b[K";
  if (final_draw) line += "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace mlkv
