"""mlkv.plot: the Pareto front against its definition (brute force), the front of real eval
documents (the tiny model and its MLKV conversions), and loss curves from a train log in the
documented format (docs/TRAINING.md), including a cut last line."""

import itertools
import json
import random

import pytest

import mlkv
from mlkv import plot
from conftest import EVAL_DIR

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def brute_front(points, minimize):
    better = (lambda a, b: a < b) if minimize else (lambda a, b: a > b)
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and (better(y2, y) or (y2 == y and x2 < x)))
                        for j, (x2, y2) in enumerate(points) if j != i)
        dup_earlier = any(points[j] == (x, y) for j in range(i))
        if not dominated and not dup_earlier:
            out.append(i)
    return sorted(out, key=lambda i: points[i][0])


@pytest.mark.parametrize("minimize", [True, False])
def test_pareto_front_matches_definition(minimize):
    rng = random.Random(5)
    for trial in range(200):
        pts = [(rng.choice([1, 2, 4, 8, 16]), rng.choice([0.1, 0.2, 0.3, 0.4])) for _ in range(rng.randint(1, 9))]
        assert plot.pareto_front(pts, minimize) == brute_front(pts, minimize), pts


def test_pareto_of_eval_documents(tiny, tiny_path, workdir, tmp_path):
    docs, labels = [mlkv.evaluate(tiny, tasks="piqa", limit=10, eval_dir=EVAL_DIR, bos=True)], ["MHA"]
    for g, m in [(2, 4), (1, 2)]:
        dst = workdir / f"plot_conv_{g}_{m}"
        mlkv.convert(tiny_path, dst, kv_heads=g, kv_layers=m, force=True)
        docs.append(mlkv.evaluate(mlkv.Model.load(dst), tasks="piqa", limit=10, eval_dir=EVAL_DIR, bos=True))
        labels.append(f"G{g} M{m}")
    pts = plot.points_from_evals(docs, "piqa", "acc_norm", labels)
    assert [p["x"] for p in pts] == [d["kv_bytes_per_token_f32"] for d in docs]
    # G2 M4: half the KV heads; G1 M2: a quarter of the heads in half the layers
    assert pts[0]["x"] == 2 * pts[1]["x"] == 8 * pts[2]["x"]
    ax = plot.pareto(pts, minimize=False, ylabel="PIQA acc_norm")
    assert len(ax.collections) == 2  # all points, then the front
    ax.figure.savefig(tmp_path / "pareto.png")
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="no piqa/acc_zz"):
        plot.points_from_evals(docs, "piqa", "acc_zz")


def test_loss_curves(tmp_path):
    log = tmp_path / "train_log.jsonl"
    recs = [{"event": "start", "config": {}}]
    for s in range(1, 41):
        r = {"step": s, "loss": 5.0 / s ** 0.3, "lr": 1e-3, "tokens": 1024 * s}
        if s % 10 == 0:
            r["val_loss"] = 5.1 / s ** 0.3
        recs.append(r)
    log.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 41, "lo')
    d = plot.read_train_log(tmp_path)
    assert d["step"] == list(range(1, 41)) and d["val_step"] == [10, 20, 30, 40]
    assert d["loss"][0] == 5.0 and d["tokens"][-1] == 40 * 1024
    ax = plot.loss_curves([log, d], labels=["a", "b"], smooth=5)
    assert len(ax.lines) == 6  # per run: raw, average, validation
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 2}\nnot json\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        plot.read_train_log(bad)
    assert plot.moving_average([1, 2, 3, 4, 5], 3) == [1.5, 2, 3, 4, 4.5]
