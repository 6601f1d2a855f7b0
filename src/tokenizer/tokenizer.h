// The tokenizer interface is public: include/mlkv/tokenizer.h. Implementations live in this folder
// (bpe.h, sentencepiece_tokenizer.cpp, llama2c_tokenizer.cpp) behind load_tokenizer().
#pragma once

#include "mlkv/tokenizer.h"
