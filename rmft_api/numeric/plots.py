"""Regret-curve figures of the numeric experiment (PNG, matplotlib's Agg backend, no display)."""

from __future__ import annotations

from pathlib import Path

from rmft_api.errors import RmftError
from rmft_api.numeric.evaluate import Curves


def write_figures(
    out_dir: Path, *, env: str, history: list[Curves], baselines: dict[str, Curves]
) -> list[str]:
    """One PNG per iteration (mean regret curve per group: this iteration, the random init, the
    baselines) and a summary of final regret across iterations. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RmftError(f"cannot create output directory {out_dir}: {e}") from e
    groups = list(dict.fromkeys(history[0].groups))
    cols = min(3, len(groups))
    rows = (len(groups) + cols - 1) // cols
    written: list[str] = []
    for index, curves in enumerate(history):
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
        for ax, group in zip(axes.flat, groups, strict=False):
            ax.plot(history[0].mean_curve(group), color="0.6", ls=":", label="random init")
            for name, c in baselines.items():
                ax.plot(c.mean_curve(group), ls="--", label=name)
            ax.plot(curves.mean_curve(group), color="black", lw=2, label=f"model it{index}")
            ax.set_title(group)
            ax.set_xlabel("round t")
            ax.set_ylabel("mean regret R_t")
        for ax in list(axes.flat)[len(groups) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{env}: held-out regret, iteration {index}")
        fig.tight_layout()
        path = out_dir / f"regret_iter{index:02d}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(str(path))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    finals = [float(c.curves[:, -1].mean()) for c in history]
    ax.plot(range(len(history)), finals, marker="o", color="black", label="model")
    for name, c in baselines.items():
        ax.axhline(float(c.curves[:, -1].mean()), ls="--", label=name, color=f"C{len(ax.lines)}")
    ax.set_xlabel("RMFT iteration")
    ax.set_ylabel("mean final regret R_T")
    ax.set_title(f"{env}: held-out regret by iteration")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out_dir / "regret_by_iteration.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(str(path))
    return written
