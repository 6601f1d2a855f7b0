"""mlkv: memory-efficient transformer decoding with multi-layer KV sharing (MLKV), from Python.

    import mlkv
    model = mlkv.Model.load("path/to/model")            # HF folder or llama2.c .bin
    model.score(model.encode("Once upon a time"))        # float32 [n - 1] log-probs (nats)
    model.generate(["Once upon a time"], max_tokens=32)  # [{"tokens", "text", "finish_reason"}]
    mlkv.convert("pythia", "pythia-mlkv", kv_heads=1, kv_layers=2)
    mlkv.evaluate(model, tasks=["piqa"], limit=100)      # the `mlkv eval --json` document

Errors: ValueError for bad input, OSError (FileNotFoundError) for files, with the engine's
messages. docs/PYTHON.md has the details; `python -m mlkv.lm_eval` runs lm-evaluation-harness with
the `mlkv` model type.
"""

from ._mlkv import Tokenizer
from .model import Model
from .tools import convert, evaluate

__version__ = "0.1.0"
__all__ = ["Model", "Tokenizer", "convert", "evaluate", "__version__"]
