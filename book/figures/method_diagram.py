"""Draw the method diagram (book/figures/method_diagram.svg and .png): five stages and the data each hands on.

Run from the repository root: ``.venv/bin/python book/figures/method_diagram.py``. The files are committed, so
the book build does not run this; rerun it after changing the text below.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG: a teacher can edit it
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

STAGES = [
    ("1  Capture", "hooks on every MLP,\ncalibration text", "per layer:\n$T$ tokens × $2\\,d_{ff}$ voxels"),
    ("2  Functional networks", "z-score, randomised SVD,\nspatial FastICA, restarts", "per layer:\n$k$ z-maps × $2\\,d_{ff}$ voxels"),
    ("3  Key neurons", "$s_j = \\max\\,|z|$ over voxels,\nmaps and groups", "per layer: $d_{ff}$ scores\n→ plan: kept channels"),
    ("4  Structured pruning", "remove gate and up rows\nand down columns", "gate, up: $d'_{ff} × d$\ndown: $d × d'_{ff}$"),
    ("5  Evaluation", "perplexity, zero-shot,\ndense and baselines", "paired tests on shared\nwindows and items"),
]
COLOURS = ["#dbeafe", "#dcfce7", "#fef9c3", "#fee2e2", "#ede9fe"]
LEGEND = ("$T$: calibration tokens (time points)   $d_{ff}$: MLP width (channels, two voxels each)   "
          "$k$: maps per layer   $d$: hidden size   $d'_{ff}$: kept width.\n"
          "The first three and the last two layers are never pruned.")


def draw(out_dir: Path) -> None:
    fig, ax = plt.subplots(figsize=(13.9, 3.4))
    ax.set_xlim(0, 13.9)
    ax.set_ylim(0, 3.4)
    ax.axis("off")
    width, gap = 2.5, 0.25
    for i, (title, what, shape) in enumerate(STAGES):
        x = 0.15 + i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.9), width, 2.3, boxstyle="round,pad=0.02,rounding_size=0.15",
                                    fc=COLOURS[i], ec="#444"))
        ax.text(x + width / 2, 2.95, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + width / 2, 2.35, what, ha="center", va="center", fontsize=9)
        ax.plot([x + 0.15, x + width - 0.15], [1.85, 1.85], color="#999", lw=0.8)
        ax.text(x + width / 2, 1.38, shape, ha="center", va="center", fontsize=9, style="italic")
        if i < len(STAGES) - 1:
            ax.add_patch(FancyArrowPatch((x + width + 0.03, 2.05), (x + width + gap - 0.03, 2.05),
                                         arrowstyle="-|>", mutation_scale=14, color="#444"))
    ax.text(0.15, 0.45, LEGEND, ha="left", va="center", fontsize=8.5, color="#333")
    for suffix in ("svg", "png"):
        fig.savefig(out_dir / f"method_diagram.{suffix}", dpi=150, bbox_inches="tight",
                    metadata={"Date": None} if suffix == "svg" else None)
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(__file__).resolve().parent)
