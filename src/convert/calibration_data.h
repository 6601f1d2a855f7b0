// The calibration text of `mlkv convert --merge calibrated` and `--owners auto`: a text file
// (tokenized with the model's tokenizer) or a token shard (`mlkv tokenize`), cut into rows of ctx
// tokens that the calibration runs through the model like training rows (row r holds positions
// 0 .. ctx - 1). Every fourth row is held out: the fits are made on the others and judged on those
// (calibrate.h). What this is not: the fitting itself (fold.h, calibrate.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace mlkv {

class Tokenizer;

inline constexpr int64_t kDefaultCalibrationTokens = 16384;
// Rows needed at least: three to fit on and one to judge the fit with.
inline constexpr int kMinCalibrationRows = 4;
// Row r is held out when r % kHeldOutEvery == kHeldOutEvery - 1.
inline constexpr int kHeldOutEvery = 4;

struct CalibrationSpec {
  std::string path;  // text file or token shard
  int64_t n_tokens =
      kDefaultCalibrationTokens;  // tokens to use (whole rows; fewer if the file is short)
  int ctx = 0;                    // tokens per row; 0: the model's n_ctx
};

struct CalibrationSet {
  std::string path;
  bool from_shard = false;
  int ctx = 0;
  std::vector<int32_t> tokens;  // [n_rows * ctx]
  int64_t available = 0;        // tokens the file gave (before cutting to whole rows)

  int n_rows() const {
    return ctx > 0 ? static_cast<int>(tokens.size() / static_cast<size_t>(ctx)) : 0;
  }
  int64_t n_tokens() const { return static_cast<int64_t>(tokens.size()); }
  static bool held_out(int row) { return row % kHeldOutEvery == kHeldOutEvery - 1; }
};

// Checks the spec against the model before anything is read: n_tokens and ctx positive, ctx within
// the model's context, n_tokens at least kMinCalibrationRows rows. Throws mlkv::Error naming the
// option.
void check_calibration_spec(const CalibrationSpec& spec, const ModelConfig& c);

// Reads spec.path: a token shard (recognised by its magic; ids checked against the vocabulary) or
// UTF-8 text encoded with tok (null: a text file is an error saying a tokenizer is needed). The
// stream starts with the shard's EOS separator, or the tokenizer's BOS (else EOS) for text, as
// `mlkv eval` does. Throws mlkv::FileError for a missing or unreadable file and mlkv::Error when it
// holds fewer than kMinCalibrationRows rows of ctx tokens.
CalibrationSet load_calibration(const CalibrationSpec& spec, const ModelConfig& c,
                                const Tokenizer* tok);

}  // namespace mlkv
