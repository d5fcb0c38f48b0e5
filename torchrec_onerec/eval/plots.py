"""The comparison report's figures (matplotlib, written as PNG files without a display).

- ``plot_metric_intervals``: one panel per metric, each arm's mean with its bootstrap interval;
- ``plot_distributions``: per-user values of one metric (e.g. protocol C's true reward), one box per arm;
- ``plot_curves``: training curves (loss, validation metric ...) of the pipeline's stages.

Every axis is labelled with its quantity and unit, every panel titled, so a figure stands on its own.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, Mapping, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: CI machines and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from torchrec_onerec.eval.compare import Comparison  # noqa: E402

Curve = Tuple[Sequence[float], Sequence[float]]


def _save(fig: "plt.Figure", path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_metric_intervals(comparison: Comparison, path: Path) -> Path:
    """Bars of each arm's mean per metric, with the interval as error bars; the baseline is hatched.

    Args:
        comparison (Comparison): ``compare.compare_arms``'s result.
        path (Path): the PNG to write.

    Returns:
        ``path``.
    """
    metrics = comparison.metrics
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    x = np.arange(len(comparison.arms))
    for ax, metric in zip(axes.flat, metrics):
        cis = [comparison.means[arm][metric] for arm in comparison.arms]
        values = np.array([ci.value for ci in cis])
        errors = np.array([[ci.value - ci.low for ci in cis], [ci.high - ci.value for ci in cis]])
        bars = ax.bar(x, values, yerr=errors, capsize=4, color="#4C72B0", edgecolor="black")
        bars[0].set_hatch("//")
        ax.set_xticks(x, comparison.arms, rotation=20, ha="right")
        ax.set_title(metric)
        ax.set_ylabel(f"{metric} (mean over users)")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"Per-arm means, {round(comparison.level * 100)}% bootstrap intervals "
        f"({comparison.num_users} users; hatched = baseline {comparison.baseline})",
        fontsize=10,
    )
    return _save(fig, path)


def plot_distributions(values: Mapping[str, np.ndarray], *, metric: str, unit: str, path: Path) -> Path:
    """Box plots of per-user values of ``metric`` per arm, the mean marked.

    Args:
        values (Mapping[str, np.ndarray]): arm -> [U] per-user values.
        metric (str): what the values are (axis label), e.g. ``true session reward``.
        unit (str): their unit, e.g. ``expected clicks + long views + 2 x likes``.
        path (Path): the PNG to write.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(1.6 * len(values) + 3, 4))
    names = list(values)
    ax.boxplot([np.asarray(values[n]) for n in names], showmeans=True, meanline=True)
    ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} per user ({unit})")
    ax.set_title(f"Distribution of {metric} over users (dashed line: mean)")
    return _save(fig, path)


def plot_curves(curves: Mapping[str, Dict[str, Curve]], *, x_labels: Mapping[str, str], path: Path) -> Path:
    """One panel per stage: its named curves against steps or epochs.

    Args:
        curves (Mapping[str, Dict[str, Curve]]): panel title -> curve name -> (x values, y values).
        x_labels (Mapping[str, str]): panel title -> x-axis label (e.g. ``optimiser step``).
        path (Path): the PNG to write.

    Returns:
        ``path``.
    """
    if not curves:
        raise ValueError("plot_curves needs at least one panel of curves")
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, named) in zip(axes.flat, curves.items()):
        for name, (xs, ys) in named.items():
            ax.plot(list(xs), list(ys), marker="o" if len(xs) < 30 else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel(x_labels.get(title, "step"))
        ax.set_ylabel("value")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    return _save(fig, path)
