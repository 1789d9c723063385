"""The zero-shot records read back as the tables chapter 5 shows."""

from __future__ import annotations

import math

from funcprune.tasks import accuracy_table, task_table


def _task(preferred_metric: str, preferred: float, acc_se: float, norm_se: float, chance: float = 0.5) -> dict:
    return {"n": 20, "n_available": 3270, "chance": chance, "split": "validation", "harness_split": "validation",
            "preferred_metric": preferred_metric, "preferred": preferred, "acc_stderr": acc_se,
            "acc_norm_stderr": norm_se, "licence": "CC-BY-SA-3.0", "source": "google/boolq"}


def _zero_shot(boolq: float, hellaswag: float) -> dict:
    return {"tasks": {"boolq": _task("acc", boolq, 0.1, 0.2),
                      "hellaswag": _task("acc_norm", hellaswag, 0.1, 0.02, chance=0.25)}}


PARTS = {"dense": {"zero_shot": _zero_shot(0.72, 0.30)}, "fn_r0.20": {"zero_shot": _zero_shot(0.65, 0.251)},
         "fn_r0.30": {"zero_shot": None}}


def test_task_table_lists_what_was_scored_of_each_task() -> None:
    table = task_table(PARTS["dense"]["zero_shot"])
    assert list(table.index) == ["boolq", "hellaswag"]
    assert table.loc["boolq"].to_dict() == {"items scored": 20, "items available": 3270, "chance level": 0.5,
                                            "split": "validation", "harness scores": "validation",
                                            "metric reported": "acc", "licence": "CC-BY-SA-3.0",
                                            "source": "google/boolq"}


def test_accuracy_table_stars_values_within_two_standard_errors_of_chance() -> None:
    table = accuracy_table(PARTS, reference="dense")
    assert list(table.index) == ["dense", "fn_r0.20", "chance level"]  # a model without zero-shot is left out
    assert table.loc["dense"].to_dict() == {"boolq": "0.72 ± 0.10", "hellaswag": "0.30 ± 0.02"}
    # boolq: |0.65 - 0.5| = 0.15 <= 2 x 0.1 (acc's error); hellaswag: |0.251 - 0.25| <= 2 x 0.02 (acc_norm's)
    assert table.loc["fn_r0.20"].to_dict() == {"boolq": "0.65 ± 0.10 *", "hellaswag": "0.25 ± 0.02 *"}
    assert table.loc["chance level"].to_dict() == {"boolq": "0.50", "hellaswag": "0.25"}
    assert not any(isinstance(v, float) and math.isnan(v) for v in table.to_numpy().ravel())
