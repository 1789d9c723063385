"""Speed of pruned models: dense vs MLP-pruned at 10/20/30% of all parameters, against the FLOP ratio.

Channels are chosen by the random scorer (speed does not depend on which channels go), with the
seed's protected layers (first three, last two) and global allocation. For every model: prefill
latency (batch 1 x 512 tokens), greedy decode ms/token with the KV cache, weight memory and the
peak memory measure of :func:`funcprune.evaluate.measure_latency`, and the theoretical speed-up
``FLOPs(dense) / FLOPs(pruned)`` per token (attention scores over an average context of half the
prompt included). ``realised/theoretical`` is the measured speed-up divided by that ratio: 1.0
means pruning bought all the speed its FLOPs promise.

    FUNCPRUNE_CACHE=.cache python benchmarks/bench_prune.py [--ratios 0.1 0.2 0.3] [--prefill 512]
        [--decode 16] [--repeats 3] [--device cpu] [--json results.json]

About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("FUNCPRUNE_CACHE", str(Path(__file__).resolve().parents[1] / ".cache"))

import torch  # noqa: E402

from funcprune import load_model  # noqa: E402
from funcprune.evaluate import count_parameters, flops_per_token, measure_latency  # noqa: E402
from funcprune.plan import select_channels  # noqa: E402
from funcprune.prune import prune  # noqa: E402
from funcprune.scoring import RandomScorer  # noqa: E402


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters (tied tensors once)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def peak(row: dict) -> str:
    """Peak memory where it is meaningful: CUDA's allocator peak; on the CPU the process's
    high-water RSS was already set while loading and copying the models, so '-'."""
    return f"{row['peak_mb']:.1f}" if row["memory_kind"] == "cuda_max_allocated" else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    loaded = load_model(args.model)
    dense = loaded.model.to(args.device)
    scorer = RandomScorer(seed=0)
    scores = scorer(dense)
    models = [("dense", 0.0, dense)]
    for ratio in args.ratios:
        plan = select_channels(scores, dense, ratio=ratio, method=scorer.name, settings=scorer.settings,
                               source=loaded.source)
        models.append((f"random {ratio:.0%}", plan.ratio_reached,
                       prune(copy.deepcopy(dense), plan, revision=loaded.source["revision"])))

    rows = []
    context = args.prefill // 2
    for name, reached, model in models:
        timing = measure_latency(model, prefill_len=args.prefill, decode_steps=args.decode,
                                 repeats=args.repeats, warmup=1)
        rows.append({"model": name, "removed": reached, "params": count_parameters(model)["total"],
                     "flops_per_token": flops_per_token(model, attention_context=context),
                     "prefill_ms": timing["prefill_ms"], "decode_ms_per_token": timing["decode_ms_per_token"],
                     "weight_mb": weight_bytes(model) / 2**20,
                     "peak_mb": timing["peak_memory_bytes"] / 2**20, "memory_kind": timing["memory_kind"]})
    base = rows[0]
    print(f"model={args.model} device={args.device} dtype={next(dense.parameters()).dtype} "
          f"threads={torch.get_num_threads()} prefill=1x{args.prefill} decode={args.decode} tokens "
          f"repeats={args.repeats} memory={base['memory_kind']}")
    header = (f"{'model':<12}{'removed':>8}{'params M':>9}{'FLOP x':>8}{'prefill ms':>11}{'x':>6}"
              f"{'real/theo':>10}{'decode ms':>10}{'x':>6}{'real/theo':>10}{'weights MB':>11}{'peak MB':>9}")
    print(header)
    for row in rows:
        theoretical = base["flops_per_token"] / row["flops_per_token"]
        prefill_x = base["prefill_ms"] / row["prefill_ms"]
        decode_x = base["decode_ms_per_token"] / row["decode_ms_per_token"]
        row.update(theoretical_speedup=theoretical, prefill_speedup=prefill_x, decode_speedup=decode_x,
                   prefill_realised_fraction=prefill_x / theoretical, decode_realised_fraction=decode_x / theoretical)
        print(f"{row['model']:<12}{row['removed']:>8.3f}{row['params'] / 1e6:>9.1f}{theoretical:>8.3f}"
              f"{row['prefill_ms']:>11.1f}{prefill_x:>6.2f}{prefill_x / theoretical:>10.2f}"
              f"{row['decode_ms_per_token']:>10.2f}{decode_x:>6.2f}{decode_x / theoretical:>10.2f}"
              f"{row['weight_mb']:>11.1f}{peak(row):>9}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
