#!/usr/bin/env python3
"""Batch-1 decode and prefill of a Pythia-160M-geometry model against the memory-bandwidth bound,
the weight formats alternating round by round, each `mlkv bench` run measuring the machine's read
bandwidth right before and after its own timing. Prints a markdown table of medians for
docs/BENCHMARKS.md.

    bench/decode_report.py --mlkv build/bin/mlkv [--rounds 5] [--threads 2] [--weights f32,f16,bf16,q8_0]

Side by side with llama.cpp (built beside the project for the measurement, never committed): give
--model, a Hugging Face GPT-NeoX folder that mlkv loads, and --llama-bench with --gguf, a pattern
whose {w} is replaced by the weight format, naming the same model converted to GGUF
(llama.cpp's convert_hf_to_gguf.py --outtype f32|f16|q8_0). llama-bench then runs in the same
rounds: 64 tokens generated at a depth of 128 (-p 0 -n 64 -d 128 -r 5), mlkv's setting.
--llama-args adds llama-bench options; where one lists several values (e.g. "--repack 0,1"),
llama-bench runs each in turn and the fastest counts.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess


def run(mlkv, model, weights, threads, gen):
    cmd = [mlkv, "bench", *(["--random", "pythia-160m"] if not model else [model]), "--weights", weights,
           "--reps", "5", "--gen", str(gen), "--json"]
    if threads:
        cmd += ["--threads", str(threads)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def run_llama(llama_bench, gguf, threads, gen, extra):
    cmd = [llama_bench, "-m", gguf, "-p", "0", "-n", str(gen), "-d", "128", "-r", "5", "-o", "json",
           *shlex.split(extra)]
    if threads:
        cmd += ["-t", str(threads)]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return max(o["avg_ts"] for o in out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--model", default="", help="a model folder (default: random Pythia-160M weights)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--weights", default="f32,f16", help="comma-separated weight formats")
    ap.add_argument("--llama-bench", default="", help="llama.cpp's llama-bench binary")
    ap.add_argument("--gguf", default="", help="GGUF path pattern with {w}, e.g. /tmp/p160-{w}.gguf")
    ap.add_argument("--llama-args", default="", help='more llama-bench options, e.g. "--repack 0,1"')
    a = ap.parse_args()
    formats = a.weights.split(",")
    res = {w: [] for w in formats}
    llama = {w: [] for w in formats if a.llama_bench and os.path.exists(a.gguf.format(w=w))}
    for _ in range(a.rounds):
        for w in formats:
            res[w].append(run(a.mlkv, a.model, w, a.threads, a.gen))
            if w in llama:
                llama[w].append(run_llama(a.llama_bench, a.gguf.format(w=w), a.threads, a.gen, a.llama_args))
    head = "| weights | MB read per step | read GB/s | bound tok/s | decode tok/s | % of bound | prefill tok/s (128) | runs (% of bound) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---|"
    if llama:
        head += " llama.cpp tok/s | mlkv / llama.cpp |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    for w, rs in res.items():
        med = lambda k: statistics.median(r[k] for r in rs)
        mb = (rs[0]["weight_bytes_per_step"] + rs[0]["kv_read_bytes_per_step"]) / 1e6
        fr = [100 * r["fraction_of_bound"] for r in rs]
        line = (f"| {w} | {mb:.1f} | {med('read_bandwidth_gb_s'):.1f} | {med('bound_steps_s'):.1f} | "
                f"{med('decode_tok_s'):.1f} | {statistics.median(fr):.1f}% | {med('prefill_tok_s'):.0f} | "
                f"{', '.join(f'{x:.0f}' for x in fr)} |")
        if llama:
            if w in llama:
                lt = statistics.median(llama[w])
                line += f" {lt:.1f} | {med('decode_tok_s') / lt:.2f} |"
            else:
                line += " | |"
        print(line)
    print(f"\nthreads {res[formats[0]][0]['threads']}, {a.rounds} rounds alternating {' / '.join(formats)}, "
          f"each run the median of 5 repetitions of {a.gen} decode steps after a 128-token prefill")


if __name__ == "__main__":
    main()
