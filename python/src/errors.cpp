// mlkv::Error (the C++ API's exception) as Python exceptions, message unchanged: mlkv::FileError
// (a file or folder that cannot be found, opened, read or written) becomes OSError, or
// FileNotFoundError when the path does not exist; every other Error (options, token ids,
// malformed models and inputs) ValueError.
#include <pybind11/pybind11.h>

#include "bindings.h"
#include "mlkv/error.h"

namespace py = pybind11;

namespace mlkv::python {

void bind_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FileError& e) {
      PyErr_SetString(e.not_found() ? PyExc_FileNotFoundError : PyExc_OSError, e.what());
    } catch (const Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
}

}  // namespace mlkv::python
