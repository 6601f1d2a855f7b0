#!/usr/bin/env python3
"""Checks that the code's #includes follow the layers of docs/ARCHITECTURE.md.

Every `#include "x/..."` in src/<module>/ must name the module itself or a module it may depend on
(the same edges as the CMake targets in src/CMakeLists.txt), and public headers (include/mlkv)
may include only public headers. Of the public headers, the plain types (errors, sampling
parameters, the tokenizer interface, generation requests and results) may be used by any layer;
the API classes (Engine, Session) only by src/api, src/server and the tools above them.
Exits 1 listing every violation.

Usage: tests/layering.py [PROJECT_ROOT]
"""
import os
import re
import sys

LOWER = {
    "core": [],
    "kernels": ["core"],
    "kv": ["core", "kernels"],
    "model": ["core", "kernels", "kv"],
    "io": ["core", "kernels", "kv", "model"],
    "sampling": ["core"],
    "tokenizer": ["core", "kernels", "kv", "model", "io"],
    "runtime": ["core", "kernels", "kv", "model", "sampling"],
    "train": ["core", "kernels", "kv", "model", "io"],
    "eval": ["core", "kernels", "kv", "model", "io", "tokenizer"],
    "convert": ["core", "kernels", "kv", "model", "io", "tokenizer"],
    "experiment": ["core", "kernels", "kv", "model", "io", "tokenizer", "train", "eval", "convert"],
    "api": ["core", "kernels", "kv", "model", "io", "sampling", "tokenizer", "runtime", "eval", "convert"],
    "server": [],
}
PUBLIC_TYPES = {"error.h", "sampling.h", "tokenizer.h", "generation.h"}
PUBLIC_API = {"model.h", "session.h", "mlkv.h", "convert.h", "evaluate.h"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    bad = []
    src = os.path.join(root, "src")
    modules = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    unknown = [m for m in modules if m not in LOWER]
    if unknown:
        bad.append(f"src/{unknown[0]}: a module this check does not know; add it to LOWER (and ARCHITECTURE.md)")
    for m in modules:
        allowed = set(LOWER.get(m, [])) | {m}
        for dirpath, _, files in os.walk(os.path.join(src, m)):
            for f in files:
                if not f.endswith((".h", ".cpp")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
                for inc in INCLUDE.findall(text):
                    if "/" not in inc:
                        continue  # a file of the same folder
                    top, name = inc.split("/", 1)
                    if top == "mlkv":
                        if name in PUBLIC_TYPES or (name in PUBLIC_API and m in ("api", "server")):
                            continue
                        bad.append(f"{rel}: includes the public API header {inc}, above layer '{m}'")
                    elif top in LOWER and top not in allowed:
                        bad.append(f"{rel}: includes {inc}: layer '{m}' may use {sorted(allowed)}")
    inc_dir = os.path.join(root, "include", "mlkv")
    for f in sorted(os.listdir(inc_dir)):
        with open(os.path.join(inc_dir, f), encoding="utf-8") as fh:
            for inc in INCLUDE.findall(fh.read()):
                if not inc.startswith("mlkv/"):
                    bad.append(f"include/mlkv/{f}: includes {inc}: public headers include public headers only")
                elif f in PUBLIC_TYPES and inc[5:] in PUBLIC_API:
                    bad.append(f"include/mlkv/{f}: a plain-types header includes the API header {inc}")
    for b in bad:
        print(b)
    print(f"layering: {len(bad)} violation(s) in {len(modules)} modules")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
