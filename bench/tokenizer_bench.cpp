// Tokenizer encoding throughput (MB/s of UTF-8 input) on the text corpora, 1 thread and all
// threads, median of several runs. Each run uses a freshly loaded tokenizer (cold word cache), and
// the corpus is cut into documents as `mlkv tokenize` does (blank2 rule, 32 KiB units), so the
// figures are what tokenize's encoding stage sees. Prints a markdown table with wall-clock MB/s and,
// less sensitive to other load on the machine, MB per CPU-second (user + system time of the
// process, all threads summed).
//   tokenizer_bench [--shared DIR] [--tokenizer PATH] [--runs N] [--threads N] [files...]
// The shared data folder defaults to $MLKV_SHARED_DIR, else ../shared (run from the repo root).
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "core/mmap_file.h"
#include "core/timer.h"
#include "tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct Run {
  double wall, cpu;
};

// Encodes all units with `threads` threads on a fresh tokenizer; tokens counted in *n_tokens.
Run encode_run(const std::string& tok_path, const std::vector<mlkv::DocUnit>& units, int threads,
               size_t* n_tokens) {
  auto tok = mlkv::load_tokenizer(tok_path);
  size_t total = 0;
  double cpu0 = cpu_seconds();
  mlkv::Timer t;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 8) reduction(+ : total)
  for (size_t i = 0; i < units.size(); ++i) total += tok->encode(units[i].text).size();
  Run r{t.seconds(), cpu_seconds() - cpu0};
  *n_tokens = total;
  return r;
}

}  // namespace

int run(int argc, char** argv) {
  const char* env = std::getenv("MLKV_SHARED_DIR");
  std::string shared = env != nullptr ? env : "../shared";
  std::string tok_path;
  int runs = 5, max_threads = omp_get_num_procs();
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--shared" && i + 1 < argc) {
      shared = argv[++i];
    } else if (a == "--tokenizer" && i + 1 < argc) {
      tok_path = argv[++i];
    } else if (a == "--runs" && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--threads" && i + 1 < argc) {
      max_threads = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--help" || a == "-h") {
      std::printf("usage: %s [--shared DIR] [--tokenizer PATH] [--runs N] [--threads N] [files...]\n",
                  argv[0]);
      return 0;
    } else {
      files.push_back(a);
    }
  }
  if (tok_path.empty()) tok_path = shared + "/data/tokenizers/gpt-neox-20b/tokenizer.json";
  if (files.empty()) {
    for (const char* f : {"tinystories_lower.txt", "brown.txt", "kjv.txt", "tinyshakespeare.txt"}) {
      files.push_back(shared + "/data/text/" + f);
    }
    for (const char* dir : {"austen", "fairytaleqa"}) {
      std::vector<std::string> sub;
      for (const auto& e : std::filesystem::directory_iterator(shared + "/data/text/" + dir)) {
        sub.push_back(e.path().string());
      }
      std::sort(sub.begin(), sub.end());
      files.insert(files.end(), sub.begin(), sub.end());
    }
  }
  std::vector<int> thread_counts = {1};
  if (max_threads > 1) thread_counts.push_back(max_threads);

  std::printf("tokenizer: %s, %d runs per cell (median), %d hardware threads\n\n", tok_path.c_str(),
              runs, omp_get_num_procs());
  std::printf("| corpus | MB | tokens | bytes/token |");
  for (int t : thread_counts) {
    std::printf(" %d thread%s MB/s | %d thread%s MB/CPU-s |", t, t > 1 ? "s" : "", t, t > 1 ? "s" : "");
  }
  std::printf("\n|---|---:|---:|---:|");
  for (size_t k = 0; k < thread_counts.size(); ++k) std::printf("---:|---:|");
  std::printf("\n");
  std::vector<double> total_s(thread_counts.size(), 0.0), total_cpu(thread_counts.size(), 0.0);
  double total_mb = 0;
  size_t total_tokens = 0;
  for (const auto& f : files) {
    mlkv::MappedFile file(f);
    std::string_view text(reinterpret_cast<const char*>(file.data()), file.size());
    std::vector<mlkv::DocUnit> units;
    mlkv::split_txt_documents(text, mlkv::TxtDocRule::kBlank2, 32 * 1024, units);
    double bytes = 0;
    for (const auto& u : units) bytes += u.text.size();
    size_t n_tokens = 0;
    std::printf("| %s | %.2f |", std::filesystem::path(f).filename().c_str(), bytes / 1e6);
    std::string cells;
    for (size_t k = 0; k < thread_counts.size(); ++k) {
      std::vector<double> wall, cpu;
      for (int r = 0; r < runs; ++r) {
        Run run = encode_run(tok_path, units, thread_counts[k], &n_tokens);
        wall.push_back(run.wall);
        cpu.push_back(run.cpu);
      }
      double m = median(wall), c = median(cpu);
      total_s[k] += m;
      total_cpu[k] += c;
      char buf[48];
      std::snprintf(buf, sizeof buf, " %.1f | %.1f |", bytes / 1e6 / m, bytes / 1e6 / c);
      cells += buf;
    }
    std::printf(" %zu | %.2f |%s\n", n_tokens, bytes / n_tokens, cells.c_str());
    std::fflush(stdout);
    total_mb += bytes / 1e6;
    total_tokens += n_tokens;
  }
  std::printf("| **all** | %.2f | %zu | %.2f |", total_mb, total_tokens, total_mb * 1e6 / total_tokens);
  for (size_t k = 0; k < thread_counts.size(); ++k) {
    std::printf(" **%.1f** | **%.1f** |", total_mb / total_s[k], total_mb / total_cpu[k]);
  }
  std::printf("\n");
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", e.what());
    return 1;
  }
}
