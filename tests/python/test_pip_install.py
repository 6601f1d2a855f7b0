"""`pip install .` of the repository into a fresh virtual environment (no system packages; the
build requirements and numpy from PyPI, versions pinned by tests/python-constraints.txt), then the
installed package - not the build tree's - imports, scores like the CLI (to float32 rounding) and generates.
The CMake build folder of the wheel is kept in the work folder, so a rerun recompiles only what
changed (the first run compiles the engine: a few minutes on two cores; label slow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY, assert_close, cli_json

ROOT = Path(os.environ.get("MLKV_SOURCE_DIR", Path(__file__).resolve().parents[2]))


def test_pip_install_into_fresh_venv(workdir, tiny_path):
    venv = workdir / "fresh_venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_CONSTRAINT"] = str(ROOT / "tests" / "python-constraints.txt")
    p = subprocess.run(
        [str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--force-reinstall",
         str(ROOT), f"--config-settings=build-dir={workdir / 'wheel_build'}"],
        capture_output=True, text=True, env=env, timeout=1500)
    assert p.returncode == 0, f"pip install . failed:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"

    script = f"""
import json, mlkv
m = mlkv.Model.load({tiny_path!r}, threads=2)
ids = m.encode("Once upon a time, a dream", add_bos=True)
print(json.dumps({{"file": mlkv.__file__, "ids": ids, "lp": m.score(ids).tolist(),
                   "gen": m.generate(ids, max_tokens=12)["tokens"]}}))
"""
    p = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env,
                       cwd=str(workdir), timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["file"].startswith(str(venv)), got["file"]  # the installed copy
    ids = " ".join(map(str, got["ids"]))
    want = cli_json("score", tiny_path, "--tokens", ids, "--json")["logprobs"]
    # f32 values through JSON on both sides; equal to float32 rounding (conftest.assert_close:
    # OpenBLAS's AVX-512 kernels do not give the same bits in two processes).
    assert_close(got["lp"], want)
    gen = cli_json("generate", tiny_path, "--tokens", ids, "-n", "12", "--json")["results"][0]["tokens"]
    assert got["gen"] == gen
