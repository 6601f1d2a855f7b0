"""Shared fixtures of the Python package's tests (tests/python, run by CTest through run_pytest.sh).

Environment (set by tests/python/CMakeLists.txt): PYTHONPATH holds the built package
(<build>/python), MLKV_BIN the `mlkv` CLI, MLKV_SHARED_DIR the shared data folder, MLKV_WORKDIR a
scratch folder for models the tests write.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("MLKV_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
MLKV_BIN = os.environ.get("MLKV_BIN", "")
TINY = SHARED / "data" / "models" / "aidreams260K" / "aidreams260K.bin"
EVAL_DIR = SHARED / "data" / "eval"
NEOX_TOKENIZER = SHARED / "data" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"


# The Python package and the CLI run the same code on the same machine, but not always to the same
# bits: OpenBLAS's AVX-512 (SkylakeX) SGEMM kernels round differently from one process to the next
# (measured on the AVX-512 Xeon: up to 4.8e-6 in a log-prob; with OPENBLAS_CORETYPE=Haswell both
# sides agree bit for bit). So floats that went through a GEMM are compared to float32 rounding:
# |a - b| <= rel max(1, |a|, |b|) for every element.
def assert_close(a, b, rel=2e-5):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    bound = rel * np.maximum(1.0, np.maximum(np.abs(a), np.abs(b)))
    bad = ~(np.abs(a - b) <= bound)
    assert not bad.any(), (f"{int(bad.sum())} of {a.size} values differ by more than {rel} "
                           f"(relative, at least 1): first at {np.argwhere(bad)[0].tolist()}: "
                           f"{a[bad][0]!r} vs {b[bad][0]!r}")


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
