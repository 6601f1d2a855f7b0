"""Plots for notebooks and the reproduction scripts: the KV-memory / quality Pareto front of a set
of models (MHA, GQA, MQA, MLKV variants) and training loss curves.

Needs matplotlib (`pip install .[plot]`); the data helpers (pareto_front, points_from_evals,
read_train_log) do not. Every plotting function draws on `ax` (a new figure when None) and
returns the Axes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union


def pareto_front(points: Sequence[Tuple[float, float]], minimize: bool = True) -> List[int]:
    """Indices of the points (x = cost, e.g. KV bytes per token; y = metric) that no other point
    beats: none with x <= and y better-or-equal with one of them strictly. minimize: lower y is
    better (loss, perplexity); False: higher is better (accuracy). Sorted by x."""
    sign = 1.0 if minimize else -1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        y = sign * points[i][1]
        if y < best:
            front.append(i)
            best = y
    return front


def points_from_evals(docs: Iterable[Mapping[str, Any]], input_name: str, metric: str,
                      labels: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Points from `mlkv eval --json` / mlkv.evaluate documents: x = the model's f32 KV bytes per
    token, y = results[input_name][metric]; label = labels[i] or the document's config line."""
    out = []
    for i, d in enumerate(docs):
        res = d["results"]
        if input_name not in res or metric not in res[input_name]:
            raise ValueError(f"document {i} has no {input_name}/{metric} result "
                             f"(inputs: {sorted(res)})")
        out.append({"x": float(d["kv_bytes_per_token_f32"]), "y": float(res[input_name][metric]),
                    "label": labels[i] if labels else d.get("config", str(i))})
    return out


def pareto(results: Sequence[Mapping[str, Any]], x: str = "x", y: str = "y", label: str = "label",
           minimize: bool = True, ax=None, xlabel: str = "KV cache bytes per token",
           ylabel: Optional[str] = None, log_x: bool = True, title: Optional[str] = None):
    """Scatter of results (dicts with x, y and label keys, e.g. from points_from_evals, or rows
    of one's own) with the Pareto front drawn as a step line and its points labelled in bold.
    Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if not results:
        raise ValueError("pareto: no results to plot")
    pts = [(float(r[x]), float(r[y])) for r in results]
    front = pareto_front(pts, minimize)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="0.6", zorder=2)
    fx, fy = [pts[i][0] for i in front], [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="C0", zorder=1)
    ax.scatter(fx, fy, color="C0", zorder=3)
    on_front = set(front)
    for i, r in enumerate(results):
        ax.annotate(str(r.get(label, i)), pts[i], textcoords="offset points", xytext=(4, 4),
                    fontsize=8, fontweight="bold" if i in on_front else "normal")
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or y)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return ax


def read_train_log(path: Union[str, os.PathLike]) -> Dict[str, List[float]]:
    """A run's train_log.jsonl (or its --out folder) as lists: step, loss, tokens, lr, and the
    steps with a validation loss (val_step, val_loss). A cut last line (a killed run) is dropped,
    as `mlkv plot` does; any other bad line raises ValueError naming the line."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "train_log.jsonl")
    out: Dict[str, List[float]] = {k: [] for k in ("step", "loss", "tokens", "lr", "val_step", "val_loss")}
    with open(p, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if all(not rest.strip() for rest in lines[n:]):
                break  # the last line of a killed run
            raise ValueError(f"{p}:{n}: not a JSON line") from None
        if "step" not in rec:
            continue
        if isinstance(rec.get("loss"), (int, float)):
            out["step"].append(float(rec["step"]))
            out["loss"].append(float(rec["loss"]))
            out["tokens"].append(float(rec.get("tokens", math.nan)))
            out["lr"].append(float(rec.get("lr", math.nan)))
        if isinstance(rec.get("val_loss"), (int, float)):
            out["val_step"].append(float(rec["step"]))
            out["val_loss"].append(float(rec["val_loss"]))
    return out


def moving_average(values: Sequence[float], window: int) -> List[float]:
    """Centred moving average (the window shrinks at the ends)."""
    h = max(0, window // 2)
    return [sum(values[max(0, i - h):i + h + 1]) / len(values[max(0, i - h):i + h + 1])
            for i in range(len(values))]


def loss_curves(runs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Mapping[str, Any]],
                labels: Optional[Sequence[str]] = None, smooth: int = 0, ax=None,
                log_x: bool = False, title: Optional[str] = None):
    """Train loss (thin; with smooth > 1 also its centred moving average) and validation loss
    (markers) against the step for one or several runs: paths of train_log.jsonl files or run
    folders, or dicts from read_train_log. Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt

    if isinstance(runs, (str, os.PathLike, dict)):
        runs = [runs]
    logs = [r if isinstance(r, dict) else read_train_log(r) for r in runs]
    names = list(labels) if labels else [
        os.fspath(r) if not isinstance(r, dict) else f"run {i}" for i, r in enumerate(runs)]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for i, (log, name) in enumerate(zip(logs, names)):
        color = f"C{i % 10}"
        alpha = 0.35 if smooth > 1 else 1.0
        ax.plot(log["step"], log["loss"], color=color, alpha=alpha, lw=1,
                label=f"{name} train" if smooth <= 1 else None)
        if smooth > 1:
            ax.plot(log["step"], moving_average(log["loss"], smooth), color=color, lw=1.5,
                    label=f"{name} train (avg {smooth})")
        if log["val_step"]:
            ax.plot(log["val_step"], log["val_loss"], "o--", color=color, ms=4, label=f"{name} val")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return ax
