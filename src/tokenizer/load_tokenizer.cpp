// load_tokenizer(): finds and opens a tokenizer by path; StreamDecoder; the shared decode helper.
#include <filesystem>

#include "core/check.h"
#include "tokenizer/bpe.h"
#include "tokenizer/detail.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace mlkv {

namespace fs = std::filesystem;

namespace detail {

void check_id(int32_t id, int32_t n_vocab) {
  MLKV_REQUIRE(id >= 0 && id < n_vocab, "token id ", id, " is out of range [0, ", n_vocab, ")");
}

int byte_fallback_value(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  int hi = hex(piece[3]), lo = hex(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

std::string decode_ids(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string raw;
  bool at_start = true;  // only tokens that decode to nothing (BOS, EOS, ...) so far
  for (int32_t id : ids) {
    raw += tok.token_bytes_at(id, at_start);
    if (at_start && !tok.token_bytes(id).empty()) at_start = false;
  }
  return utf8::sanitize(raw);
}

}  // namespace detail

namespace {

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// llama2.c tokenizer files are called tokenizer.bin or tok<N>.bin.
bool is_llama2c_name(const std::string& name) {
  return name == "tokenizer.bin" || (name.rfind("tok", 0) == 0 && name.size() > 4 &&
                                     name.compare(name.size() - 4, 4, ".bin") == 0);
}

std::unique_ptr<Tokenizer> load_from_dir(const fs::path& dir) {
  const bool has_model = is_file(dir / "tokenizer.model");
  if (is_file(dir / "tokenizer.json")) {
    // A Llama-2-style folder holds both files: the SentencePiece model is the original, so it wins
    // over a tokenizer.json that is not byte-level (or that this code cannot load).
    if (!has_model) return load_hf_tokenizer_json((dir / "tokenizer.json").string());
    try {
      auto bpe = load_hf_tokenizer_json((dir / "tokenizer.json").string());
      if (bpe->byte_level()) return bpe;
    } catch (const Error&) {
    }
  }
  if (has_model) return detail::load_sentencepiece((dir / "tokenizer.model").string());
  if (is_file(dir / "encoder.json") && is_file(dir / "vocab.bpe")) {
    return load_gpt2_bpe((dir / "encoder.json").string(), (dir / "vocab.bpe").string());
  }
  if (is_file(dir / "tokenizer.bin")) return detail::load_llama2c((dir / "tokenizer.bin").string());
  // llama2.c model folders often carry tok<N>.bin; take it when there is exactly one.
  std::vector<fs::path> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec) && is_llama2c_name(e.path().filename().string())) found.push_back(e.path());
  }
  if (found.size() == 1) return detail::load_llama2c(found[0].string());
  fail_missing("no tokenizer found in '", dir.string(),
       "' (looked for tokenizer.json, tokenizer.model, encoder.json + vocab.bpe, tokenizer.bin, "
       "tok*.bin); pass one with --tokenizer");
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ec;
  fs::path p(path);
  if (!fs::exists(p, ec)) fail_missing("tokenizer path '", path, "' does not exist");
  if (fs::is_directory(p, ec)) return load_from_dir(p);
  const std::string name = p.filename().string();
  const std::string ext = p.extension().string();
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  if (name == "encoder.json" || ext == ".bpe") {
    fs::path enc = dir / "encoder.json", bpe = dir / "vocab.bpe";
    MLKV_REQUIRE(is_file(enc) && is_file(bpe), "'", path,
                 "': a GPT-2 tokenizer needs encoder.json and vocab.bpe side by side");
    return load_gpt2_bpe(enc.string(), bpe.string());
  }
  if (ext == ".json") return load_hf_tokenizer_json(path);
  if (ext == ".model") return detail::load_sentencepiece(path);
  if (is_llama2c_name(name)) return detail::load_llama2c(path);
  // Anything else (a model file: .bin, .safetensors, ...): the tokenizer sits next to it.
  return load_from_dir(dir);
}

namespace {

class PaddedVocabulary final : public Tokenizer {
 public:
  PaddedVocabulary(std::unique_ptr<Tokenizer> tok, int32_t n_vocab)
      : tok_(std::move(tok)), n_vocab_(n_vocab) {}
  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    return tok_->encode(text, add_bos);
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::vector<int32_t> kept;  // padding ids add nothing, so they can go before decoding
    kept.reserve(ids.size());
    for (int32_t id : ids) {
      if (!padding(id)) kept.push_back(id);
    }
    return tok_->decode(kept);
  }
  std::string token_piece(int32_t id) const override { return padding(id) ? "" : tok_->token_piece(id); }
  std::string token_bytes(int32_t id) const override { return padding(id) ? "" : tok_->token_bytes(id); }
  std::string token_bytes_at(int32_t id, bool at_start) const override {
    return padding(id) ? "" : tok_->token_bytes_at(id, at_start);
  }
  int32_t n_vocab() const override { return n_vocab_; }
  int32_t bos_id() const override { return tok_->bos_id(); }
  int32_t eos_id() const override { return tok_->eos_id(); }
  std::string kind() const override { return tok_->kind(); }

 private:
  // An id of the model's vocabulary past the tokenizer's (others: the tokenizer's own checks).
  bool padding(int32_t id) const {
    detail::check_id(id, n_vocab_);
    return id >= tok_->n_vocab();
  }
  std::unique_ptr<Tokenizer> tok_;
  int32_t n_vocab_;
};

}  // namespace

std::unique_ptr<Tokenizer> pad_vocabulary(std::unique_ptr<Tokenizer> tok, int32_t n_vocab) {
  if (tok == nullptr || n_vocab <= tok->n_vocab()) return tok;
  return std::make_unique<PaddedVocabulary>(std::move(tok), n_vocab);
}

std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path) {
  std::error_code ec;
  const fs::path p(path);
  if (!fs::exists(p, ec) || fs::is_directory(p, ec)) return load_tokenizer(path);
  const std::string name = p.filename().string(), ext = p.extension().string();
  const bool tokenizer = ext == ".json" || ext == ".model" || ext == ".bpe" || is_llama2c_name(name);
  MLKV_REQUIRE(tokenizer || ext == ".bin" || ext == ".safetensors", "'", path,
               "' is not a tokenizer: give a tokenizer.json, a SentencePiece .model, encoder.json / "
               "vocab.bpe, a llama2.c tokenizer.bin / tok*.bin, a model file or a folder");
  if (tokenizer) return load_tokenizer(path);
  try {
    return load_tokenizer(path);  // a model file: the tokenizer beside it
  } catch (const FileError& e) {
    throw FileError(cat("'", path, "' is not a tokenizer, and none was found beside it: ", e.what()),
                    e.not_found());
  }
}

bool starts_text(const Tokenizer& tok, const std::vector<int32_t>& context) {
  for (int32_t id : context) {
    if (!tok.token_bytes(id).empty()) return false;
  }
  return true;
}

std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context,
                                const std::vector<int32_t>& ids) {
  StreamDecoder d(tok, starts_text(tok, context));
  std::string out;
  for (int32_t id : ids) out += d.push(id);
  return out + d.flush();
}

std::unique_ptr<Tokenizer> try_load_tokenizer(const std::string& path) {
  try {
    return load_tokenizer(path);
  } catch (const Error&) {
    return nullptr;
  }
}

// ---- StreamDecoder ----

struct StreamDecoder::Impl {
  const Tokenizer& tok;
  std::string pending;  // bytes of a UTF-8 sequence that is not complete yet
  bool at_start = true;  // only tokens that decode to nothing so far
};

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool at_start)
    : impl_(std::make_unique<Impl>(Impl{tok, {}, at_start})) {}
StreamDecoder::~StreamDecoder() = default;

std::string StreamDecoder::push(int32_t id) {
  std::string bytes = impl_->tok.token_bytes_at(id, impl_->at_start);
  if (impl_->at_start && !impl_->tok.token_bytes(id).empty()) impl_->at_start = false;
  if (bytes.empty()) return "";
  impl_->pending += bytes;
  size_t keep = utf8::incomplete_tail(impl_->pending);
  std::string_view ready(impl_->pending.data(), impl_->pending.size() - keep);
  std::string out = utf8::sanitize(ready);
  impl_->pending.erase(0, impl_->pending.size() - keep);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out = utf8::sanitize(impl_->pending);
  impl_->pending.clear();
  return out;
}

}  // namespace mlkv
