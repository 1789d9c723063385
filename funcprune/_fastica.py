"""The numerical steps of one functional-network fit: z-scoring, randomized SVD, whitening, FastICA.

Pure functions on arrays, called by :class:`funcprune.ica.FunctionalNetworks` for every
layer (or window) and group, in this order:

1. :func:`zscore_time_in_place`: every voxel z-scored over time (constant voxels become 0);
2. the spatial singular vectors (scikit-learn's ``randomized_svd`` on the CPU,
   :func:`_randomized_svd_torch` on a GPU) and their :func:`_numerical_rank`;
3. :func:`_whiten`: unit-variance PCA whitening, done here rather than by scikit-learn;
4. :func:`_fastica_restart`: one FastICA run from one seed with the fast :func:`_cube`,
   its warnings captured and its sparsity measured.

Nothing here knows about layers, groups, seeds' derivation or the selection among
restarts: those are the estimator's, in :mod:`funcprune.ica`.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.decomposition import FastICA
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

__all__ = ["zscore_time_in_place"]

#: A voxel whose standard deviation over time is below this (relative to its mean,
#: or absolute when the mean is below 1) is treated as constant and set to zero.
CONSTANT_RTOL = 1e-12


def zscore_time_in_place(X: np.ndarray) -> np.ndarray:
    """z-score every column of ``X`` over its rows, in place (no copy of a large block); constant columns become 0.

    Parameters
    ----------
    X : ndarray of shape (n_tokens, n_voxels), float64
        Activations; modified in place. The standard deviation uses ``ddof=0``.

    Returns
    -------
    ndarray of bool, shape (n_voxels,)
        The constant voxels (set to zero instead of NaN).
    """
    n_tokens = X.shape[0]
    mean = X.mean(axis=0)
    X -= mean
    std = np.sqrt(np.einsum("ij,ij->j", X, X) / n_tokens)  # no (T, V) temporary
    constant = std <= CONSTANT_RTOL * np.maximum(np.abs(mean), 1.0)
    std[constant] = 1.0
    X /= std
    X[:, constant] = 0.0
    return constant


def _randomized_svd_torch(X: np.ndarray, n_components: int, n_iter: int | str, seed: int,
                          device: str, n_oversamples: int = 10) -> np.ndarray:
    """Right singular vectors of ``X`` by a randomized SVD in torch (float64).

    Halko et al.'s range finder with a QR after every power iteration; the test
    matrix is drawn from ``numpy.random.RandomState(seed)``, so the result does not
    depend on torch's global generator.

    Parameters
    ----------
    X : ndarray of shape (n_tokens, n_voxels)
    n_components : int
    n_iter : int or "auto"
        Power iterations; ``"auto"`` follows scikit-learn (7 if ``n_components`` is
        below 10% of the smaller dimension, else 4).
    seed : int
    device : str
        Torch device, e.g. ``"cuda"`` or ``"cpu"``.
    n_oversamples : int, default=10

    Returns
    -------
    ndarray of shape (n_voxels, n_components)
        Spatial singular vectors, sign-flipped so each column's largest ``|value|``
        is positive.
    """
    import torch  # imported here: the CPU path never needs torch

    if n_iter == "auto":
        n_iter = 7 if n_components < 0.1 * min(X.shape) else 4
    size = n_components + n_oversamples
    omega = np.random.RandomState(seed).normal(size=(X.shape[1], size))
    A = torch.from_numpy(np.ascontiguousarray(X)).to(device=device, dtype=torch.float64)
    Q = torch.linalg.qr(A @ torch.from_numpy(omega).to(A))[0]
    for _ in range(int(n_iter)):
        Q = torch.linalg.qr(A.T @ Q)[0]
        Q = torch.linalg.qr(A @ Q)[0]
    B = Q.T @ A  # (size, n_voxels)
    _, _, Vh = torch.linalg.svd(B, full_matrices=False)
    V = Vh[:n_components].T.cpu().numpy()
    peaks = V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])]
    return V * np.where(peaks < 0, -1.0, 1.0)


def _numerical_rank(X: np.ndarray, spatial: np.ndarray) -> int:
    """How many of the spatial singular vectors carry signal: ``||X v_i||`` above numpy's rank tolerance.

    ``||X v_i||`` is the i-th singular value; the tolerance is ``matrix_rank``'s,
    ``s_max * max(X.shape) * eps``. Vectors found past the rank of ``X`` span noise.
    """
    singular = np.linalg.norm(X @ spatial, axis=0)
    top = float(singular.max()) if singular.size else 0.0
    return int(np.sum(singular > top * max(X.shape) * np.finfo(np.float64).eps)) if top > 0 else 0


def _whiten(spatial: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre the voxels' loadings and whiten them (PCA whitening, unit variance).

    Same transform as ``FastICA(whiten="unit-variance")``, done here because
    scikit-learn fixes the sign of the whitening basis with ``np.sign(u[0])``,
    which zeroes a whole direction when ``u[0, j]`` is exactly 0. That happens with
    CanICA's input: orthonormal singular vectors have a degenerate covariance, so
    the basis is arbitrary and LAPACK may return exact zeros; one component is
    then lost (seen with ``whiten_solver="eigh"`` on planted data).

    Parameters
    ----------
    spatial : ndarray of shape (n_voxels, n_components)

    Returns
    -------
    white : ndarray of shape (n_voxels, n_components)
        Centred, decorrelated columns of unit variance.
    condition : float
        Smallest over largest singular value of the centred input (near 0: the
        centring removed a direction, e.g. a map constant over voxels).
    """
    centred = spatial - spatial.mean(axis=0)
    P, sv, _ = np.linalg.svd(centred, full_matrices=False)
    return P * np.sqrt(spatial.shape[0]), float(sv[-1] / sv[0]) if sv[0] > 0 else 0.0


def _cube(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cube non-linearity for FastICA: ``g(x) = x**3`` and the mean of ``g'(x) = 3 x**2``.

    Same values as scikit-learn's ``fun="cube"``, written with multiplications:
    ``x ** 3`` calls ``pow`` per element and made each FastICA iteration ~20x slower
    (measured in ``benchmarks/bench_ica.py``).
    """
    x2 = x * x
    return x2 * x, 3.0 * x2.mean(axis=-1)


def _fastica_restart(white: np.ndarray, seed: int, max_iter: int, tol: float) -> dict[str, Any]:
    """One FastICA run on whitened spatial loadings; warnings are captured, not lost.

    Parameters
    ----------
    white : ndarray of shape (n_voxels, n_components)
        Output of :func:`_whiten`.
    seed, max_iter, tol : see :class:`funcprune.ica.FunctionalNetworks`

    Returns
    -------
    dict
        ``sources`` (ndarray of shape (n_voxels, n_components), unit variance),
        ``n_iter``, ``converged``, ``finite``, ``sparsity`` (max over components of
        the L1 norm, ``inf`` if not finite) and ``warnings`` (messages).
    """
    ica = FastICA(fun=_cube, whiten=False, max_iter=max_iter, tol=tol, random_state=int(seed))
    errstate = np.errstate(over="warn", divide="warn", invalid="warn", under="ignore")
    # Matrices of n_components x n_voxels are too small to gain from BLAS threads, and
    # threads busy-waiting on a loaded machine slowed FastICA several-fold.
    with warnings.catch_warnings(record=True) as caught, errstate, threadpool_limits(1):
        warnings.simplefilter("always")
        sources = ica.fit_transform(white)
        sources = sources / sources.std(axis=0)  # unit variance, as whiten="unit-variance"
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    finite = bool(np.isfinite(sources).all())
    sparsity = float(np.abs(sources).sum(axis=0).max()) if finite else float("inf")
    messages = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    return {"sources": sources, "n_iter": int(ica.n_iter_), "converged": converged,
            "finite": finite, "sparsity": sparsity, "warnings": messages}
