"""Time and memory of one layer's functional-network ICA (funcprune.ica.FunctionalNetworks).

Synthetic data of a layer's shape: ``k`` sparse Laplacian sources planted in Gaussian
time courses plus noise, stored in float32 (or float16) as an activation store would
hold it. Each case runs in a fresh process, so its peak memory is its own:
``traced`` is the peak of Python/numpy allocations during the fit (tracemalloc;
BLAS work buffers are not included), ``max RSS`` the whole process's peak.

Cases
-----
* ``default``: the book's default model, SmolLM2-135M: 1536 channels x 2 voxels
  (act, up) = 3072 voxels per layer, ~8000 tokens, k=32.
* ``paper`` (``--paper-size``): one of the paper's groups at the original scale,
  2 x 11008 = 22016 voxels, 4096 tokens (the paper had 40 texts x 1024 = up to 40960),
  k=128, n_init=10.
* ``real`` (``--store PATH --layer L``): one layer of real activations from a stage-1
  store, where FastICA often needs all ``max_iter`` iterations (no planted truth).
* ``authors`` (``--authors``): the same shapes through a re-implementation of the
  authors' CPU path: z-scoring in float16, rows normalised, randomized SVD with 5 power
  iterations, FastICA (scikit-learn's own whitening) for each seed, sparsest kept,
  z-scored; printed beside ours with the agreement of the two sets of maps.

Real activations may need many more FastICA iterations than planted sources; the
table reports the iterations used (the cost grows linearly with them, up to
``max_iter``).

Usage::

    python benchmarks/bench_ica.py                      # default model's shape
    python benchmarks/bench_ica.py --paper-size --authors
    python benchmarks/bench_ica.py --k 64 --n-init 4 --tokens 4000
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
import tracemalloc
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np


def synthetic_layer(n_tokens: int, n_voxels: int, n_sources: int, dtype: str, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Planted sparse sources.

    Returns
    -------
    X : ndarray of shape (n_tokens, n_voxels), in ``dtype``
    truth : ndarray of shape (n_sources, n_voxels)
        The sources as the z-scored data holds them (each voxel divided by its std).
    """
    rng = np.random.default_rng(seed)
    sources = (rng.laplace(size=(n_sources, n_voxels)) * (rng.random((n_sources, n_voxels)) < 0.1))
    X = rng.normal(size=(n_tokens, n_sources)).astype(np.float32) @ sources.astype(np.float32)
    X += 0.5 * rng.standard_normal(size=X.shape, dtype=np.float32)
    X = X.astype(dtype)
    return X, sources / X.astype(np.float64).std(axis=0)


def authors_like(X: np.ndarray, k: int, n_init: int, seed: int, max_iter: int) -> np.ndarray:
    """The authors' CPU CanICA path, re-implemented for timing (float16 z-scoring)."""
    from sklearn.decomposition import fastica
    from sklearn.utils.extmath import randomized_svd

    # torch half semantics: reductions accumulate in float32, results and every
    # elementwise step are rounded to float16
    X16 = X.astype(np.float16)
    mean = X16.mean(axis=0, dtype=np.float32).astype(np.float16)
    std = X16.std(axis=0, dtype=np.float32, ddof=1).astype(np.float16)
    std[std < np.finfo(np.float16).eps] = 1.0
    signals = ((X16 - mean) / std).astype(np.float64)  # z-scored in float16, then float64
    del X16
    norms = np.sqrt(np.sum(signals ** 2, axis=1))
    norms[norms == 0] = 1
    signals /= norms[:, None]
    components, _, _ = randomized_svd(signals.T, n_components=k, transpose=True,
                                      random_state=seed, n_iter=5)
    seeds = np.random.RandomState(seed).randint(np.iinfo(np.int32).max, size=n_init)
    best, best_sparsity, failed = None, np.inf, 0
    for s in seeds:
        try:  # the authors caught errors per group and dropped the group
            maps = fastica(components.astype(np.float64), whiten="unit-variance", fun="cube",
                           random_state=s, max_iter=max_iter)[2].T
        except ValueError:  # NaN inside scikit-learn (e.g. a whitening direction zeroed)
            failed += 1
            continue
        if not np.isfinite(maps).all():
            failed += 1
            continue
        sparsity = np.abs(maps).sum(axis=1).max()
        if sparsity < best_sparsity:
            best, best_sparsity = maps, sparsity
    if best is None:
        return None, failed
    z = (best - best.mean(axis=1, keepdims=True)) / best.std(axis=1, keepdims=True)
    return z.astype(np.float32), failed


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Fit one layer in this (fresh) process and measure it."""
    from funcprune.ica import FunctionalNetworks

    from funcprune.agreement import match_maps

    from threadpoolctl import threadpool_limits

    if case["threads"]:
        threadpool_limits(case["threads"])
    if case.get("store"):  # real activations: no planted truth
        from funcprune.store import ActivationStore

        X, truth = np.asarray(ActivationStore(case["store"]).layer(case["layer"])), None
    else:
        X, truth = synthetic_layer(case["tokens"], case["voxels"], case["k"], case["dtype"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if case["impl"] == "funcprune":
            fn = FunctionalNetworks(case["k"], n_init=case["n_init"], max_iter=case["max_iter"],
                                    random_state=0, n_jobs=case["n_jobs"], device=case["device"],
                                    progress=False).fit(X)
            maps, record = fn.maps_[0], fn.convergence_[0]
        else:
            maps, failed = authors_like(X, case["k"], case["n_init"], 0, case["max_iter"])
            record = None
    seconds = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    truth_corr = (match_maps(truth, maps)[1] if maps is not None and truth is not None
                  else np.array([np.nan]))
    out = {**case, "seconds": seconds, "traced_mib": traced_peak / 2**20,
           "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "rss_before_mib": rss_before / 1024, "maps": maps,
           "truth_median": float(np.median(truth_corr)), "truth_min": float(truth_corr.min()),
           "n_warnings": sum("did not converge" in str(w.message) for w in caught)}
    if record is not None:
        out.update(steps=record["seconds"], n_iter=record["n_iter"],
                   converged=sum(record["converged"]), failed=record["finite"].count(False))
    else:
        out.update(failed=failed)
    return out


def fmt_row(r: dict[str, Any]) -> str:
    steps = r.get("steps")
    split = (f"{steps['zscore']:7.1f} {steps['svd']:7.1f} {steps['ica']:7.1f}" if steps
             else f"{'-':>7} {'-':>7} {'-':>7}")
    iters = (f"{int(np.median(r['n_iter'])):>5} {r['converged']:>3}/{r['n_init']:<3}"
             if "n_iter" in r else f"{'-':>5} {'-':>7}")
    return (f"{r['name']:<9} {r['impl']:<10} {r['tokens']:>6} {r['voxels']:>6} {r['k']:>4} "
            f"{r['n_init']:>3} {split} {r['seconds']:8.1f} {r['traced_mib']:8.0f} "
            f"{r['rss_before_mib']:6.0f} {r['rss_mib']:8.0f} {iters} "
            f"{r['truth_median']:6.3f} {r['truth_min']:6.3f} {r['failed']:>4}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=32, help="components per layer (default model case)")
    parser.add_argument("--n-init", type=int, default=10, help="FastICA restarts")
    parser.add_argument("--tokens", type=int, default=8000, help="time points (default model case)")
    parser.add_argument("--voxels", type=int, default=3072, help="voxels per layer (default model case)")
    parser.add_argument("--max-iter", type=int, default=300, help="FastICA iterations per restart")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of the synthetic store")
    parser.add_argument("--n-jobs", type=int, default=1, help="parallel FastICA restarts")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the SVD runs")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS/OpenMP threads (threadpoolctl); default: the libraries' own")
    parser.add_argument("--paper-size", action="store_true",
                        help="also run 22016 voxels x --paper-tokens tokens, k=--paper-k")
    parser.add_argument("--paper-tokens", type=int, default=4096)
    parser.add_argument("--paper-k", type=int, default=128)
    parser.add_argument("--store", default=None,
                        help="also run one layer of real activations from this activation store")
    parser.add_argument("--layer", type=int, default=15, help="layer of --store to decompose")
    parser.add_argument("--authors", action="store_true",
                        help="also time the authors' path (float16 z-score) on the same shapes")
    args = parser.parse_args(argv)

    common = {"n_init": args.n_init, "max_iter": args.max_iter, "dtype": args.dtype,
              "n_jobs": args.n_jobs, "device": args.device, "threads": args.threads}
    shapes = [{"name": "default", "tokens": args.tokens, "voxels": args.voxels, "k": args.k}]
    if args.paper_size:
        shapes.append({"name": "paper", "tokens": args.paper_tokens, "voxels": 22016, "k": args.paper_k})
    if args.store:
        from funcprune.store import ActivationStore

        real = ActivationStore(args.store)
        shapes.append({"name": "real", "tokens": real.n_tokens, "k": args.k, "store": args.store,
                       "layer": args.layer, "voxels": len(real.kinds) * real.width(args.layer)})
    impls = ["funcprune"] + (["authors"] if args.authors else [])
    cases = [{**common, **shape, "impl": impl} for shape in shapes for impl in impls]

    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"input dtype {args.dtype}, max_iter {args.max_iter}, n_jobs {args.n_jobs}, "
          f"SVD on {args.device}, BLAS threads {args.threads or 'default'}, load average "
          f"{os.getloadavg()[0]:.1f} (timings scale with other work on the machine)")
    header = (f"{'case':<9} {'impl':<10} {'tokens':>6} {'voxels':>6} {'k':>4} {'ini':>3} "
              f"{'zscore':>7} {'svd':>7} {'ica':>7} {'s/layer':>8} {'traced':>8} {'RSS0':>6} {'maxRSS':>8} "
              f"{'iters':>5} {'conv':>7} {'truth':>6} {'min':>6} {'NaN':>4}")
    print(header + "\n" + "-" * len(header))
    print("seconds; MiB (traced: numpy peak during the fit; RSS0/maxRSS: process peak before/after\n"
          "the fit, imports and data included); iters: median FastICA iterations; conv: restarts\n"
          "converged; truth/min: median/min matched |corr| with the planted sources; NaN: restarts\n"
          "that failed with NaN/inf")
    results = []
    for case in cases:
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            result = pool.submit(run_case, case).result()
        results.append(result)
        print(fmt_row(result), flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")

    if args.authors:
        from funcprune.agreement import match_maps

        print("\nagreement of the two implementations' maps (Hungarian-matched |corr|):")
        for shape in shapes:
            ours, theirs = (next(r["maps"] for r in results if r["name"] == shape["name"]
                                 and r["impl"] == impl) for impl in ("funcprune", "authors"))
            if theirs is None:
                print(f"  {shape['name']:<9} the authors' path failed in every restart")
                continue
            _, corr = match_maps(ours, theirs)
            print(f"  {shape['name']:<9} median {np.median(corr):.3f}, min {corr.min():.3f}, "
                  f"> 0.9: {int((corr > 0.9).sum())}/{len(corr)}")


if __name__ == "__main__":
    sys.exit(main())
