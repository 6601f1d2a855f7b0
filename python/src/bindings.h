// The pieces of the extension module mlkv._mlkv (python/src), one function per group of bindings.
#pragma once

#include <pybind11/pybind11.h>

namespace mlkv::python {

void bind_errors(pybind11::module_& m);     // mlkv::Error -> ValueError / OSError (errors.cpp)
void bind_tokenizer(pybind11::module_& m);  // Tokenizer, load_tokenizer (tokenizer.cpp)
void bind_engine(pybind11::module_& m);     // Engine: load, score, logits, generate, ... (module.cpp)
void bind_convert(pybind11::module_& m);    // convert (module.cpp)

}  // namespace mlkv::python
