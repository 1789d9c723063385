"""What chapter 2 says of converged and stopped fits, computed from the agreement tables."""

from __future__ import annotations

import pandas as pd

from funcprune.agreement import convergence_facts


def _longer(rows: list[tuple[float, float, float, bool, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["map_corr_median", "map_corr_min", "key_overlap", "converged_longer", "seconds"])


def test_convergence_facts_by_hand() -> None:
    agreement = pd.DataFrame({"layer": [3, 9, 27], "converged": [True, True, False],
                              "map_corr_median": [0.9, 0.7, 0.4], "key_overlap": [0.8, 0.6, 0.25]})
    longer = _longer([(0.95, 0.5, 0.9, True, 10.0), (0.85, 0.3, 0.7, False, 12.4)])
    convergence = [{"converged": [True, False]}, {"converged": [False, False]}, {"converged": [True, True]}]
    assert convergence_facts(agreement, longer, convergence) == {
        "conv_overlap_ok": "0.70", "conv_overlap_stopped": "0.25", "conv_corr_ok": "0.80", "conv_corr_stopped": "0.40",
        "conv_restart_share": "50", "conv_no_restart": 1, "conv_n_longer": 2, "conv_n_longer_converged": 1,
        "conv_longer_corr": "0.90", "conv_longer_corr_min": "0.30", "conv_longer_overlap": "0.80",
        "conv_longer_seconds": "22"}


def test_convergence_facts_say_what_was_not_checked() -> None:
    agreement = pd.DataFrame({"layer": [3], "converged": [True], "map_corr_median": [0.9], "key_overlap": [0.8]})
    facts = convergence_facts(agreement, _longer([]), [{"converged": [True]}])
    assert facts["conv_overlap_stopped"] == facts["conv_corr_stopped"] == "n/a (no such layer checked)"
    assert facts["conv_longer_corr"] == facts["conv_longer_corr_min"] == facts["conv_longer_overlap"] == "n/a"
    assert (facts["conv_n_longer"], facts["conv_n_longer_converged"], facts["conv_longer_seconds"]) == (0, 0, "0")
    assert (facts["conv_restart_share"], facts["conv_no_restart"]) == ("100", 0)
