// The mlkv public API in one include: errors (mlkv/error.h), sampling parameters
// (mlkv/sampling.h), tokenizers (mlkv/tokenizer.h), loading, scoring and generating
// (mlkv/model.h), and continuous-batching sessions (mlkv/session.h). Link the CMake target
// mlkv_api. Everything not under include/mlkv is internal and may change.
#pragma once

#include "mlkv/error.h"
#include "mlkv/model.h"
#include "mlkv/sampling.h"
#include "mlkv/session.h"
#include "mlkv/tokenizer.h"
