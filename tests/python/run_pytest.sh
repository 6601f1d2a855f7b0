#!/usr/bin/env bash
# Runs pytest on the Python package's tests with the repository's .venv (scripts/python_env.sh).
# Exit 77 (CTest: skipped) with the reason when the venv, pytest or the built module is missing.
# Usage: run_pytest.sh VENV_PYTHON PACKAGE_DIR PYTEST_ARGS...
set -u
py="$1"; pkg="$2"; shift 2
if [ ! -x "$py" ]; then
  echo "skipped: $py is missing (run scripts/python_env.sh)"; exit 77
fi
if ! "$py" -c "import pytest" 2>/dev/null; then
  echo "skipped: pytest is not installed in $py (rerun scripts/python_env.sh)"; exit 77
fi
if [ ! -d "$pkg/mlkv" ]; then
  echo "skipped: the mlkv module was not built ($pkg/mlkv missing: no pybind11 at configure time)"; exit 77
fi
export PYTHONPATH="$pkg${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
exec "$py" -m pytest -q -p no:cacheprovider "$@"
