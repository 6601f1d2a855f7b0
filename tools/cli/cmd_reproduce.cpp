// `mlkv reproduce --preset P --out DIR`: the MLKV paper's experiment end to end
// (src/experiment/reproduce.h), resumable: rerun the same command to continue a cut run. This
// file parses the options, prints the stages and the table, and turns the Pareto plot into a PNG
// with rsvg-convert (librsvg2-bin) when it is installed.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "core/timer.h"
#include "experiment/reproduce.h"

namespace mlkv::cli {

namespace {

struct ReproduceArgs {
  std::string preset = "demo", out, data_root, configs;
  int threads = 0;
  uint64_t seed = 1234;
  bool no_progress = false;
};

// The default data root: $MLKV_DATA_DIR, else ../shared/data (the project's layout).
std::string default_data_root() {
  const char* env = std::getenv("MLKV_DATA_DIR");
  return env != nullptr && *env != '\0' ? env : "../shared/data";
}

bool have_program(const char* name) {
  const std::string cmd = cat("command -v ", name, " >/dev/null 2>&1");
  return std::system(cmd.c_str()) == 0;
}

void run_reproduce_cmd(const ReproduceArgs& a) {
  experiment::ReproduceOptions o;
  o.preset = experiment::reproduce_preset(a.preset);
  o.out_dir = a.out;
  o.data_root = a.data_root.empty() ? default_data_root() : a.data_root;
  if (!a.configs.empty()) {
    size_t start = 0;
    while (start <= a.configs.size()) {
      const size_t comma = a.configs.find(',', start);
      const std::string name =
          a.configs.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!name.empty()) o.configs.push_back(name);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  o.threads = a.threads;
  o.seed = a.seed;
  o.progress = !a.no_progress;
  const Timer timer;
  o.on_log = [&timer](const std::string& s) {
    std::fprintf(stderr, "[reproduce %7.1fs] %s\n", timer.seconds(), s.c_str());
  };
  experiment::validate_reproduce(o);
  std::fprintf(stderr, "reproduce: preset %s (%s) into %s\n", o.preset.name.c_str(),
               o.preset.note.c_str(), o.out_dir.c_str());
  const nlohmann::json r = experiment::run_reproduce(o);
  std::printf("%s\n", experiment::results_markdown(r).c_str());
  namespace fs = std::filesystem;
  const fs::path svg = fs::path(o.out_dir) / "pareto.svg";
  const fs::path png = fs::path(o.out_dir) / "pareto.png";
  if (have_program("rsvg-convert")) {
    const std::string cmd = cat("rsvg-convert -o '", png.string(), "' '", svg.string(), "'");
    if (std::system(cmd.c_str()) != 0) {
      std::fprintf(stderr, "mlkv: warning: rsvg-convert failed; the plot is in %s only\n",
                   svg.string().c_str());
    }
  } else {
    std::fprintf(stderr,
                 "mlkv: note: no PNG of the plot (rsvg-convert not found: apt-get install "
                 "librsvg2-bin); the plot is in %s\n",
                 svg.string().c_str());
  }
  std::fprintf(stderr,
               "reproduce: done in %.0f s: %s/results.md, results.json, pareto.svg, "
               "loss_pretrain.svg, loss_uptrain.svg\n",
               timer.seconds(), o.out_dir.c_str());
}

}  // namespace

void add_reproduce_commands(CLI::App& app) {
  auto a = std::make_shared<ReproduceArgs>();
  auto* c = app.add_subcommand(
      "reproduce",
      "The MLKV paper's experiment end to end: tokenizer, shards, MHA pretraining, conversion to "
      "every configuration of the paper's table, uptraining, evaluation, table and plots; rerun "
      "to resume (docs/RESULTS.md)");
  std::string presets;
  for (const auto& n : experiment::reproduce_preset_names()) presets += (presets.empty() ? "" : ", ") + n;
  c->add_option("--preset", a->preset,
                "ci (about a minute), demo (<= 30 minutes on 2 cores), full (hours, resumable); "
                "one of " + presets)
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { experiment::reproduce_preset(s); }));
  c->add_option("--out,-o", a->out, "Output folder (rerun with the same folder to resume)")
      ->required();
  c->add_option("--data-root", a->data_root,
                "The shared data folder holding text/ and eval/ (default $MLKV_DATA_DIR or "
                "../shared/data)");
  c->add_option("--configs", a->configs,
                "Only these configurations, comma-separated (e.g. MLKV-6,MLKV-2; MHA-144 always "
                "runs: it is the base and the control)");
  c->add_option("--threads,-t", a->threads, "Threads (0: all cores)")->check(at_least(0));
  c->add_option("--seed", a->seed, "Seed of the split, initialisation and data order")
      ->capture_default_str()
      ->check(seed_value());
  c->add_flag("--no-progress", a->no_progress, "No progress bars (the stage lines remain)");
  c->callback([a] { run_reproduce_cmd(*a); });
}

}  // namespace mlkv::cli
