// Loss curves as SVG, from the JSONL logs `mlkv train` writes (one record per step: "step",
// "loss", and "val_loss" on validation steps). Several runs share one plot (MHA vs MLKV, say).
// Plain SVG 1.1 with no scripts or external resources, viewable in any browser.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace mlkv::train {

struct LossSeries {
  std::string label;
  std::vector<std::pair<double, double>> train;  // (step, loss)
  std::vector<std::pair<double, double>> val;    // (step, val_loss)
};

// Reads a train_log.jsonl; lines without "step" are skipped. label: defaults to the path.
LossSeries read_train_log(const std::string& path, const std::string& label = "");

// The plot: train loss (thin line, plus a moving average when noisy) and validation loss (line
// with markers) per run, with axes, ticks and a legend. log_x: logarithmic step axis.
std::string loss_plot_svg(const std::vector<LossSeries>& runs, const std::string& title,
                          bool log_x = false);

}  // namespace mlkv::train
