// mlkv::Error (the one exception type of the C++ API) as Python exceptions, message unchanged:
// failures to find, open, read or write a file become OSError (FileNotFoundError when the path
// does not exist), everything else the caller got wrong (options, token ids, malformed models and
// inputs) ValueError. The C++ API has one type, so files are told apart by the wording the engine
// uses for them (src/core/mmap_file.cpp, src/io, src/tokenizer, src/eval); tests/python checks
// each kind.
#include <pybind11/pybind11.h>

#include <string>

#include "bindings.h"
#include "mlkv/error.h"

namespace py = pybind11;

namespace mlkv::python {

namespace {

bool contains(const std::string& s, const char* what) {
  return s.find(what) != std::string::npos;
}

PyObject* exception_type(const std::string& msg) {
  if (contains(msg, "does not exist") || contains(msg, "No such file or directory") ||
      contains(msg, "is neither a file nor a task"))
    return PyExc_FileNotFoundError;
  for (const char* io : {"cannot open", "cannot stat", "cannot map", "cannot create", "cannot write",
                         "cannot read", "cannot fsync", "cannot rename", "cannot move",
                         "cannot replace", "Permission denied", "is neither a model folder",
                         "no model.safetensors"}) {
    if (contains(msg, io)) return PyExc_OSError;
  }
  return PyExc_ValueError;
}

}  // namespace

void bind_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      const std::string msg = e.what();
      PyErr_SetString(exception_type(msg), msg.c_str());
    }
  });
  // For tests: raise the exception a C++ message would become.
  m.def("_raise_error", [](const std::string& msg) { throw Error(msg); });
}

}  // namespace mlkv::python
