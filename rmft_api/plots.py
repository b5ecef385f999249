"""The report's figures (PNG, matplotlib's Agg backend, no display). Drawing only: every number
is computed by report.py and handed over in the small records below."""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from rmft_api.errors import RmftError
from rmft_api.store import write_bytes_atomic

FloatArray = NDArray[np.float64]

# Fixed colours for the usual reference agents, so every figure reads the same way.
_AGENT_COLORS = {
    "ucb1": "#d62728",
    "thompson": "#ff7f0e",
    "greedy": "#8c564b",
    "uniform": "#7f7f7f",
    "eps_greedy": "#e377c2",
    "exp3": "#bcbd22",
    "sw_ucb": "#9467bd",
    "discounted_ts": "#17becf",
    "hedge": "#d62728",
    "ftl": "#8c564b",
    "ftpl": "#ff7f0e",
}
_DPI = 110
_SHADED = ("ucb1", "thompson", "hedge")


@dataclass(frozen=True)
class Band:
    """A mean curve by round with its pointwise 95% band."""

    label: str
    mean: FloatArray
    low: FloatArray
    high: FloatArray


@dataclass(frozen=True)
class Point:
    """One mean with its 95% CI (None: nothing measured)."""

    label: str
    mean: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Heatmap:
    """Share of plays by arm rank (rows) and round (columns) of one iteration."""

    label: str
    shares: FloatArray
    rows: list[str]


@dataclass(frozen=True)
class GridPanel:
    name: str
    task: str
    points: list[Point]  # the policy, one per iteration
    baselines: list[Point]  # the classic agents on the variant's draws


@dataclass
class Figures:
    """Everything the report draws."""

    title: str
    policy_bands: list[Band]  # cumulative regret, one per iteration
    agent_bands: list[Band]
    points: list[Point]  # held-out mean regret by iteration
    baseline_points: list[Point]
    suff_fail: list[tuple[str, FloatArray]] = field(default_factory=list)  # bandits only
    agent_suff_fail: list[tuple[str, FloatArray]] = field(default_factory=list)
    heatmaps: list[Heatmap] = field(default_factory=list)
    grid: list[GridPanel] = field(default_factory=list)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:
        raise RmftError(
            "plots need matplotlib: pip install 'rmft-api[report]' (report.md is still written)"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _iteration_colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def _agent_color(name: str, fallback: int) -> str:
    return _AGENT_COLORS.get(name, f"C{fallback % 10}")


def _save(fig: Any, path: Path, *, tight: bool = True) -> str:
    """Render to memory, then replace the file atomically (a reader never sees half a PNG)."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
    return path.name


def _regret_curves(plt: Any, figs: Figures, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colors = _iteration_colors(len(figs.policy_bands))
    for j, band in enumerate(figs.agent_bands):
        color = _agent_color(band.label, j)
        rounds = np.arange(1, band.mean.size + 1)
        ax.plot(rounds, band.mean, ls="--", lw=1.3, color=color, label=band.label)
        ax.fill_between(rounds, band.low, band.high, color=color, alpha=0.08, lw=0)
    for band, color in zip(figs.policy_bands, colors, strict=True):
        rounds = np.arange(1, band.mean.size + 1)
        ax.plot(rounds, band.mean, lw=2.0, color=color, label=f"iter {band.label}")
        ax.fill_between(rounds, band.low, band.high, color=color, alpha=0.18, lw=0)
    ax.set_xlabel("round t")
    ax.set_ylabel("mean cumulative regret R_t")
    ax.set_title(f"{figs.title}\nheld-out cumulative regret (bands: 95% bootstrap CI)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    return _save(fig, path)


def _errorbars(ax: Any, points: list[Point], *, color: Any, label: str) -> None:
    xs = [i for i, p in enumerate(points) if p.mean is not None]
    if not xs:
        return
    means = np.array([points[i].mean for i in xs], dtype=np.float64)
    low = np.array([points[i].low if points[i].low is not None else points[i].mean for i in xs])
    high = np.array([points[i].high if points[i].high is not None else points[i].mean for i in xs])
    err = np.vstack([means - low.astype(np.float64), high.astype(np.float64) - means])
    ax.errorbar(xs, means, yerr=err, fmt="o-", color=color, lw=2, capsize=4, label=label)


def _baseline_lines(ax: Any, baselines: list[Point]) -> None:
    for j, p in enumerate(baselines):
        if p.mean is None:
            continue
        color = _agent_color(p.label, j)
        ax.axhline(p.mean, ls="--", lw=1.2, color=color, label=p.label)
        # Shading every agent's CI piles up into noise; the headline agents' CIs are enough.
        if p.label in _SHADED and p.low is not None and p.high is not None:
            ax.axhspan(p.low, p.high, color=color, alpha=0.10, lw=0)


def _heldout_regret(plt: Any, figs: Figures, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _baseline_lines(ax, figs.baseline_points)
    _errorbars(ax, figs.points, color="black", label="policy")
    ax.set_xticks(range(len(figs.points)), [p.label for p in figs.points])
    ax.set_xlabel("iteration (policy P_i)")
    ax.set_ylabel("mean regret R_T (95% CI)")
    ax.set_title(f"{figs.title}\nheld-out mean regret by iteration", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _suff_fail(plt: Any, figs: Figures, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = _iteration_colors(len(figs.suff_fail))
    for j, (label, curve) in enumerate(figs.agent_suff_fail):
        rounds = np.arange(1, curve.size + 1)
        ax.plot(rounds, curve, ls="--", lw=1.2, color=_agent_color(label, j), label=label)
    for (label, curve), color in zip(figs.suff_fail, colors, strict=True):
        rounds = np.arange(1, curve.size + 1)
        ax.plot(rounds, curve, lw=2, color=color, label=f"iter {label}")
    ax.set_xlabel("round t")
    ax.set_ylabel("SuffFailFreq(t)")
    ax.set_title(
        f"{figs.title}\nshare of episodes that never play the best arm in rounds t..T",
        fontsize=10,
    )
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def _heatmaps(plt: Any, figs: Figures, path: Path) -> str:
    n = len(figs.heatmaps)
    rows = max(len(h.rows) for h in figs.heatmaps)
    fig, axes = plt.subplots(
        n, 1, figsize=(8, 0.9 + (0.32 * rows + 0.5) * n), squeeze=False, sharex=True
    )
    image = None
    for ax, heat in zip(axes[:, 0], figs.heatmaps, strict=True):
        horizon = heat.shares.shape[1]
        image = ax.imshow(
            heat.shares,
            aspect="auto",
            interpolation="nearest",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            extent=(0.5, horizon + 0.5, len(heat.rows) - 0.5, -0.5),
        )
        ax.set_yticks(range(len(heat.rows)), heat.rows, fontsize=7)
        ax.set_title(f"iter {heat.label}", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("round t")
    fig.suptitle(f"{figs.title}: share of plays by arm rank", fontsize=10)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=list(axes[:, 0]), shrink=0.9, label="share of plays")
    return _save(fig, path, tight=False)


def _grid(plt: Any, figs: Figures, path: Path) -> str:
    n = len(figs.grid)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, figs.grid, strict=False):
        _baseline_lines(ax, panel.baselines)
        _errorbars(ax, panel.points, color="black", label="policy")
        ax.set_xticks(range(len(panel.points)), [p.label for p in panel.points], fontsize=8)
        task = "\n".join(textwrap.wrap(panel.task, width=52, max_lines=3, placeholder=" …"))
        ax.set_title(f"{panel.name}\n{task}", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    axes.flat[0].set_ylabel("mean regret R_T (95% CI)")
    fig.suptitle(f"{figs.title}: generalization grid by iteration", fontsize=10)
    return _save(fig, path)


def write_figures(out_dir: Path, figs: Figures) -> dict[str, str]:
    """Write every figure that has data; returns {figure: file name inside out_dir}."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {
        "regret_curves": _regret_curves(plt, figs, out_dir / "regret_curves.png"),
        "heldout_regret": _heldout_regret(plt, figs, out_dir / "heldout_regret.png"),
    }
    if figs.suff_fail:
        written["suff_fail"] = _suff_fail(plt, figs, out_dir / "suff_fail.png")
    if figs.heatmaps:
        written["action_heatmap"] = _heatmaps(plt, figs, out_dir / "action_heatmap.png")
    if figs.grid:
        written["grid"] = _grid(plt, figs, out_dir / "grid.png")
    return written
