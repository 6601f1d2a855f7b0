// The mlkv public API in one include: errors (mlkv/error.h), sampling parameters
// (mlkv/sampling.h), tokenizers (mlkv/tokenizer.h), loading, scoring and generating
// (mlkv/model.h), continuous-batching sessions (mlkv/session.h), conversion (mlkv/convert.h) and
// evaluation (mlkv/evaluate.h). Link the CMake target mlkv_api. Everything not under
// include/mlkv is internal and may change.
#pragma once

#include "mlkv/convert.h"
#include "mlkv/error.h"
#include "mlkv/evaluate.h"
#include "mlkv/model.h"
#include "mlkv/sampling.h"
#include "mlkv/session.h"
#include "mlkv/tokenizer.h"
