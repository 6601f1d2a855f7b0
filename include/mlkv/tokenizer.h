// The tokenizer interface of the public API, and the one the rest of mlkv talks to. Implementations
// (src/tokenizer, not public): byte-level BPE from a Hugging Face tokenizer.json or a GPT-2
// encoder.json + vocab.bpe pair, SentencePiece models, and the llama2.c tokenizer.bin format;
// load_tokenizer() picks one from the path. Ids are int32 in [0, n_vocab()); text is UTF-8.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace mlkv {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids. Special / added tokens written in the text are matched as such. add_bos prepends
  // the BOS id where the tokenizer has one (Llama family); it is ignored where there is none.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const = 0;
  // Ids -> text. Byte sequences split across tokens are joined; invalid UTF-8 left at the very end
  // is emitted as U+FFFD.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The raw piece of one id as stored in the vocabulary (for display: "Ġthe", "▁the", "<0x0A>").
  virtual std::string token_piece(int32_t id) const = 0;
  // The bytes one id contributes to decoded text on its own (may be an incomplete UTF-8 sequence).
  virtual std::string token_bytes(int32_t id) const = 0;
  // (Added.) The bytes id contributes when at_start, i.e. every id before it has empty
  // token_bytes (none, or only BOS / EOS): SentencePiece-style tokenizers drop the dummy-prefix
  // space of that first piece. decode() and StreamDecoder are both built on this, so they agree.
  virtual std::string token_bytes_at(int32_t id, bool /*at_start*/) const {
    return token_bytes(id);
  }

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos_id() const { return -1; }  // -1 when absent
  virtual int32_t eos_id() const { return -1; }
  virtual std::string kind() const = 0;  // "bpe", "sentencepiece", "llama2c"
};

// Loads a tokenizer from a file or a directory. A directory is searched for tokenizer.json,
// tokenizer.model, encoder.json + vocab.bpe, tokenizer.bin, tok*.bin (in that order; with both
// tokenizer.json and tokenizer.model present, a tokenizer.json that is not byte-level gives way to
// the SentencePiece model). Any other file (a model file) means: search its directory. Throws
// mlkv::Error naming the file and the problem when nothing loadable is found or the file is
// malformed. docs/TOKENIZERS.md has the details.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);
// A tokenizer the user named (--tokenizer, tokenizer -t, Tokenizer.load): as load_tokenizer, but
// a file must be a tokenizer (.json, .model, encoder.json / vocab.bpe, tokenizer.bin, tok*.bin)
// or a model file (.bin, .safetensors: the tokenizer beside it), and an error names the file
// (any other file, e.g. a .txt, is refused rather than standing for its folder).
std::unique_ptr<Tokenizer> load_tokenizer_file(const std::string& path);
// The same as load_tokenizer, but null instead of an error when none can be found or read (an
// optional tokenizer).
std::unique_ptr<Tokenizer> try_load_tokenizer(const std::string& path);

// The tokenizer of a model whose vocabulary (n_vocab: its embedding rows) is larger than the
// tokenizer's: GPT-NeoX / Pythia checkpoints pad 50277 tokens to 50304 rows for matrix shapes, and
// a model can sample the padding ids. Those ids decode to no text (as Hugging Face's decoders skip
// ids without a token) and n_vocab() is the model's; ids past it are refused as before. With
// n_vocab no larger than tok's, tok itself is returned.
std::unique_ptr<Tokenizer> pad_vocabulary(std::unique_ptr<Tokenizer> tok, int32_t n_vocab);

// Whether text decoded after `context` starts the text: every context id decodes to nothing (none,
// or only BOS / EOS). A continuation that does not start the text keeps the space a
// SentencePiece-style tokenizer drops from the first piece of a text ("▁there" -> " there").
bool starts_text(const Tokenizer& tok, const std::vector<int32_t>& context);

// The text `ids` add after `context` (a prompt): decode(context + ids) = decode(context) + this
// (byte for byte where both are valid UTF-8); decode(ids) drops the leading space of a
// SentencePiece continuation instead.
std::string decode_continuation(const Tokenizer& tok, const std::vector<int32_t>& context,
                                const std::vector<int32_t>& ids);

// Streams decoded text token by token without ever emitting broken UTF-8: bytes of an incomplete
// multi-byte sequence are held back until the sequence completes. The concatenation of push()
// results plus flush() equals tokenizer.decode(all ids), or with at_start = false (a continuation
// after text: starts_text) decode_continuation(context, all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool at_start = true);
  ~StreamDecoder();
  std::string push(int32_t id);  // the text that became printable with this token
  std::string flush();           // whatever is held back (invalid tail -> U+FFFD)

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mlkv
