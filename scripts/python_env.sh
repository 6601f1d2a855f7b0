#!/usr/bin/env bash
# Makes .venv: a virtual environment over the system Python (it sees Debian's python3-torch and
# python3-numpy) with the PyPI packages the tests compare against (tests/python-requirements.txt,
# versions pinned by tests/python-constraints.txt): the openai client, transformers, safetensors,
# tokenizers and lm-evaluation-harness. Idempotent: does nothing when .venv is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
stamp="$VENV/.mlkv-requirements"
want=$(cat tests/python-requirements.txt tests/python-constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "mlkv: installing the Python test packages into $VENV (a few minutes)" >&2
# An existing .venv is brought up to date in place (pip installs what changed).
[ -x "$VENV/bin/pip" ] || /usr/bin/python3 -m venv --system-site-packages "$VENV"
pip=("$VENV/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" -c tests/python-constraints.txt -r tests/python-requirements.txt
# lm-evaluation-harness and the two packages it imports at load time, without their torch pins
# (Debian's torch 1.13 serves; the harness's API-model path does not use torch).
"${pip[@]}" --no-deps lm_eval==0.4.9 accelerate==0.34.2 peft==0.13.2
"$VENV/bin/python" -c "import openai, transformers, safetensors, tokenizers, lm_eval.models" \
  || { echo "mlkv: the Python test environment does not import" >&2; exit 1; }
echo "$want" > "$stamp"
