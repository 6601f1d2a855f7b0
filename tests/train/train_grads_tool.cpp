// mlkv_train_grads: loss and every parameter gradient of a model folder on token rows, through the
// training graph (src/train), written as safetensors under the HF names. The driver
// tests/reference/test_train.py compares them with the PyTorch reference's `grads` verb.
//
//   mlkv_train_grads MODEL_DIR --tokens "1 2 3; 4 5 6" --out G.safetensors [--double]
//                    [--teacher DIR [--alpha A] [--temp T]]
//
// Loss = mean cross-entropy over the B * (T - 1) next-token predictions of B rows of T tokens
// (the reference's definition); --double runs TrainGraph<double> (the gradient-check path). With
// --teacher, the mean of the distillation objective A CE + (1 - A) T^2 KL(teacher || student) per
// position (docs/TRAINING.md; defaults A 0.5, T 1), its two parts printed as "ce" and "kl".
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "core/check.h"
#include "io/hf_model.h"
#include "io/safetensors.h"
#include "train/train_model.h"

using namespace mlkv;

namespace {

std::vector<std::vector<int32_t>> parse_rows(const std::string& s) {
  std::vector<std::vector<int32_t>> rows(1);
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) rows.back().push_back(static_cast<int32_t>(std::stol(cur)));
    cur.clear();
  };
  for (char c : s) {
    if (c == ';') {
      flush();
      rows.emplace_back();
    } else if (c == ' ' || c == ',' || c == '\n' || c == '\t') {
      flush();
    } else {
      cur += c;
    }
  }
  flush();
  if (rows.back().empty()) rows.pop_back();
  return rows;
}

struct TeacherArgs {
  LoadedModel* model = nullptr;  // null: no distillation
  double alpha = 0.5, temp = 1.0;
};

// Returns {loss, ce, kl}, means over the positions.
template <typename T>
std::vector<double> run(const ModelConfig& cfg, ModelWeights& w, const std::vector<int32_t>& flat,
                        int B, int S, const TeacherArgs& ta, std::vector<TensorToWrite>* out,
                        std::vector<std::vector<float>>* keep) {
  train::TrainGraph<T> g(cfg, B, S);
  const double N = static_cast<double>(B) * S;
  const ModelWeights params = std::is_same_v<T, float> ? w : convert_weights(cfg, w, dtype_of<T>());
  ModelWeights grads;
  allocate_weights(cfg, &grads, dtype_of<T>());
  std::vector<double> loss;
  if (ta.model == nullptr) {
    const double ce = g.forward_backward(params, flat.data(), &grads, static_cast<T>(1.0 / N)) / N;
    loss = {ce, ce, 0};
  } else {
    const ModelConfig& tc = ta.model->config;
    const ModelWeights tw = std::is_same_v<T, float> ? ta.model->weights
                                                     : convert_weights(tc, ta.model->weights, dtype_of<T>());
    train::TrainGraph<T> teacher(tc, B, S, backend<T>(), train::TrainGraph<T>::Mode::kForwardOnly);
    teacher.forward_hidden(tw, flat.data());
    const train::LossSums l = g.forward_backward(
        params, flat.data(), &grads, static_cast<T>(1.0 / N), -1,
        train::Distillation<T>{&teacher, &tw, ta.alpha, ta.temp});
    loss = {(ta.alpha * l.ce + (1 - ta.alpha) * ta.temp * ta.temp * l.kl) / N, l.ce / N, l.kl / N};
  }
  for (auto& p : list_params(cfg, grads)) {
    const Tensor f = p.tensor->to(DType::kF32);
    keep->emplace_back(f.data(), f.data() + f.numel());
    out->push_back({p.name, p.tensor->shape(), nullptr, DType::kF32});
  }
  return loss;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, tokens, out, teacher;
  bool use_double = false;
  TeacherArgs ta;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) {
      tokens = argv[++i];
    } else if (a == "--out" && i + 1 < argc) {
      out = argv[++i];
    } else if (a == "--teacher" && i + 1 < argc) {
      teacher = argv[++i];
    } else if (a == "--alpha" && i + 1 < argc) {
      ta.alpha = std::stod(argv[++i]);
    } else if (a == "--temp" && i + 1 < argc) {
      ta.temp = std::stod(argv[++i]);
    } else if (a == "--double") {
      use_double = true;
    } else if (model.empty()) {
      model = a;
    } else {
      std::fprintf(stderr,
                   "usage: mlkv_train_grads MODEL_DIR --tokens \"1 2 3; 4 5 6\" --out "
                   "G.safetensors [--double] [--teacher DIR [--alpha A] [--temp T]]\n");
      return 2;
    }
  }
  try {
    MLKV_REQUIRE(!model.empty() && !tokens.empty() && !out.empty(),
                 "need MODEL_DIR, --tokens and --out");
    LoadedModel lm = load_model(model);
    const auto rows = parse_rows(tokens);
    MLKV_REQUIRE(!rows.empty() && rows[0].size() >= 2, "need rows of at least 2 tokens");
    const int B = static_cast<int>(rows.size()), S = static_cast<int>(rows[0].size()) - 1;
    std::vector<int32_t> flat;
    for (const auto& r : rows) {
      MLKV_REQUIRE(static_cast<int>(r.size()) == S + 1, "token rows must have equal length");
      flat.insert(flat.end(), r.begin(), r.end());
    }
    LoadedModel tm;
    if (!teacher.empty()) {
      tm = load_model(teacher);
      MLKV_REQUIRE(tm.config.n_vocab == lm.config.n_vocab, "the teacher's vocabulary (",
                   tm.config.n_vocab, ") is not the model's (", lm.config.n_vocab, ")");
      ta.model = &tm;
    }
    std::vector<TensorToWrite> tw;
    std::vector<std::vector<float>> keep;
    const std::vector<double> loss =
        use_double ? run<double>(lm.config, lm.weights, flat, B, S, ta, &tw, &keep)
                   : run<float>(lm.config, lm.weights, flat, B, S, ta, &tw, &keep);
    for (size_t i = 0; i < tw.size(); ++i) tw[i].data = keep[i].data();
    char buf[3][64];
    for (int i = 0; i < 3; ++i) std::snprintf(buf[i], sizeof buf[i], "%.17g", loss[static_cast<size_t>(i)]);
    write_safetensors(out, tw, {{"loss", buf[0]}});
    std::printf("{\"loss\": %s, \"ce\": %s, \"kl\": %s}\n", buf[0], buf[1], buf[2]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mlkv_train_grads: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
