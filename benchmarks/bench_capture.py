"""Cost of capture: (forward with hooks + streaming every layer to disk) / (plain forward).

Both are measured side by side in one run, on the same batches of the default model. Passes are
paired and run in ABBA order (plain, capture, capture, plain, ...), so drifts in machine speed hit
both alike; the ratio reported is the median of the per-pair ratios, with its quartiles, and the CPU
time stolen by the hypervisor during the run (a shared virtual machine's noise) is printed too.
Target: ratio <= 1.10.

    python benchmarks/bench_capture.py [--n-texts 16] [--max-tokens 512] [--batch-size 4] [--pairs 8]
                                       [--dtype float32] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from funcprune import capture_activations, load_model
from funcprune.adapters import layer_widths
from funcprune.capture import tokenize_batches
from funcprune.data import load_texts
from funcprune.store import ActivationWriter


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to others so far (Linux ``/proc/stat``; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of rest after deleting a store")
    parser.add_argument("--out", default=None, help="directory for the store (default: a temporary one)")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    texts = [t.text for t in load_texts("wiki", "calibration", n_texts=args.n_texts)]
    batches = list(tokenize_batches(tokenizer, texts, batch_size=args.batch_size, max_tokens=args.max_tokens))
    n_tokens = sum(int(b["attention_mask"].sum()) for _, b in batches)
    writers: list[ActivationWriter] = []
    original_init = ActivationWriter.__init__

    def remember(self: ActivationWriter, *a: object, **k: object) -> None:
        original_init(self, *a, **k)  # type: ignore[arg-type]
        writers.append(self)

    ActivationWriter.__init__ = remember  # type: ignore[method-assign]

    def settle() -> None:
        """Let the disk finish freeing the deleted store (ext4 may discard its blocks) before timing again."""
        if hasattr(os, "sync"):
            os.sync()
        time.sleep(args.settle)

    def plain() -> float:
        """Tokenise and run the texts, as capture does, with no hooks and no store."""
        start = time.perf_counter()
        with torch.inference_mode():
            for _, batch in tokenize_batches(tokenizer, texts, batch_size=args.batch_size,
                                             max_tokens=args.max_tokens):
                model(**batch, use_cache=False)
        return time.perf_counter() - start

    def capture() -> float:
        """One whole capture_activations call into a fresh store (deleting it is not timed)."""
        out = Path(tempfile.mkdtemp(prefix="funcprune-bench-", dir=args.out))
        try:
            start = time.perf_counter()
            capture_activations(model, tokenizer, texts, out / "store", batch_size=args.batch_size,
                                max_tokens=args.max_tokens, dtype=args.dtype, progress=False)
            return time.perf_counter() - start
        finally:
            shutil.rmtree(out)
            settle()

    plain()  # warm-up
    capture()
    stolen = stolen_seconds()
    started = time.perf_counter()
    times: dict[str, list[float]] = {"plain forward": [], "capture + stream": []}
    for pair in range(args.pairs):
        order = ("plain forward", "capture + stream") if pair % 2 == 0 else ("capture + stream", "plain forward")
        for name in order:
            times[name].append(plain() if name == "plain forward" else capture())
    stolen = stolen_seconds() - stolen
    elapsed = time.perf_counter() - started

    in_order = [c / p for c, p in zip(times["capture + stream"], times["plain forward"])]
    ratios = sorted(in_order)
    ratio = statistics.median(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratio, ratio, ratio)
    kinds = 2  # capture_activations' default kinds: act and up
    megabytes = n_tokens * sum(layer_widths(model).values()) * kinds * (4 if args.dtype == "float32" else 2) / 1e6
    io = writers[-1].bytes_written
    print(f"model={args.model} tokens={n_tokens} batches={len(batches)}x{args.batch_size} "
          f"max_tokens={args.max_tokens} dtype={args.dtype} threads={torch.get_num_threads()} pairs={args.pairs}")
    print(f"{'pass':<18}{'median s':>10}{'tokens/s':>10}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<18}{med:>10.2f}{n_tokens / med:>10.0f}")
    print(f"written per capture: {megabytes:.0f} MB, {100 * io['direct'] / max(1, sum(io.values())):.0f}% "
          "by direct I/O")
    print(f"CPU time stolen by the hypervisor during the run: {stolen:.1f} s of {elapsed:.0f} s")
    print(f"per-pair ratios, in run order: {' '.join(f'{r:.3f}' for r in in_order)}")
    print(f"capture/plain ratio: {ratio:.3f} (quartiles {q1:.3f}-{q3:.3f}; target <= 1.10: "
          f"{'met' if ratio <= 1.10 else 'NOT met'})")


if __name__ == "__main__":
    main()
