"""Chapter 4's figures of the plans: what is drawn is the widths given, in the stated styles."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd

from funcprune.figures import plot_kept_widths, plot_width_profiles

matplotlib.use("Agg")


def _index() -> pd.DataFrame:
    rows = [("fn", 0.1, None, [8, 6, 4, 8]), ("fn-bias", 0.1, None, [8, 6, 4, 8]), ("random", 0.1, 0, [8, 5, 5, 8]),
            ("random", 0.1, 1, [8, 5, 5, 8]), ("fn", 0.2, None, [8, 3, 2, 8]), ("fn-bias", 0.2, None, [8, 3, 2, 8]),
            ("random", 0.2, 0, [8, 3, 3, 8]), ("random", 0.2, 1, [8, 3, 3, 8])]
    return pd.DataFrame([{"method": m, "ratio_requested": r, "seed": s, "widths": w, "protected_layers": [0, 3]}
                         for m, r, s, w in rows])


def test_plot_kept_widths_draws_every_model_with_its_style() -> None:
    import matplotlib.pyplot as plt

    colors = {"fn": "tab:blue", "fn-bias": "tab:orange", "random": "tab:green"}
    labels = {"fn": "FN", "fn-bias": "FN + bias", "random": "random"}
    fig = plot_kept_widths(_index(), ["fn", "fn-bias", "random"], [0.1, 0.2], basis="total", colors=colors,
                           labels=labels)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["10% of total parameters removed", "20% of total parameters removed"]
    lines = axes[1].lines
    assert [list(line.get_ydata()) for line in lines] == [[8, 3, 2, 8], [8, 3, 2, 8], [8, 3, 3, 8], [8, 3, 3, 8]]
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "-"]
    assert lines[1].get_color() == "tab:blue" and [line.get_linewidth() for line in lines[2:]] == [0.8, 0.8]
    assert len(axes[0].patches) == 2  # the protected layers 0 and 3, shaded
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["FN", "FN + bias", "random"]  # one entry each
    plt.close(fig)


def test_plot_width_profiles_draws_the_first_plan_solid_and_the_others_dashed() -> None:
    import matplotlib.pyplot as plt

    fig = plot_width_profiles({"global": {0: 8, 1: 2, 2: 6}, "uniform": {0: 8, 1: 4, 2: 4}}, color="k", title="t")
    ax = fig.axes[0]
    assert [list(line.get_ydata()) for line in ax.lines] == [[8, 2, 6], [8, 4, 4]]
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--"]
    assert np.array_equal(ax.lines[0].get_xdata(), [0, 1, 2]) and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["global", "uniform"]
    plt.close(fig)
