#!/usr/bin/python3
"""Loss right after conversion with every merge, `calibrated` included, and with the authors' owner rule
vs `--owners auto`: the numbers behind docs/RESULTS.md's "Calibrated conversion" section.

For every configuration (M KV layers x G KV heads per layer; the paper's table scaled to the model as
tests/eval/paper_table.py does, or every (M, G) with --grid) it runs `mlkv convert SRC ... --merge X` for
X in pairwise, mean, owner, calibrated (owners by the authors' rule), and for 1 < M < L also
`--owners auto` with owner and calibrated, then `mlkv eval CONVERTED DATA --json`, and prints a markdown
table of the mean token loss (nats) on DATA. The calibration text (--calibration, a text file or token
shard) must be disjoint from DATA.

    tests/eval/calibrated_table.py --mlkv build/bin/mlkv --model M --calibration train.bin --data val.bin \
        --workdir /tmp/ct [--grid] [--ctx 128] [--calibration-tokens 16384]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper_table import eval_loss, info, run, scaled_configs  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mlkv", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--calibration", required=True, help="calibration text or token shard")
    p.add_argument("--data", required=True, help="held-out text or token shard (disjoint from --calibration)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--grid", action="store_true", help="every (M, G) instead of the paper's configurations")
    p.add_argument("--ctx", type=int, default=0, help="evaluation window (0: the model's context)")
    p.add_argument("--calibration-tokens", type=int, default=0)
    p.add_argument("--calibration-ctx", type=int, default=0)
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--merges", default="pairwise,mean,owner,calibrated")
    p.add_argument("--no-auto", action="store_true", help="skip --owners auto")
    p.add_argument("--json", help="write every result here")
    a = p.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    src = info(a.mlkv, a.model)
    L, H = src["n_layer"], src["n_head"]
    d_head = src["n_embd_head"] if "n_embd_head" in src else src["n_embd"] // H
    base = eval_loss(a.mlkv, a.model, a.data, os.path.join(a.workdir, "src.json"), a.limit, a.threads, a.ctx)
    print(f"source {a.model}: loss {base['loss']:.4f} on {base['n_tokens']} tokens", file=sys.stderr)
    merges = a.merges.split(",")
    calib_args = ["--calibration", a.calibration]
    if a.calibration_tokens > 0:
        calib_args += ["--calibration-tokens", str(a.calibration_tokens)]
    if a.calibration_ctx > 0:
        calib_args += ["--calibration-ctx", str(a.calibration_ctx)]

    rows = []
    for kind, m, g in scaled_configs(L, H, a.grid):
        if (m, g) == (L, H):
            continue
        row = {"config": f"{kind}-{m * g}", "M": m, "G": g, "kv_bytes": 2 * m * g * d_head * 4, "loss": {},
               "owners": {}, "seconds": {}}
        variants = [(x, False) for x in merges]
        if 1 < m < L and not a.no_auto:
            variants += [(x, True) for x in ("owner", "calibrated") if x in merges]
        for merge, auto in variants:
            if m == L and merge in ("pairwise", "mean") and "owner" in row["loss"]:
                row["loss"][merge] = row["loss"]["owner"]  # no cross-layer merge: the same model
                continue
            name = f"{merge}{'-auto' if auto else ''}"
            out = os.path.join(a.workdir, f"m{m}g{g}-{name}")
            cmd = [a.mlkv, "convert", a.model, out, "--kv-heads", str(g), "--merge", merge, "--force", "--json"]
            if m < L:
                cmd += ["--kv-layers", str(m)] + (["--owners", "auto"] if auto else [])
            if merge == "calibrated" or auto:
                cmd += calib_args
            t0 = time.time()
            rep = json.loads(run(cmd))
            row["seconds"][name] = round(time.time() - t0, 1)
            row["owners"][name] = rep["owner_layers"] if not auto else rep["kv_source"]
            r = eval_loss(a.mlkv, out, a.data, out + ".json", a.limit, a.threads, a.ctx)
            row["loss"][name] = r["loss"]
            print(f"{row['config']} {m}x{g} {name}: {r['loss']:.4f} ({row['seconds'][name]} s convert)",
                  file=sys.stderr)
        rows.append(row)

    cols = merges + [f"{x}-auto" for x in ("owner", "calibrated") if x in merges and not a.no_auto]
    print(f"source loss {base['loss']:.4f} ({base['n_tokens']} tokens)\n")
    print("| config | M x G | KV bytes/token | " + " | ".join(cols) + " | auto kv_source |")
    print("|" + "---|" * (4 + len(cols)))
    for r in rows:
        vals = r["loss"]
        best = min(vals.values())
        cells = []
        for c in cols:
            v = vals.get(c)
            cells.append("-" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}"))
        auto = r["owners"].get("calibrated-auto") or r["owners"].get("owner-auto")
        print(f"| {r['config']} | {r['M']} x {r['G']} | {r['kv_bytes']} | " + " | ".join(cells) +
              f" | {','.join(map(str, auto)) if auto else '-'} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"source": base, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
