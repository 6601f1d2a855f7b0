// A terminal progress bar for long work (tokenizing, training, evaluation). Draws on stderr,
// redrawn at most every 100 ms, only when stderr is a terminal unless forced; the caller supplies
// the unit ("tok", "MB", "items") and any extra text (loss, tokens/s).
#pragma once

#include <cstdint>
#include <string>

namespace mlkv {

class ProgressBar {
 public:
  // total <= 0: unknown total (no bar, no ETA).
  ProgressBar(std::string label, double total, std::string unit);
  ~ProgressBar();  // finishes the line

  // Sets the absolute progress and an optional suffix ("loss 3.21 | 1520 tok/s").
  void update(double done, const std::string& suffix = "");
  void finish();

  // MLKV_PROGRESS=0 disables; MLKV_PROGRESS=1 forces drawing even when stderr is not a tty.
  static bool enabled();

 private:
  void draw(bool final_draw);
  std::string label_, unit_, suffix_;
  double total_, done_ = 0;
  double start_, last_draw_ = 0;
  bool finished_ = false;
  bool enabled_;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"

}  // namespace mlkv
