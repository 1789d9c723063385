"""Cost of capture: (forward with hooks + streaming every layer to disk) / (plain forward).

Measured side by side in one run, on the same batches of the default model, against two plain
baselines with no hooks and no store:

* ``plain forward``: the model's whole forward pass, LM head included (the issue's baseline);
* ``plain, same layers``: the forward pass stopped after the last captured layer, as capture stops
  it (:func:`funcprune.capture.stop_after_layer`): the same work minus hooks and streaming, so
  ``capture / plain, same layers`` is what the hooks, copies, checks and writes themselves cost.

Passes run in rounds, in the order ``A B C`` then ``C B A`` (a linear drift of machine speed hits
all alike); each ratio reported is the median of the per-round ratios, with its quartiles. The CPU
time stolen by the hypervisor and the page faults of each pass (a forward pass's fresh temporaries
cost the kernel a fault and a zeroing per 4 KiB page; how many, the C allocator's state decides)
are printed too, since they are the noise of a shared virtual machine. Target: capture / plain
forward <= 1.10.

    python benchmarks/bench_capture.py [--n-texts 16] [--max-tokens 512] [--batch-size 4] [--rounds 8]
                                       [--dtype float32] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from funcprune import capture_activations, load_model
from funcprune._io import DIGEST_NAMES, new_digest
from funcprune.adapters import layer_widths
from funcprune.capture import StopForward, stop_after_layer, tokenize_batches
from funcprune.data import load_texts
from funcprune.store import STORE_DIGEST

PLAIN, SAME_LAYERS, CAPTURE = "plain forward", "plain, same layers", "capture + stream"


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to others so far (Linux ``/proc/stat``; 0 elsewhere)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def digest_speeds(n_bytes: int = 256 << 20) -> dict[str, float]:
    """GB/s of every digest a file record may carry, on the same ``n_bytes`` of random bytes, in 1 MiB updates."""
    data = memoryview(os.urandom(n_bytes))
    speeds = {}
    for algorithm in DIGEST_NAMES:
        digest = new_digest(algorithm)
        start = time.perf_counter()
        for offset in range(0, n_bytes, 1 << 20):
            digest.update(data[offset:offset + (1 << 20)])
        digest.hexdigest()
        speeds[algorithm] = n_bytes / (time.perf_counter() - start) / 1e9
    return speeds


def median_and_quartiles(values: list[float]) -> tuple[float, float, float]:
    """Median and first and third quartiles (all three the value itself for a single one)."""
    med = statistics.median(values)
    if len(values) < 2:
        return med, med, med
    q1, _, q3 = statistics.quantiles(values, n=4)
    return med, q1, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-texts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of rest after deleting a store")
    parser.add_argument("--out", default=None, help="directory for the store (default: a temporary one)")
    args = parser.parse_args()

    model, tokenizer = loaded = load_model(args.model)
    texts = [t.text for t in load_texts("wiki", "calibration", n_texts=args.n_texts)]
    batches = list(tokenize_batches(tokenizer, texts, batch_size=args.batch_size, max_tokens=args.max_tokens))
    n_tokens = sum(int(b["attention_mask"].sum()) for _, b in batches)
    last_layer = len(layer_widths(model)) - 1  # capture_activations captures every layer by default

    def settle() -> None:
        """Let the disk finish freeing the deleted store (ext4 may discard its blocks) before timing again."""
        if hasattr(os, "sync"):
            os.sync()
        time.sleep(args.settle)

    def plain(stop: bool) -> float:
        """Tokenise and run the texts, as capture does, with no hooks and no store."""
        start = time.perf_counter()
        with torch.inference_mode(), stop_after_layer(model, last_layer) if stop else contextlib.nullcontext():
            for _, batch in tokenize_batches(tokenizer, texts, batch_size=args.batch_size,
                                             max_tokens=args.max_tokens):
                with contextlib.suppress(StopForward):
                    model(**batch, use_cache=False)
        return time.perf_counter() - start

    def capture() -> float:
        """One whole capture_activations call into a fresh store (deleting it is not timed)."""
        out = Path(tempfile.mkdtemp(prefix="funcprune-bench-", dir=args.out))
        try:
            start = time.perf_counter()
            capture_activations(model, tokenizer, texts, out / "store", batch_size=args.batch_size,
                                max_tokens=args.max_tokens, dtype=args.dtype, progress=False, source=loaded.source)
            return time.perf_counter() - start
        finally:
            shutil.rmtree(out)
            settle()

    passes: dict[str, Callable[[], float]] = {PLAIN: lambda: plain(False), SAME_LAYERS: lambda: plain(True),
                                              CAPTURE: capture}
    for run in passes.values():  # warm-up
        run()
    stolen = stolen_seconds()
    started = time.perf_counter()
    times: dict[str, list[float]] = {name: [] for name in passes}
    faults: dict[str, list[int]] = {name: [] for name in passes}
    for round_ in range(args.rounds):
        for name in (list(passes) if round_ % 2 == 0 else list(reversed(passes))):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[name].append(passes[name]())
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    stolen = stolen_seconds() - stolen
    elapsed = time.perf_counter() - started

    kinds = 2  # capture_activations' default kinds: act and up
    megabytes = n_tokens * sum(layer_widths(model).values()) * kinds * (4 if args.dtype == "float32" else 2) / 1e6
    print(f"model={args.model} tokens={n_tokens} batches={len(batches)}x{args.batch_size} "
          f"max_tokens={args.max_tokens} dtype={args.dtype} threads={torch.get_num_threads()} rounds={args.rounds}")
    print(f"{'pass':<20}{'median s':>10}{'tokens/s':>10}{'page faults':>13}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<20}{med:>10.2f}{n_tokens / med:>10.0f}{statistics.median(faults[name]):>13.0f}")
    speeds = digest_speeds()
    print(f"written per capture: {megabytes:.0f} MB, hashed with {DIGEST_NAMES[STORE_DIGEST]} by the writer's thread; "
          + ", ".join(f"{DIGEST_NAMES[a]} {v:.2f} GB/s ({megabytes / 1e3 / v:.2f} s per capture)"
                      for a, v in speeds.items()))
    print(f"CPU time stolen by the hypervisor during the run: {stolen:.1f} s of {elapsed:.0f} s")
    for baseline, target in ((SAME_LAYERS, None), (PLAIN, 1.10)):
        in_order = [c / p for c, p in zip(times[CAPTURE], times[baseline])]
        med, q1, q3 = median_and_quartiles(in_order)
        print(f"capture / {baseline}, per round: {' '.join(f'{r:.3f}' for r in in_order)}")
        verdict = "" if target is None else f"; target <= {target:.2f}: {'met' if med <= target else 'NOT met'}"
        print(f"capture / {baseline}: {med:.3f} (quartiles {q1:.3f}-{q3:.3f}{verdict})")


if __name__ == "__main__":
    main()
