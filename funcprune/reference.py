"""Published numbers of other models and protocols, for orientation beside this run's results.

The numbers live in a data file of the repository, ``data/reference_numbers.csv`` (one
row per published run; the ``source`` column names the publication, ``protocol`` how it
was measured), read by :func:`reference_numbers`. Like ``params/`` and ``notebooks/``, the
file is read from the checkout (editable installs and the tests), not from an installed
wheel.

Used in the chapter :doc:`/executed/05_evaluate_benchmarks`.
"""

from __future__ import annotations

import pandas as pd

from .provenance import REPO_ROOT

__all__ = ["REFERENCE_CSV", "reference_numbers"]

#: The published numbers: ``data/reference_numbers.csv`` of the repository.
REFERENCE_CSV = REPO_ROOT / "data" / "reference_numbers.csv"


def reference_numbers() -> pd.DataFrame:
    """Published numbers: the authors' runs (Vicuna-7B-v1.5) and the structured-pruning literature (LLaMA-7B).

    These are **other models under other protocols** (WikiText-2, lm-eval's word
    perplexity, ARC test splits, 6 or 7 tasks); they orient the reader and cannot be
    compared number for number with this run. Accuracies are percentages, as
    published; ``removed`` is the fraction of all parameters removed.

    The numbers are a file of the repository, :data:`REFERENCE_CSV`; its
    ``source`` column names where each row was published and ``protocol`` how it was
    measured (``data/README.md`` describes the columns).

    Returns
    -------
    pandas.DataFrame
        One row per published run: ``source``, ``model``, ``method``, ``run``, ``removed``,
        ``removed_basis``, ``ppl_wikitext_word`` (lm-eval ``wikitext`` word perplexity),
        ``ppl_wikitext2_128`` (token perplexity, 128-token windows), per-task accuracies
        (``acc_norm`` for ARC-c, HellaSwag, OpenBookQA), ``mean_acc`` over ``mean_tasks``
        tasks, and a ``protocol`` note.
    """
    df = pd.read_csv(REFERENCE_CSV)
    df["mean_tasks"] = df["mean_tasks"].astype("Int64")
    df["run"] = df["run"].fillna("")
    return df
