// Text subcommands: `tokenizer encode | decode | info | train` and `tokenize` (corpus -> token
// shards). The work is in the mlkv_tokenizer library (tokenizer.h, corpus.h, train.h); this file
// only maps options to it. Text goes in as an argument or on stdin, byte for byte, so
// `mlkv tokenizer encode ... | mlkv tokenizer decode ...` reproduces its input exactly.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "kernels/threads.h"
#include "io/token_shard.h"
#include "tokenizer/corpus.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/train.h"

namespace mlkv::cli {

using json = nlohmann::json;

namespace {

std::string read_stdin() {
  std::string s{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  return s;
}

void write_stdout(const std::string& s) {
  std::fwrite(s.data(), 1, s.size(), stdout);
  std::fflush(stdout);
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct EncodeArgs {
  std::string tokenizer, text;
  bool json = false, bos = false, pieces = false;
};

struct DecodeArgs {
  std::string tokenizer, ids;
  bool json = false;
};

void add_encode(CLI::App* parent) {
  auto a = std::make_shared<EncodeArgs>();
  auto* c = parent->add_subcommand("encode", "Text -> token ids (text from the argument or stdin)");
  c->add_option("--tokenizer,-t", a->tokenizer,
                "Tokenizer file or folder (tokenizer.json, tokenizer.model, encoder.json + "
                "vocab.bpe, tokenizer.bin / tok*.bin)")
      ->required();
  c->add_option("text", a->text, "Text to encode (default: all of stdin, byte for byte)");
  c->add_flag("--json", a->json, "Print {\"ids\": [...], \"n_tokens\": N} (with --pieces, also pieces)");
  c->add_flag("--bos", a->bos, "Prepend BOS where the tokenizer has one");
  c->add_flag("--pieces", a->pieces, "Also show each token's vocabulary piece");
  c->callback([a, c] {
    auto tok = load_tokenizer_file(a->tokenizer);
    std::string text = c->count("text") > 0 ? a->text : read_stdin();
    std::vector<int32_t> ids = tok->encode(text, a->bos);
    if (a->json) {
      json j = {{"ids", ids}, {"n_tokens", ids.size()}};
      if (a->pieces) {
        std::vector<std::string> p;
        for (int32_t id : ids) p.push_back(tok->token_piece(id));
        j["pieces"] = p;
      }
      write_stdout(dump(j) + "\n");
      return;
    }
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
      out += (i ? " " : "") + std::to_string(ids[i]);
      if (a->pieces) out += ":" + dump(json(tok->token_piece(ids[i])));
    }
    write_stdout(out + "\n");
  });
}

void add_decode(CLI::App* parent) {
  auto a = std::make_shared<DecodeArgs>();
  auto* c = parent->add_subcommand(
      "decode", "Token ids -> text (ids from the argument or stdin: \"1 2 3\", \"1,2,3\" or [1,2,3])");
  c->add_option("--tokenizer,-t", a->tokenizer, "Tokenizer file or folder")->required();
  c->add_option("ids", a->ids, "Token ids (default: read from stdin)");
  c->add_flag("--json", a->json, "Print {\"text\": ...} instead of the raw text");
  c->callback([a, c] {
    auto tok = load_tokenizer_file(a->tokenizer);
    std::string s = c->count("ids") > 0 ? a->ids : read_stdin();
    // Accept the JSON forms too: [1,2,3] or {"ids": [1,2,3]}.
    size_t lb = s.find('['), rb = s.rfind(']');
    if (lb != std::string::npos && rb != std::string::npos && rb > lb) s = s.substr(lb + 1, rb - lb - 1);
    std::vector<int32_t> ids = parse_id_list(s);
    std::string text = tok->decode(ids);
    write_stdout(a->json ? dump(json{{"text", text}}) + "\n" : text);
  });
}

void add_info(CLI::App* parent) {
  auto path = std::make_shared<std::string>();
  auto* c = parent->add_subcommand("info", "Show a tokenizer's kind, vocabulary size and special ids");
  c->add_option("--tokenizer,-t", *path, "Tokenizer file or folder")->required();
  c->callback([path] {
    auto tok = load_tokenizer_file(*path);
    json j = {{"kind", tok->kind()}, {"n_vocab", tok->n_vocab()}, {"bos_id", tok->bos_id()},
              {"eos_id", tok->eos_id()}};
    write_stdout(j.dump(2) + "\n");
  });
}

void add_train(CLI::App* parent) {
  auto o = std::make_shared<TrainTokenizerOptions>();
  auto* c = parent->add_subcommand(
      "train", "Train a SentencePiece tokenizer on text; writes DIR/tokenizer.model");
  c->add_option("--vocab", o->vocab_size,
                "Vocabulary size: 259 fixed pieces (<unk>, <s>, </s>, 256 bytes), the corpus's "
                "characters and the learnt pieces")
      ->required()
      ->check(at_least(kMinTrainVocab));
  c->add_option("--out,-o", o->out_dir, "Output folder")->required();
  c->add_option("--model-type", o->model_type, "bpe or unigram")
      ->capture_default_str()
      ->check(one_of("--model-type", {"bpe", "unigram"}));
  c->add_option("--character-coverage", o->character_coverage,
                "Share of characters covered by the vocabulary (the rest uses byte fallback)")
      ->capture_default_str()
      ->check(interval(0, 1, /*lo_open=*/true));
  c->add_option("--text-field", o->text_field, "JSONL field holding the text")->capture_default_str();
  c->add_option("--max-sentences", o->max_sentences, "Lines sampled for training at most")
      ->capture_default_str()
      ->check(at_least(1));
  c->add_option("--threads", o->threads, "Trainer threads (0: all cores)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_flag("--verbose", o->verbose, "Show SentencePiece's training log");
  c->add_option("corpus", o->inputs, "Text (.txt) or JSONL (.jsonl) files")->required();
  c->callback([o] {
    TrainTokenizerResult r = train_tokenizer(*o);
    std::fprintf(stderr, "trained a %s vocabulary of %d on %llu lines in %.1f s\n",
                 o->model_type.c_str(), o->vocab_size, static_cast<unsigned long long>(r.sentences),
                 r.seconds);
    write_stdout(r.model_path + "\n");
  });
}

void add_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  auto rule = std::make_shared<std::string>("blank2");
  auto threads = std::make_shared<int>(0);
  auto no_progress = std::make_shared<bool>(false);
  auto* c = app.add_subcommand(
      "tokenize", "Encode text / JSONL files into binary token shards (see docs/TOKENIZERS.md)");
  c->add_option("--tokenizer,-t", o->tokenizer_path, "Tokenizer file or folder")->required();
  c->add_option("--out,-o", o->out_dir, "Output folder (train_NNN.bin, val_NNN.bin, meta.json)")
      ->required();
  c->add_option("--val-fraction", o->val_fraction, "Share of the text held out for validation")
      ->capture_default_str()
      ->check(interval(0, 1, false, /*hi_open=*/true));
  c->add_option("--seed", o->seed, "Seed of the train / validation split")
      ->capture_default_str()
      ->check(seed_value());
  c->add_option("--txt-docs", *rule,
                "How .txt files split into documents: blank2 (two blank lines), blank (paragraphs), "
                "line, file")
      ->capture_default_str();
  c->add_option("--max-doc-bytes", o->max_doc_bytes,
                "Longer .txt documents are cut at line breaks into split units of this size")
      ->capture_default_str()
      ->check(at_least(1));
  c->add_option("--text-field", o->text_field, "JSONL field holding the document")->capture_default_str();
  c->add_option("--shard-tokens", o->shard_tokens, "Tokens per shard file at most")
      ->capture_default_str()
      ->check(at_least(1));
  c->add_option("--threads", *threads, "Encoding threads (0: all cores)")
      ->capture_default_str()
      ->check(at_least(0));
  c->add_flag("--bos", o->add_bos, "Also start every document with BOS (Llama-family tokenizers)");
  c->add_flag("--no-progress", *no_progress, "No progress bar");
  c->add_option("inputs", o->inputs, "Text (.txt) or JSONL (.jsonl, one {\"text\": ...} per line) files")
      ->required();
  c->callback([o, rule, threads, no_progress] {
    o->txt_rule = parse_txt_doc_rule(*rule);
    o->progress = !*no_progress;
    o->on_note = [](const std::string& m) {
      std::fprintf(stderr, "%s%s\n", m.rfind("warning", 0) == 0 ? "mlkv: " : "", m.c_str());
    };
    set_num_threads(*threads);
    auto tok = load_tokenizer_file(o->tokenizer_path);
    TokenizeStats st = tokenize_corpus(*tok, *o);
    // Units are what the split assigns; a document's count goes to the split holding its end.
    std::fprintf(stderr,
                 "%.1f MB in %.1f s (%.1f MB/s, %d threads): train %llu tokens in %llu units, "
                 "val %llu tokens in %llu units (%.1f%% of the tokens held out), documents: %llu, "
                 "%s tokens -> %s\n",
                 st.input_bytes / 1e6, st.seconds,
                 st.input_bytes / 1e6 / std::max(st.seconds, 1e-9), num_threads(),
                 static_cast<unsigned long long>(st.train_tokens),
                 static_cast<unsigned long long>(st.train_units),
                 static_cast<unsigned long long>(st.val_tokens),
                 static_cast<unsigned long long>(st.val_units), 100.0 * st.val_share(),
                 static_cast<unsigned long long>(st.train_docs + st.val_docs),
                 dtype_name(dtype_for_vocab(tok->n_vocab())), o->out_dir.c_str());
  });
}

}  // namespace

void add_tokenizer_commands(CLI::App& app) {
  auto* t = app.add_subcommand("tokenizer", "Encode, decode, inspect or train tokenizers");
  t->require_subcommand(1);
  add_encode(t);
  add_decode(t);
  add_info(t);
  add_train(t);
  add_tokenize(app);
}

}  // namespace mlkv::cli
