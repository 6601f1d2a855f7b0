// mlkv.Tokenizer: the public C++ Tokenizer interface (BPE, SentencePiece, llama2.c) for Python.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "bindings.h"
#include "mlkv/tokenizer.h"

namespace py = pybind11;

namespace mlkv::python {

namespace {

// Decoded text is UTF-8; a stray invalid byte would become U+FFFD rather than an exception.
py::str utf8(const std::string& s) {
  return py::reinterpret_steal<py::str>(
      PyUnicode_DecodeUTF8(s.data(), static_cast<py::ssize_t>(s.size()), "replace"));
}

}  // namespace

void bind_tokenizer(py::module_& m) {
  py::class_<Tokenizer>(m, "Tokenizer",
                        "A tokenizer: byte-level BPE (tokenizer.json, GPT-2 encoder.json + "
                        "vocab.bpe), SentencePiece (tokenizer.model) or llama2.c (tokenizer.bin). "
                        "Ids are ints in [0, n_vocab); text is str.")
      .def_static(
          "load",
          [](const std::string& path) {
            py::gil_scoped_release unlocked;
            return load_tokenizer_file(path);
          },
          py::arg("path"),
          "Loads a tokenizer from a file or a model folder (tokenizer.json, tokenizer.model, "
          "encoder.json + vocab.bpe, tokenizer.bin, tok*.bin, in that order). Raises OSError "
          "when nothing is found, ValueError for a malformed file.")
      .def(
          "encode",
          [](const Tokenizer& t, const std::string& text, bool add_bos) {
            py::gil_scoped_release unlocked;
            return t.encode(text, add_bos);
          },
          py::arg("text"), py::arg("add_bos") = false,
          "Text -> list of token ids. add_bos prepends BOS where the tokenizer has one.")
      .def(
          "decode", [](const Tokenizer& t, const std::vector<int32_t>& ids) { return utf8(t.decode(ids)); },
          py::arg("ids"), "List of token ids -> text. Raises ValueError for an id outside the vocabulary.")
      .def(
          "decode_continuation",
          [](const Tokenizer& t, const std::vector<int32_t>& context, const std::vector<int32_t>& ids) {
            return utf8(decode_continuation(t, context, ids));
          },
          py::arg("context"), py::arg("ids"),
          "The text ids add after context (a prompt): decode(context + ids) == decode(context) + "
          "this, where decode(ids) alone would drop the leading space of a SentencePiece "
          "continuation. Raises ValueError for an id outside the vocabulary.")
      .def(
          "token_piece", [](const Tokenizer& t, int32_t id) { return utf8(t.token_piece(id)); },
          py::arg("id"), "The raw vocabulary piece of one id ('Ġthe', '▁the', '<0x0A>').")
      .def(
          "token_bytes", [](const Tokenizer& t, int32_t id) { return py::bytes(t.token_bytes(id)); },
          py::arg("id"), "The bytes one id adds to decoded text (may be part of a UTF-8 sequence).")
      .def_property_readonly("n_vocab", &Tokenizer::n_vocab)
      .def_property_readonly("bos_id", &Tokenizer::bos_id, "BOS id, -1 when none")
      .def_property_readonly("eos_id", &Tokenizer::eos_id, "EOS id, -1 when none")
      .def_property_readonly("kind", &Tokenizer::kind, "'bpe', 'sentencepiece' or 'llama2c'")
      .def("__len__", &Tokenizer::n_vocab)
      .def("__repr__", [](const Tokenizer& t) {
        return "<mlkv.Tokenizer " + t.kind() + ", " + std::to_string(t.n_vocab()) + " ids>";
      });
}

}  // namespace mlkv::python
