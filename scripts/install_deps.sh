#!/usr/bin/env bash
# Installs the Debian packages mlkv builds and tests with (as root, via apt-get). Idempotent: does
# nothing when everything is already installed.
set -euo pipefail
PKGS=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev        # GEMM on the program's OpenMP pool (one thread pool)
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev
  libpcre2-dev libsentencepiece-dev libicu-dev
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy python3-sentencepiece   # independent references in the tests
  python3-venv python3-pip       # .venv for the PyPI packages the tests compare against
  python3-dev                    # Python.h for the Python module (python/)
  clang libclang-rt-dev          # libFuzzer targets
  gnuplot-nox                    # loss-curve plots
  librsvg2-bin                   # rsvg-convert: PNG of `mlkv reproduce`'s Pareto plot
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "mlkv: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
