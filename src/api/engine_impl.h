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

}  // namespace mlkv
