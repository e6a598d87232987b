"""The curves a user looks at after a run: held-out loss and retrieval accuracy per round."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rounds"] if "heldout_loss" in r]
    if not rows:
        return
    x = [r["round"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
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
    plt.close(fig)
    tmp.replace(path)
