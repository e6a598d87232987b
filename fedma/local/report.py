"""The curves a user looks at after a run: held-out loss and retrieval accuracy per round."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Redrawn after every round. A Figure of its own (not pyplot's global registry), freed
    at once: a figure is a large web of reference cycles that the collector's oldest
    generation reaches only rarely in a process holding a model, and a long run grew by
    ~5 MiB a round until it was (bench/soak.py)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in report["rounds"] if "heldout_loss" in r]
    if not rows:
        return
    x = [r["round"] for r in rows]
    fig = Figure(figsize=(9, 3.4))
    FigureCanvasAgg(fig)
    a, b = fig.subplots(1, 2)
    a.plot(x, [r["heldout_loss"] for r in rows], marker="o")
    a.set(xlabel="round", ylabel="held-out caption loss", title="Caption loss")
    b.plot(x, [100 * r["retrieval_accuracy"] for r in rows], marker="o", color="tab:green")
    chance = report.get("retrieval_chance")
    if chance:
        b.axhline(100 * chance, ls="--", color="grey", lw=1, label="chance")
        b.legend(loc="upper left")
    b.set(xlabel="round", ylabel="accuracy (%)", title="Caption retrieval", ylim=(0, 100))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.set_xticks(x)
    fig.suptitle(f"fedma · {report.get('training', '')}")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    fig.clear()
    del fig, a, b
    gc.collect()
