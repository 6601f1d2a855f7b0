// What an mlkv::Engine holds (internal to src/api): the inference model, its tokenizer when there
// is one, and the ModelInfo copy of its config. Session reaches the model through this.
#pragma once

#include <memory>

#include "mlkv/model.h"
#include "model/model.h"

namespace mlkv {

struct Engine::Impl {
  Model model;
  std::unique_ptr<Tokenizer> tokenizer;  // null: none
  ModelInfo info;
};

// How the free functions of the public API (mlkv/evaluate.h) reach an engine's insides.
struct EngineAccess {
  static Engine::Impl& impl(Engine& e) { return *e.impl_; }
};

}  // namespace mlkv
