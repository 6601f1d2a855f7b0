#!/usr/bin/env python3
"""lm-evaluation-harness (PyPI `lm_eval`) through `mlkv serve`: its `local-completions` model (echo +
logprobs over the OpenAI completions API, the Hugging Face tokenizer of the model, batches of token-id
prompts) on PIQA and ARC-Easy from the shipped JSONL (task files written here, with the prompts
docs/EVAL.md maps llm-foundry's queries to) must give exactly the acc and acc_norm of `mlkv eval` on
the same model and items.

The model is a random GPT-NeoX with the GPT-NeoX-20B tokenizer (random, so no answer is obvious and
ties are unlikely; what is compared is the scoring, not the model).

usage: test_lm_eval.py --mlkv build/bin/mlkv --shared ../shared --workdir DIR [--limit 200]
Exit 77 (skipped) without lm_eval (scripts/python_env.sh installs it into .venv) or the shared data.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from serve_util import start_server, stop_server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "reference", "mlkv_ref.py")

TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files: {path}
test_split: train
output_type: multiple_choice
doc_to_text: "{{{{query.rstrip()}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlkv", required=True)
    ap.add_argument("--shared", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--limit", type=int, default=200)
    a = ap.parse_args()
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("SKIP: lm_eval is not installed (scripts/python_env.sh makes .venv with it)")
        sys.exit(77)
    eval_dir = os.path.join(a.shared, "data", "eval")
    tok_json = os.path.join(a.shared, "data", "tokenizers", "gpt-neox-20b", "tokenizer.json")
    if not os.path.exists(os.path.join(eval_dir, "piqa.jsonl")) or not os.path.exists(tok_json):
        print(f"SKIP: no shared data at {a.shared}")
        sys.exit(77)
    os.makedirs(a.workdir, exist_ok=True)
    model = os.path.join(a.workdir, "neox")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.run([sys.executable, REF, "make", "--family", "gpt_neox", "--layers", "2", "--embd", "64",
                        "--heads", "4", "--kv-heads", "2", "--kv-layers", "1", "--vocab", "50277", "--ctx", "512",
                        "--out", model], check=True, capture_output=True)
    shutil.copy(tok_json, os.path.join(model, "tokenizer.json"))
    tasks_dir = os.path.join(a.workdir, "tasks")
    os.makedirs(tasks_dir, exist_ok=True)
    tasks = {"piqa": "mlkv_piqa", "arc_easy": "mlkv_arc_easy"}
    for f, name in tasks.items():
        with open(os.path.join(tasks_dir, name + ".yaml"), "w") as out:
            out.write(TASK.format(name=name, path=os.path.join(eval_dir, f + ".jsonl")))

    # mlkv eval: the reference numbers.
    want = {}
    r = subprocess.run([a.mlkv, "eval", model, *[os.path.join(eval_dir, f + ".jsonl") for f in tasks],
                        "--limit", str(a.limit), "--json", os.path.join(a.workdir, "mlkv_eval.json")],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit(1)
    res = json.load(open(os.path.join(a.workdir, "mlkv_eval.json")))["results"]
    for f in tasks:
        want[f] = (res[f]["acc"], res[f]["acc_norm"], res[f]["n"])

    srv, port = start_server(a.mlkv, [model, "--parallel", "16", "--model-name", "neox"])
    if port is None:
        print("the server did not start")
        sys.exit(1)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HOME=os.path.join(a.workdir, "hf_home"), TOKENIZERS_PARALLELISM="false")
    out_dir = os.path.join(a.workdir, "lm_eval_out")
    t0 = time.time()
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
           f"model=neox,base_url=http://127.0.0.1:{port}/v1/completions,tokenizer={model},"
           "tokenizer_backend=huggingface,num_concurrent=4,max_retries=1,max_length=512",
           "--batch_size", "8",
           "--tasks", ",".join(tasks.values()), "--include_path", tasks_dir, "--limit", str(a.limit),
           "--output_path", out_dir]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    stop_server(srv)
    print(f"lm_eval ran {time.time() - t0:.0f} s")
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-5000:])
        print("FAIL lm_eval did not run")
        sys.exit(1)
    found = []
    for root, _, files in os.walk(out_dir):
        found += [os.path.join(root, f) for f in files if f.startswith("results") and f.endswith(".json")]
    got = json.load(open(sorted(found)[-1]))["results"]
    failures = 0
    for f, name in tasks.items():
        g = got[name]
        acc, acc_norm = g["acc,none"], g["acc_norm,none"]
        ok = acc == want[f][0] and acc_norm == want[f][1]
        print(("ok   " if ok else "FAIL ") + f"{f}: lm_eval via mlkv serve acc {acc:.4f} acc_norm {acc_norm:.4f}; "
              f"mlkv eval acc {want[f][0]:.4f} acc_norm {want[f][1]:.4f} (n={want[f][2]})")
        failures += not ok
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
