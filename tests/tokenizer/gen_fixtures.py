#!/usr/bin/python3
"""Generates the tokenizer fixtures in fixtures/ from independent implementations.

Run by hand when the cases change (CI only reads the committed JSON files):
    /usr/bin/python3 tests/tokenizer/gen_fixtures.py [--shared ../shared] [--npm-dir /tmp/mlkv-tokref]

References:
  * gpt-neox-20b/tokenizer.json and GPT-2 (encoder.json + vocab.bpe): Hugging Face `tokenizers`
    (Rust, npm package `tokenizers`, via gen_fixtures_hf.js). GPT-2 is also encoded with the npm
    package `gpt-3-encoder` as a cross-check; disagreements are listed in the fixture.
  * Hugging Face `tokenizers` also for a Llama-3-style tokenizer.json (GPT-2's vocabulary behind
    Llama-3's pre-tokenizer; the C++ test rebuilds it from the shared GPT-2 files) and for three
    small Llama-2-style tokenizer.json files written into fixtures/ (see
    sentencepiece_style_tokenizers()).
  * llama2/tokenizer.model: Python `sentencepiece` (Debian's python3-sentencepiece), after cutting
    the text at control / unknown piece text ("<s>", "</s>", "<unk>") as mlkv does.
  * llama2.c tok512.bin: llama2c_encode() below, a line-by-line Python port of llama2.c's encode().
Inputs that are not valid UTF-8 are stored as hex (plus their "text" after replacement); the
references see them decoded with errors="replace" (U+FFFD for each maximal invalid subpart), which
is what mlkv does first. Each fixture has "ids" per case and, where the reference's decode of those
ids differs from the case's text, "decoded".
"""
import argparse
import json
import os
import re
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
NPM_PACKAGES = ["tokenizers@0.23.2", "gpt-3-encoder@1.1.4"]

# (name, text as str or bytes). Bytes are for invalid UTF-8.
HARD_CASES = [
    ("empty", ""),
    ("hello", "Hello world"),
    ("leading_space", " leading space"),
    ("trailing_space", "trailing space "),
    ("space_runs", "a  b   c    d     e      f" + " " * 30 + "g" + " " * 60),
    ("only_spaces", " " * 40),
    ("single_space", " "),
    ("tabs", "a\tb\t\tc\t\t\t d \t e"),
    ("newlines", "line1\nline2\n\nline4\n\n\n  indented\n"),
    ("crlf", "windows\r\nline\r\n\r\nend\r"),
    ("space_newline_mix", " \n \n\t\n   \n"),
    ("contractions", "I'm you're he's we've they'll she'd can't won't WON'T I'M It'S y'all '' 's"),
    ("digits", "0123456789 12345678901234567890 3.14159 1,000,000 2024-05-17 ١٢٣ ①②③ ½ Ⅻ"),
    ("punct_runs", "Hello!!! What??? ...... ---- ==> <= != ;;; (a) [b] {c} @#$%^&*~`|\\"),
    ("urls", "email@example.com http://x.y/z?q=1&r=2#frag C:\\path\\to\\file.txt"),
    ("accents", "café naïve résumé Ångström crème brûlée façade jalapeño Zürich"),
    ("decomposed", "cafe\u0301 nai\u0308ve A\u030angstro\u0308m \u212b \u1e9b\u0323"),
    ("cjk", "日本語のテキスト、中文文本。한국어 텍스트 漢字かなカナ"),
    ("emoji", "😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🤖🚀 a😀b"),
    ("scripts", "Привет мир Ελληνικά עברית العربية हिन्दी ไทย ქართული"),
    ("unicode_spaces", "a\u00a0b\u3000c\u2028d\u2029e\u0085f\u180eg\ufeffh\u200bi\u000bj\u000ck\u001cl\u2003m\u202fn"),
    ("controls", "\x00\x01\x07\x1b[0m\x7f bell\x07"),
    ("special_eot", "Hello<|endoftext|>world <|endoftext|> <|endoftext|><|endoftext|>x"),
    ("special_partial", "<|endoftext <|endoftext| <|endoftext|| |endoftext|>"),
    ("special_llama", "<s>Hello</s> <unk> a<s>b </s>"),
    ("special_pad", "<|padding|> and <|padding|><|endoftext|>"),
    ("mixed", "Mr. O'Neil's 3rd-place finish (at 12:45pm) wasn't bad—really! “Quoted” ‘text’ …"),
    ("code", "def f(x):\n    return x**2  # comment\n\tif (a&&b) { c++; }\n\n\n    pass\n"),
    ("long_word", "supercalifragilisticexpialidocious" * 6),
    ("repeat", "ab" * 150 + " " + "a" * 400),
    ("hex_blob", "0x7f3a9c2b1d4e5f60a1b2c3d4e5f60718293a4b5c6d7e8f90"),
    ("invalid_ff", b"abc\xff\xfe def"),
    ("invalid_c3_28", b"\xc3\x28 x"),
    ("invalid_truncated3", b"euro \xe2\x82"),
    ("invalid_truncated4", b"trunc \xf0\x9f\x98 after"),
    ("invalid_surrogate", b"\xed\xa0\x80 surrogate"),
    ("invalid_overlong", b"\xc0\xaf overlong \xe0\x80\xaf"),
    ("invalid_continuations", b"\x80\x80 lone \xbf"),
    ("invalid_mixed", "é".encode() + b"\xe9t\xe9 " + "日".encode()[:2] + b" ok"),
]

# (name, path under shared/data, how) samples of ~3 kB of each corpus, cut at line boundaries.
CORPORA = [
    ("tinystories", "text/tinystories_lower.txt"),
    ("brown", "text/brown.txt"),
    ("kjv", "text/kjv.txt"),
    ("shakespeare", "text/tinyshakespeare.txt"),
    ("austen_emma", "text/austen/emma.txt"),
    ("fairytaleqa", "text/fairytaleqa/fairytaleqa_stories_train.txt"),
    ("wikitext2", "eval/wikitext2_test.txt"),
    ("lambada", "eval/lambada_openai_test.jsonl"),
]
SAMPLE_BYTES = 3000

# Llama-3's split regex; the "llama3-like" tokenizer is GPT-2's vocabulary and merges behind
# Llama-3's pre-tokenizer (Split + ByteLevel without regex), ignore_merges and a BOS template.
# tests/tokenizer/reference_test.cpp builds the same tokenizer.json from the shared GPT-2 files.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def sentencepiece_style_tokenizers(sp, n_merged=1800):
    """Two small Llama-2-style tokenizer.json files (character BPE with byte fallback) cut from the
    Llama-2 SentencePiece model: its first n_merged pieces (specials, the 256 byte pieces, the
    best-scored merges) plus its single characters below U+3000 (so CJK and emoji still fall back to
    bytes), renumbered in order. Merges are made the way Hugging Face's LlamaConverter makes them
    (every split of a piece into two vocabulary pieces, by piece score). "legacy" uses the Prepend +
    Replace normalizers, "metaspace" the Metaspace pre-tokenizer (prepend_scheme "first", no split),
    "metaspace-split" Metaspace with "always" and split; all three the Replace / ByteFallback / Fuse /
    Strip decoders."""
    keep = [i for i in range(sp.get_piece_size())
            if i < n_merged or (len(sp.id_to_piece(i)) == 1 and ord(sp.id_to_piece(i)) < 0x3000)]
    vocab = {sp.id_to_piece(i): new for new, i in enumerate(keep)}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in keep}
    merges = []
    for piece, score in scores.items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges += local
    merges.sort(key=lambda x: x[2], reverse=True)
    added = [{"id": i, "content": sp.id_to_piece(i), "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True} for i in range(3)]
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": [[a, b] for a, b, _ in merges]}
    space = "\u2581"
    legacy = {"version": "1.0", "added_tokens": added,
              "normalizer": {"type": "Sequence", "normalizers": [
                  {"type": "Prepend", "prepend": space},
                  {"type": "Replace", "pattern": {"String": " "}, "content": space}]},
              "pre_tokenizer": None, "post_processor": None,
              "decoder": {"type": "Sequence", "decoders": [
                  {"type": "Replace", "pattern": {"String": space}, "content": " "},
                  {"type": "ByteFallback"}, {"type": "Fuse"},
                  {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
              "model": model}
    # LlamaConverter with legacy=False: Metaspace pre-tokenizer, same decoders.
    metaspace = dict(legacy)
    metaspace["normalizer"] = None
    metaspace["pre_tokenizer"] = {"type": "Metaspace", "replacement": space, "prepend_scheme": "first",
                                  "split": False}
    # The same with Metaspace splitting into words and always prepending.
    split = dict(metaspace)
    split["pre_tokenizer"] = {"type": "Metaspace", "replacement": space, "prepend_scheme": "always",
                              "split": True}
    return {"llama2-hf-legacy": legacy, "llama2-hf-metaspace": metaspace, "llama2-hf-metaspace-split": split}


def random_cases(n=40, seed=20240517):
    """Random strings over many Unicode categories (whitespace of every kind, digits of several
    scripts, combining marks, emoji sequences, punctuation and symbols), for differential tests."""
    import random
    rng = random.Random(seed)
    pools = [
        [chr(c) for c in range(0x20, 0x7F)] * 4,
        list(" \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2007\u200a\u2028\u2029"
             "\u202f\u205f\u3000\u180e\ufeff\u200b\x1c\x1d\x1e\x1f") * 2,
        list("0123456789٠١٢٣٤٥٦٧٨٩०१२३४५६७८९０１２３４５６７８９²³¹¼½⅓ⅧⅨ①"),
        [chr(c) for c in range(0xC0, 0x250)],
        [chr(c) for c in range(0x300, 0x370)],  # combining marks
        [chr(c) for c in range(0x391, 0x3CA)] + [chr(c) for c in range(0x410, 0x450)],
        [chr(c) for c in range(0x4E00, 0x4F00)] + [chr(c) for c in range(0xAC00, 0xAD00)],
        [chr(c) for c in range(0x600, 0x650)] + [chr(c) for c in range(0x900, 0x970)],
        list("😀😃👍🏽👨‍👩‍👧❤️🇫🇷🤖✨🔥") + ["\u200d", "\ufe0f"],
        list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿«»‘’“”„…–—•·§¶†‡€£¥©®™°±×÷≤≥∞√∑∫≈≠←→↑↓"),
        ["'s", "'S", "'t", "'RE", "'ve", "'M", "'ll", "'Ll", "'d", "'D", "<|endoftext|>", "<s>", "</s>"],
    ]
    out = []
    for i in range(n):
        k = rng.randint(1, 200)
        weights = [rng.random() for _ in pools]
        s = "".join(rng.choice(rng.choices(pools, weights)[0]) for _ in range(k))
        out.append(("random_%02d" % i, s))
    return out


def corpus_sample(path):
    with open(path, "rb") as f:
        data = f.read()
    start = data.index(b"\n", int(len(data) * 0.37)) + 1
    end = data.index(b"\n", start + SAMPLE_BYTES) + 1
    chunk = data[start:end]
    if path.endswith(".jsonl"):
        chunk = "\n\n".join(json.loads(l)["text"] for l in chunk.decode().splitlines()).encode()
    return chunk.decode("utf-8")


# ---- llama2.c encode, ported line by line from llama2.c run.c ----
def read_llama2c(path):
    with open(path, "rb") as f:
        b = f.read()
    (max_len,) = struct.unpack_from("<i", b, 0)
    o, vocab, scores = 4, [], []
    while o < len(b):
        score, n = struct.unpack_from("<fi", b, o)
        o += 8
        vocab.append(b[o:o + n])
        scores.append(score)
        o += n
    return vocab, scores


def llama2c_encode(vocab, scores, text, bos=False):
    lookup = {}
    for i, v in enumerate(vocab):
        lookup.setdefault(v, i)
    tokens = []
    if bos:
        tokens.append(1)
    if len(text) > 0:
        tokens.append(lookup.get(b" ", -1))
    # one code point at a time (the text is valid UTF-8 here); unknown -> byte fallback at +3
    for ch in text:
        s = ch.encode("utf-8")
        if s in lookup:
            tokens.append(lookup[s])
        else:
            tokens.extend(c + 3 for c in s)
    # merge the best consecutive pair each iteration, according to the scores
    pair_id = []  # id of vocab[t[i]] + vocab[t[i+1]] or -1 (kept in step with tokens)

    def pid(i):
        return lookup.get(vocab[tokens[i]] + vocab[tokens[i + 1]], -1)

    pair_id = [pid(i) for i in range(len(tokens) - 1)]
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for i, id_ in enumerate(pair_id):
            if id_ != -1 and scores[id_] > best_score:
                best_score, best_id, best_idx = scores[id_], id_, i
        if best_idx == -1:
            break
        tokens[best_idx] = best_id
        del tokens[best_idx + 1]
        del pair_id[best_idx]
        if best_idx < len(pair_id):
            pair_id[best_idx] = pid(best_idx)
        if best_idx > 0:
            pair_id[best_idx - 1] = pid(best_idx - 1)
    return tokens


def llama2c_decode(vocab, ids):
    # llama2.c strips the leading space of the piece after BOS; mlkv (like SentencePiece) strips
    # it from the first piece that is not BOS / EOS, BOS or not.
    out, first = b"", True
    for id_ in ids:
        if id_ in (1, 2):
            continue
        piece = vocab[id_]
        m = re.fullmatch(rb"<0x([0-9A-F]{2})>", piece)
        if m and 3 <= id_ < 259:
            piece = bytes([int(m.group(1), 16)])
        elif first and piece.startswith(b" "):
            piece = piece[1:]  # the dummy prefix
        first = False
        out += piece
    return out.decode("utf-8", "replace")


# ---- SentencePiece with special-token text cut out first ----
def sp_encode(sp, text):
    specials = sorted({sp.id_to_piece(i) for i in range(sp.get_piece_size())
                       if sp.is_control(i) or sp.is_unknown(i)} - {""}, key=len, reverse=True)
    rx = re.compile("|".join(re.escape(s) for s in specials))
    ids, pos = [], 0
    for m in rx.finditer(text):
        if m.start() > pos:
            ids += sp.encode(text[pos:m.start()])
        ids.append(sp.piece_to_id(m.group(0)))
        pos = m.end()
    if pos < len(text):
        ids += sp.encode(text[pos:])
    return ids


def ensure_npm(npm_dir):
    if all(os.path.isdir(os.path.join(npm_dir, "node_modules", p.rsplit("@", 1)[0])) for p in NPM_PACKAGES):
        return
    os.makedirs(npm_dir, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", npm_dir, "--no-audit", "--no-fund"] + NPM_PACKAGES,
                   check=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "..", "shared"))
    ap.add_argument("--npm-dir", default=os.environ.get("MLKV_NPM_DIR", "/tmp/mlkv-tokref"))
    args = ap.parse_args()
    data = os.path.join(args.shared, "data")
    out_dir = os.path.join(HERE, "fixtures")
    os.makedirs(out_dir, exist_ok=True)

    cases, raw = [], {}
    for name, t in HARD_CASES:
        if isinstance(t, bytes):
            raw[name] = t.decode("utf-8", "replace")
            # "hex": the input bytes; "text": what they become with U+FFFD replacement
            cases.append({"name": name, "hex": t.hex(), "text": raw[name]})
        else:
            cases.append({"name": name, "text": t})
            raw[name] = t
    for name, t in random_cases():
        cases.append({"name": name, "text": t})
        raw[name] = t
    for name, rel in CORPORA:
        t = corpus_sample(os.path.join(data, rel))
        cases.append({"name": "corpus_" + name, "text": t})
        raw["corpus_" + name] = t
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, ensure_ascii=False, indent=0)

    def write(fname, tokenizer, reference, results, extra=None):
        fx = {"tokenizer": tokenizer, "reference": reference, "ids": {}, "decoded": {}}
        for name, (ids, dec) in results.items():
            fx["ids"][name] = ids
            if dec != raw[name]:
                fx["decoded"][name] = dec
        fx.update(extra or {})
        with open(os.path.join(out_dir, fname), "w") as f:
            json.dump(fx, f, ensure_ascii=False, separators=(",", ":"))
            f.write("\n")

    # Byte-level BPE through Hugging Face tokenizers (node).
    ensure_npm(args.npm_dir)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(data, "tokenizers/llama2/tokenizer.model"))
    sp_style = sentencepiece_style_tokenizers(sp)
    for key, tj in sp_style.items():  # committed: the C++ test loads them from fixtures/
        with open(os.path.join(out_dir, key + ".tokenizer.json"), "w") as f:
            json.dump(tj, f, ensure_ascii=False, separators=(",", ":"))
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(data, "tokenizers/gpt2/encoder.json")) as f:
            encoder = json.load(f)
        with open(os.path.join(data, "tokenizers/gpt2/vocab.bpe")) as f:
            merges = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
        bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        gpt2 = {"version": "1.0", "truncation": None, "padding": None,
                "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "single_word": False,
                                  "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
                "normalizer": None, "pre_tokenizer": bl, "post_processor": None, "decoder": bl,
                "model": {"type": "BPE", "dropout": None, "unk_token": None,
                          "continuing_subword_prefix": None, "end_of_word_suffix": None,
                          "fuse_unk": False, "byte_fallback": False, "vocab": encoder, "merges": merges}}
        gpt2_path = os.path.join(tmp, "gpt2_tokenizer.json")
        with open(gpt2_path, "w") as f:
            json.dump(gpt2, f)
        llama3 = json.loads(json.dumps(gpt2))
        llama3["added_tokens"] += [
            {"id": 50257, "content": "<|begin_of_text|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True},
            {"id": 50258, "content": "<|eot_id|>", "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": True}]
        llama3["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
        llama3["post_processor"] = {"type": "TemplateProcessing",
                                    "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                               {"Sequence": {"id": "A", "type_id": 0}}],
                                    "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                                    "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                                             "ids": [50257],
                                                                             "tokens": ["<|begin_of_text|>"]}}}
        llama3["model"]["ignore_merges"] = True
        llama3_path = os.path.join(tmp, "llama3_tokenizer.json")
        with open(llama3_path, "w") as f:
            json.dump(llama3, f)
        cases_path = os.path.join(tmp, "cases.json")
        with open(cases_path, "w") as f:
            json.dump(raw, f)
        out_path = os.path.join(tmp, "out.json")
        subprocess.run(["node", os.path.join(HERE, "gen_fixtures_hf.js"), args.npm_dir, cases_path, out_path,
                        "gpt2=" + gpt2_path, "llama3=" + llama3_path,
                        "llama2-hf-legacy=" + os.path.join(out_dir, "llama2-hf-legacy.tokenizer.json"),
                        "llama2-hf-metaspace=" + os.path.join(out_dir, "llama2-hf-metaspace.tokenizer.json"),
                        "llama2-hf-metaspace-split=" + os.path.join(out_dir,
                                                                    "llama2-hf-metaspace-split.tokenizer.json"),
                        "neox=" + os.path.join(data, "tokenizers/gpt-neox-20b/tokenizer.json")],
                       check=True)
        with open(out_path) as f:
            hf = json.load(f)
    disagree = [n for n in raw if hf["gpt2"][n]["ids"] != hf["gpt3enc"][n]]
    if disagree:
        print("gpt2: HF tokenizers and gpt-3-encoder disagree on:", ", ".join(disagree))
    write("gpt-neox-20b.json", "tokenizers/gpt-neox-20b/tokenizer.json",
          "Hugging Face tokenizers 0.23.2 (npm 'tokenizers'), encode without special-token template",
          {n: (r["ids"], r["decoded"]) for n, r in hf["neox"].items()})
    write("gpt2.json", "tokenizers/gpt2 (encoder.json + vocab.bpe)",
          "Hugging Face tokenizers 0.23.2 with the GPT-2 files as a ByteLevel BPE tokenizer.json; "
          "cross-checked with npm gpt-3-encoder 1.1.4",
          {n: (r["ids"], r["decoded"]) for n, r in hf["gpt2"].items()},
          {"gpt3_encoder_disagrees_on": disagree})

    write("llama3-like.json", "GPT-2 vocabulary + merges behind Llama-3's pre-tokenizer (built in the test)",
          "Hugging Face tokenizers 0.23.2 (npm 'tokenizers')",
          {n: (r["ids"], r["decoded"]) for n, r in hf["llama3"].items()})

    for key in sp_style:
        write(key + ".json", "fixtures/%s.tokenizer.json (a cut of Llama-2's pieces, HF converter merges)" % key,
              "Hugging Face tokenizers 0.23.2 (npm 'tokenizers')",
              {n: (r["ids"], r["decoded"]) for n, r in hf[key].items()})

    # SentencePiece.
    res = {}
    for n, t in raw.items():
        ids = sp_encode(sp, t)
        res[n] = (ids, sp.decode(ids))
    write("llama2.json", "tokenizers/llama2/tokenizer.model",
          "python3-sentencepiece %s (cut at control/unknown piece text first)" % spm.__version__, res)

    # llama2.c tokenizer.bin.
    vocab, scores = read_llama2c(os.path.join(data, "models/aidreams260K/tok512.bin"))
    res = {}
    for n, t in raw.items():
        ids = llama2c_encode(vocab, scores, t)
        res[n] = (ids, llama2c_decode(vocab, ids))
    write("tok512.json", "models/aidreams260K/tok512.bin", "Python port of llama2.c encode() in gen_fixtures.py", res)
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    print("fixtures:", sizes, "total", sum(sizes.values()))


if __name__ == "__main__":
    sys.exit(main())
