// The distillation teacher (distill.h).
#include "train/distill.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/check.h"
#include "io/hf_config.h"
#include "io/hf_model.h"

namespace mlkv::train {

namespace {

// FNV-1a over bytes, continued from h.
uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// The config (as config.json text) and every parameter in list_params order: its name, then its
// values as 32-bit patterns (one FNV-1a step per value), finished with SplitMix64's mixer.
uint64_t hash_model(const ModelConfig& cfg, const ModelWeights& w) {
  const std::string config = hf_config_to_json(cfg);
  uint64_t h = fnv1a(0xcbf29ce484222325ull, config.data(), config.size());
  for (const auto& [name, t] : list_params(cfg, w)) {
    h = fnv1a(h, name.data(), name.size());
    const float* v = t->data();
    for (int64_t i = 0, n = t->numel(); i < n; ++i) {
      uint32_t bits;
      std::memcpy(&bits, v + i, 4);
      h ^= bits;
      h *= 0x100000001b3ull;
    }
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

LoadedModel load_teacher(const std::string& path) {
  MLKV_REQUIRE(!path.empty(), "train: --teacher needs a model folder");
  try {
    return load_model(path, [&](const std::string& what) {
      std::fprintf(stderr, "mlkv: warning: train: --teacher %s: %s\n", path.c_str(), what.c_str());
    });
  } catch (const FileError& e) {
    throw FileError(cat("train: --teacher: ", e.what()), e.not_found());
  } catch (const Error& e) {
    fail("train: --teacher ", path, ": ", e.what());
  }
}

// The teacher's config, checked against the student before anything is allocated for it.
ModelConfig checked_config(const ModelConfig& teacher, const ModelConfig& student,
                           const std::string& path, int ctx) {
  MLKV_REQUIRE(teacher.n_vocab == student.n_vocab, "train: --teacher ", path,
               " has a vocabulary of ", teacher.n_vocab, " ids and the student ", student.n_vocab,
               ": distillation compares the two next-token distributions id by id, so the teacher "
               "needs the student's vocabulary (the same tokenizer)");
  MLKV_REQUIRE(ctx <= teacher.n_ctx, "train: --ctx ", ctx, " exceeds the context of --teacher ",
               path, " (", teacher.n_ctx, " positions)");
  return teacher;
}

}  // namespace

void validate_distill_options(const DistillOptions& o) {
  MLKV_REQUIRE(o.alpha >= 0 && o.alpha <= 1, "train: --distill-alpha ", o.alpha,
               " is out of range (allowed: in [0, 1])");
  MLKV_REQUIRE(o.temp > 0 && std::isfinite(o.temp), "train: --distill-temp ", o.temp,
               " is out of range (allowed: > 0)");
}

std::string TeacherFingerprint::hash_hex() const {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(hash));
  return buf;
}

Teacher::Teacher(const std::string& path, const ModelConfig& student, int batch, int ctx)
    : Teacher(path, load_teacher(path), student, batch, ctx) {}

Teacher::Teacher(const std::string& path, LoadedModel m, const ModelConfig& student, int batch,
                 int ctx)
    : cfg_(checked_config(m.config, student, path, ctx)),
      w_(std::move(m.weights)),
      graph_(cfg_, batch, ctx, backend<float>(Device::kCpu),
             TrainGraph<float>::Mode::kForwardOnly) {
  fp_.path = path;
  fp_.hash = hash_model(cfg_, w_);
}

int64_t Teacher::weight_bytes() const {
  int64_t n = 0;
  for (const auto& [name, t] : list_params(cfg_, w_)) n += static_cast<int64_t>(t->nbytes());
  return n;
}

int64_t Teacher::activation_bytes() const {
  return TrainGraph<float>::arena_bytes(cfg_, graph_.batch(), graph_.ctx(), 4,
                                        TrainGraph<float>::Mode::kForwardOnly);
}

void Teacher::forward(const int32_t* rows, int n_rows) {
  graph_.forward_hidden(w_, rows, n_rows);
}

Distillation<float> Teacher::distillation(double alpha, double temp) {
  Distillation<float> d;
  d.teacher = &graph_;
  d.teacher_weights = &w_;
  d.alpha = alpha;
  d.temp = temp;
  return d;
}

}  // namespace mlkv::train
