#!/usr/bin/env python3
"""Batch-1 decode and prefill of a random Pythia-160M-geometry model against the memory-bandwidth
bound, f32 and f16 weights alternating, each `mlkv bench` run measuring the machine's read
bandwidth right before its own timing. Prints a markdown table of medians for docs/BENCHMARKS.md.

    bench/decode_report.py --mlkv build/bin/mlkv [--rounds 5] [--threads 2]
"""
import argparse
import json
import statistics
import subprocess


def run(mlkv, weights, threads, gen):
    cmd = [mlkv, "bench", "--random", "pythia-160m", "--weights", weights, "--reps", "5", "--gen",
           str(gen), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gen", type=int, default=64)
    a = ap.parse_args()
    res = {"f32": [], "f16": []}
    for _ in range(a.rounds):
        for w in res:
            res[w].append(run(a.mlkv, w, a.threads, a.gen))
    print("| weights | MB read per step | read GB/s | bound tok/s | decode tok/s | % of bound | prefill tok/s (128) | runs (% of bound) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for w, rs in res.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        mb = (rs[0]["weight_bytes_per_step"] + rs[0]["kv_read_bytes_per_step"]) / 1e6
        fr = [100 * r["fraction_of_bound"] for r in rs]
        print(f"| {w} | {mb:.1f} | {med('read_bandwidth_gb_s'):.1f} | {med('bound_steps_s'):.1f} | "
              f"{med('decode_tok_s'):.1f} | {statistics.median(fr):.1f}% | {med('prefill_tok_s'):.0f} | "
              f"{', '.join(f'{x:.0f}' for x in fr)} |")
    print(f"\nthreads {rs[0]['threads']}, {a.rounds} rounds alternating f32 / f16, each run the median of 5 "
          f"repetitions of {a.gen} decode steps after a 128-token prefill")


if __name__ == "__main__":
    main()
