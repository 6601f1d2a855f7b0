// Conversion of a model on disk into a new model folder: the destination checks, the tokenizer
// files that travel with the weights, the atomic write (core/atomic_dir.h) and the report that
// `mlkv convert --json` prints. The CLI and the public API (mlkv/convert.h) both call
// convert_folder(). What this is not: the arithmetic of conversion (convert.h).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convert/convert.h"

namespace mlkv {

struct FolderConvertOptions {
  ConvertOptions convert;
  std::string dtype = "same";  // output dtype: same (as the source), f32, f16, bf16
  std::string tokenizer;       // tokenizer file or folder to copy; "": found next to the source
  bool force = false;          // replace an existing model folder at dst
  // GPT-NeoX: write the fused query_key_value of Hugging Face's layout when the result has no
  // sharing (every layer owns K/V for every head), so transformers loads it; otherwise (and by
  // default) the split q/k/v layout that MLKV models need.
  bool fuse_qkv = false;
  // Calibration text (merge calibrated, owners_auto): a text file, tokenized with the tokenizer
  // found for the source (or `tokenizer`), or a token shard.
  CalibrationSpec calibration;
};

struct FolderConversion {
  ModelConfig src;  // the source's config
  ModelConfig out;  // the written model's
  ConvertReport report;
  DType dtype = DType::kF32;                 // of the written weights
  std::vector<std::string> tokenizer_files;  // file names copied into dst
};

// The output dtype of a conversion: "same" (the source's file dtype: same), f32, f16 or bf16.
// Throws mlkv::Error "--dtype must be same, f32, f16 or bf16 (got '<s>')".
DType parse_output_dtype(const std::string& s, DType same = DType::kF32);

// Converts the model at src (HF folder or llama2.c .bin) and writes it to dst, which must not
// exist, be an empty folder, or (force) be a model folder. Every option is checked before
// anything is written (the calibration file is read before any computing); a failure leaves
// nothing at dst. Throws mlkv::Error naming the problem (mlkv::FileError for files).
FolderConversion convert_folder(const std::string& src, const std::string& dst,
                                const FolderConvertOptions& opt);

// The report of `mlkv convert --json`.
nlohmann::json conversion_json(const std::string& src, const std::string& dst,
                               const FolderConvertOptions& opt, const FolderConversion& c);

}  // namespace mlkv
