// Corpus -> token shards (`mlkv tokenize`): reading documents from .txt and .jsonl files, the
// deterministic train / validation split, and multi-threaded encoding into shards
// (io/token_shard.h). The document and split rules are written down in docs/TOKENIZERS.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace mlkv {

// How a .txt file is cut into documents.
enum class TxtDocRule {
  kBlank2,  // two or more consecutive blank lines end a document (default)
  kBlank,   // any blank line ends a document (paragraphs)
  kLine,    // every non-blank line is a document
  kFile,    // the whole file is one document
};
TxtDocRule parse_txt_doc_rule(const std::string& s);  // "blank2", "blank", "line", "file"
const char* txt_doc_rule_name(TxtDocRule r);

// A piece of a document: the unit that goes to train or validation. A document longer than
// max_doc_bytes is cut at line breaks into several units; only its last unit ends the document
// (and gets the EOS).
struct DocUnit {
  std::string_view text;
  bool ends_document = true;
};

// Cuts the text of a .txt file into units (views into text). Blank lines are lines holding only
// spaces, tabs or '\r'; a document's leading and trailing blank lines and its final newline are
// not part of it; documents that are blank are skipped.
void split_txt_documents(std::string_view text, TxtDocRule rule, size_t max_doc_bytes,
                         std::vector<DocUnit>& out);

// True when a unit goes to the validation split: a 64-bit hash of (seed, the unit's bytes) below
// fraction * 2^64. Depends on content only, so it is the same for any thread count or file order,
// and duplicated text always lands on the same side.
bool is_validation_unit(std::string_view text, uint64_t seed, double fraction);

struct TokenizeOptions {
  std::vector<std::string> inputs;  // .txt / .jsonl files (anything not .jsonl is read as text)
  std::string out_dir;
  std::string tokenizer_path;       // recorded in meta.json
  double val_fraction = 0.0;
  uint64_t seed = 1234;
  TxtDocRule txt_rule = TxtDocRule::kBlank2;
  size_t max_doc_bytes = 32 * 1024;
  std::string text_field = "text";  // the JSONL field holding the document
  uint64_t shard_tokens = 100'000'000;  // a new shard file after this many tokens
  bool add_bos = false;             // also start every document with BOS (when the tokenizer has one)
  bool progress = true;
  // Called with what the user should know about the split (finer units, a share held out far from
  // val_fraction: "warning: ..."); none: not reported.
  std::function<void(const std::string&)> on_note;
};

struct TokenizeStats {
  uint64_t input_bytes = 0, units = 0;
  size_t unit_bytes = 0;  // the unit size used: max_doc_bytes, or smaller for the split (below)
  uint64_t train_tokens = 0, val_tokens = 0;
  uint64_t train_docs = 0, val_docs = 0;    // documents whose end (EOS) is in the split
  uint64_t train_units = 0, val_units = 0;  // units (documents or pieces of them) in the split
  std::vector<std::string> train_shards, val_shards;
  double seconds = 0;
  double val_share() const {
    const uint64_t n = train_tokens + val_tokens;
    return n > 0 ? static_cast<double>(val_tokens) / static_cast<double>(n) : 0.0;
  }
};

// Encodes the inputs with all OpenMP threads and writes out_dir/train_NNN.bin, val_NNN.bin (when
// val_fraction > 0) and out_dir/meta.json. The output does not depend on the thread count.
// out_dir appears whole (core/atomic_dir.h): it may be new, empty or an earlier tokenize output,
// which is replaced; anything else is refused. When the .txt inputs give too few split units for
// val_fraction, their documents are cut into smaller units (at least 1 KiB) so the held-out share
// comes near val_fraction; both that and a held-out share still far from it go to on_note.
TokenizeStats tokenize_corpus(const Tokenizer& tok, const TokenizeOptions& opt);

}  // namespace mlkv
