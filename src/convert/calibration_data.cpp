// Calibration rows from a text file or a token shard. See calibration_data.h.
#include "convert/calibration_data.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/mmap_file.h"
#include "io/token_shard.h"
#include "mlkv/tokenizer.h"

namespace mlkv {

namespace {

namespace fs = std::filesystem;

bool is_shard(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  char magic[sizeof(kShardMagic)] = {};
  f.read(magic, sizeof(magic));
  return f.gcount() == static_cast<std::streamsize>(sizeof(magic)) &&
         std::memcmp(magic, kShardMagic, sizeof(magic)) == 0;
}

// At least `want` tokens of the text (or all of it): the text is encoded a growing prefix at a
// time, each prefix cut at a line end, so a long file is not encoded whole for a few rows.
std::vector<int32_t> encode_prefix(const std::string& text, const Tokenizer& tok, int64_t want) {
  size_t bytes = static_cast<size_t>(std::max<int64_t>(want, 1024)) * 6;
  for (;;) {
    size_t cut = text.size();
    if (bytes < text.size()) {
      const size_t nl = text.rfind('\n', bytes);
      cut = nl == std::string::npos || nl == 0 ? bytes : nl + 1;
    }
    std::vector<int32_t> ids = tok.encode(std::string_view(text).substr(0, cut), false);
    if (static_cast<int64_t>(ids.size()) >= want || cut == text.size()) return ids;
    bytes *= 2;
  }
}

}  // namespace

void check_calibration_spec(const CalibrationSpec& spec, const ModelConfig& c) {
  MLKV_REQUIRE(!spec.path.empty(), "no calibration file given (--calibration FILE)");
  MLKV_REQUIRE(spec.ctx >= 0, "--calibration-ctx must be positive (got ", spec.ctx, ")");
  const int ctx = spec.ctx > 0 ? spec.ctx : c.n_ctx;
  MLKV_REQUIRE(ctx <= c.n_ctx, "--calibration-ctx ", ctx, " exceeds the model's context (", c.n_ctx,
               " positions)");
  MLKV_REQUIRE(spec.n_tokens >= int64_t{kMinCalibrationRows} * ctx, "--calibration-tokens ",
               spec.n_tokens, " is too few: calibration needs at least ", kMinCalibrationRows,
               " rows of ", ctx, " tokens (", int64_t{kMinCalibrationRows} * ctx,
               " tokens; --calibration-ctx sets the row length)");
}

CalibrationSet load_calibration(const CalibrationSpec& spec, const ModelConfig& c,
                                const Tokenizer* tok) {
  check_calibration_spec(spec, c);
  std::error_code ec;
  if (!fs::exists(spec.path, ec)) fail_missing("calibration file '", spec.path, "' does not exist");
  MLKV_REQUIRE(fs::is_regular_file(spec.path, ec), "calibration file '", spec.path,
               "' is not a file");
  CalibrationSet set;
  set.path = spec.path;
  set.ctx = spec.ctx > 0 ? spec.ctx : c.n_ctx;
  const int64_t want = spec.n_tokens / set.ctx * set.ctx;
  std::vector<int32_t> s;
  if (is_shard(spec.path)) {
    set.from_shard = true;
    TokenShard shard(spec.path);
    MLKV_REQUIRE(shard.n_vocab() <= static_cast<uint32_t>(c.n_vocab), "calibration shard '",
                 spec.path, "' holds ids up to ", shard.n_vocab(),
                 " but the model's vocabulary has ", c.n_vocab);
    // Documents are separated by EOS: the stream starts with that separator.
    const int32_t prefix = shard.eos_id() >= 0
                               ? shard.eos_id()
                               : (c.bos_token_id >= 0 ? c.bos_token_id : c.eos_token_id());
    if (prefix >= 0) s.push_back(prefix);
    const uint64_t n = std::min<uint64_t>(shard.n_tokens(), static_cast<uint64_t>(want));
    const size_t at = s.size();
    s.resize(at + n);
    shard.read(0, n, s.data() + at);
  } else {
    MLKV_REQUIRE(tok != nullptr, "calibration file '", spec.path,
                 "' is text and no tokenizer was found for the model (give --tokenizer, or "
                 "a token shard from `mlkv tokenize`)");
    const std::string text = read_text_file(spec.path);
    const int32_t prefix = tok->bos_id() >= 0 ? tok->bos_id() : tok->eos_id();
    if (prefix >= 0) s.push_back(prefix);
    const std::vector<int32_t> ids = encode_prefix(text, *tok, want);
    s.insert(s.end(), ids.begin(), ids.end());
  }
  for (int32_t t : s) {
    MLKV_REQUIRE(t >= 0 && t < c.n_vocab, "calibration file '", spec.path, "' has token id ", t,
                 " outside the model's vocabulary (", c.n_vocab,
                 " ids): was it made with another tokenizer?");
  }
  set.available = static_cast<int64_t>(s.size());
  const int64_t rows = std::min<int64_t>(set.available, want) / set.ctx;
  MLKV_REQUIRE(rows >= kMinCalibrationRows, "calibration file '", spec.path, "' gives ",
               set.available, " tokens: too few for ", kMinCalibrationRows, " rows of ", set.ctx,
               " tokens (calibration needs at least ", int64_t{kMinCalibrationRows} * set.ctx,
               "; a shorter --calibration-ctx needs fewer)");
  s.resize(static_cast<size_t>(rows * set.ctx));
  set.tokens = std::move(s);
  return set;
}

}  // namespace mlkv
