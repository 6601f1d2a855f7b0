#!/usr/bin/env bash
# The test command: installs dependencies, builds, and runs the default test suite (everything but
# the `slow` label). Usage:
#   scripts/test.sh            release build, default suite
#   scripts/test.sh --asan     the same suite under AddressSanitizer + UBSan
#   scripts/test.sh --tsan     the mlkv binary under ThreadSanitizer: the label `tsan` (the server)
#   scripts/test.sh --slow     release build, only the long tests
set -euo pipefail
cd "$(dirname "$0")/.."
preset=release
labels=(-LE slow)
case "${1:-}" in
  --asan) preset=asan ;;
  --tsan) preset=tsan; labels=(-L tsan) ;;
  --slow) labels=(-L slow) ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--asan|--tsan|--slow]" >&2; exit 2 ;;
esac
# .venv first (openai, transformers, lm_eval ... from PyPI for the comparison tests; its pybind11
# lets the configure step find what the Python module needs), then the build.
scripts/install_deps.sh
scripts/python_env.sh
scripts/build.sh "$preset"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export MLKV_PROGRESS=0
# Tests run two at a time on two cores: sleeping (not spinning) OpenMP workers keep them from
# starving each other.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
ctest --preset "$preset" "${labels[@]}" -j 2 --timeout 900
