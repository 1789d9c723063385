"""Cost of capture: (forward with hooks + streaming every layer to disk) / (plain forward).

Both are measured side by side in one run, on the same batches of the default model, alternating
plain and capture passes so that machine noise hits both alike. Target: ratio <= 1.10.

    python benchmarks/bench_capture.py [--n-texts 16] [--max-tokens 512] [--batch-size 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from funcprune import capture_activations, load_model
from funcprune.capture import tokenize_batches
from funcprune.data import load_texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    texts = [t.text for t in load_texts("wiki", "calibration", n_texts=args.n_texts)]
    batches = list(tokenize_batches(tokenizer, texts, batch_size=args.batch_size, max_tokens=args.max_tokens))
    n_tokens = sum(int(b["attention_mask"].sum()) for _, b in batches)

    def plain() -> None:
        with torch.inference_mode():
            for _, batch in batches:
                model(**batch, use_cache=False)

    def capture() -> None:
        out = Path(tempfile.mkdtemp(prefix="funcprune-bench-"))
        try:
            capture_activations(model, tokenizer, texts, out / "store", batch_size=args.batch_size,
                                max_tokens=args.max_tokens, dtype=args.dtype, progress=False)
        finally:
            shutil.rmtree(out)

    plain()  # warm-up
    times: dict[str, list[float]] = {"plain forward": [], "capture + stream": []}
    for _ in range(args.repeats):
        for name, fn in (("plain forward", plain), ("capture + stream", capture)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["plain forward"])
    print(f"model={args.model} tokens={n_tokens} batches={len(batches)}x{args.batch_size} "
          f"max_tokens={args.max_tokens} dtype={args.dtype} threads={torch.get_num_threads()}")
    print(f"{'pass':<18}{'median s':>10}{'tokens/s':>10}{'ratio':>8}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<18}{med:>10.2f}{n_tokens / med:>10.0f}{med / base:>8.3f}")
    ratio = statistics.median(times["capture + stream"]) / base
    print(f"capture/plain ratio: {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
