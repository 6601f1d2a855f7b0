"""Shared fixtures of the Python package's tests (tests/python, run by CTest through run_pytest.sh).

Environment (set by tests/python/CMakeLists.txt): PYTHONPATH holds the built package
(<build>/python), MLKV_BIN the `mlkv` CLI, MLKV_SHARED_DIR the shared data folder, MLKV_WORKDIR a
scratch folder for models the tests write.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("MLKV_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
MLKV_BIN = os.environ.get("MLKV_BIN", "")
TINY = SHARED / "data" / "models" / "aidreams260K" / "aidreams260K.bin"
EVAL_DIR = SHARED / "data" / "eval"
NEOX_TOKENIZER = SHARED / "data" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    w = os.environ.get("MLKV_WORKDIR")
    if w:
        p = Path(w)
        p.mkdir(parents=True, exist_ok=True)
        return p
    return tmp_path_factory.mktemp("mlkv")


@pytest.fixture(scope="session")
def tiny_path() -> str:
    if not TINY.exists():
        pytest.skip(f"the shared tiny model is missing ({TINY})")
    return str(TINY)


@pytest.fixture(scope="session")
def tiny(tiny_path):
    import mlkv

    return mlkv.Model.load(tiny_path, threads=2)


def run_cli(*args: str) -> str:
    """Runs the mlkv CLI and returns its stdout (the test fails with its stderr otherwise)."""
    if not MLKV_BIN:
        pytest.skip("MLKV_BIN (the mlkv CLI) is not set")
    p = subprocess.run([MLKV_BIN, *args], capture_output=True, text=True)
    assert p.returncode == 0, f"mlkv {' '.join(args)} failed ({p.returncode}): {p.stderr}"
    return p.stdout


def cli_json(*args: str):
    return json.loads(run_cli(*args))
