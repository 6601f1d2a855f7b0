# Finds Python and pybind11 for the extension module (python/CMakeLists.txt). Under
# `pip install .` scikit-build-core names the interpreter and puts pybind11 on the search path;
# in a plain CMake build the repository's .venv (scripts/python_env.sh) is preferred, so the module
# matches the interpreter the tests run. Sets pybind11_FOUND; when found, every library is
# compiled position-independent (the module is a shared object that links the static layers).
# Not under MLKV_SANITIZE.
set(pybind11_FOUND FALSE)
if(MLKV_SANITIZE)
  # An ASan-instrumented module cannot be loaded into an uninstrumented interpreter.
  message(STATUS "mlkv: Python module OFF (MLKV_SANITIZE)")
  return()
endif()
set(_mlkv_venv ${PROJECT_SOURCE_DIR}/.venv)
if(NOT SKBUILD AND NOT DEFINED Python_EXECUTABLE AND EXISTS ${_mlkv_venv}/bin/python)
  set(Python_EXECUTABLE ${_mlkv_venv}/bin/python)
endif()
find_package(Python 3.9 COMPONENTS Interpreter Development.Module QUIET)
if(Python_FOUND)
  set(PYBIND11_FINDPYTHON ON)
  file(GLOB _mlkv_pybind11_hints ${_mlkv_venv}/lib/python3*/site-packages/pybind11/share/cmake/pybind11)
  find_package(pybind11 2.10 CONFIG QUIET HINTS ${_mlkv_pybind11_hints})
endif()
if(pybind11_FOUND)
  set(CMAKE_POSITION_INDEPENDENT_CODE ON)
  message(STATUS "mlkv: Python module ON (pybind11 ${pybind11_VERSION}, ${Python_EXECUTABLE})")
else()
  message(STATUS "mlkv: Python module OFF (no Python development files or pybind11 found)")
endif()
