"""The comparison report: ``report.md`` (protocol, settings, tables with intervals, deviations, data credits)
and its PNG figures, written into one folder of the run directory.

What every report states (docs/EVAL.md: a deviation must be named in the report): the protocol and how its
targets are built, the settings every arm ran with, the users compared, each arm's metrics with intervals and
its lift over the baseline, the deviations from the protocol, and the credits of the data it was measured on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from torchrec_onerec.eval.compare import Comparison
from torchrec_onerec.eval.plots import Curve, plot_curves, plot_distributions, plot_metric_intervals
from torchrec_onerec.eval.simulated import TRUE_REWARD

PROTOCOL_TEXT = {
    "A": ("docs/EVAL.md protocol A (next item, leave-one-out, full ranking): per user, interactions in time order "
          "(stable on ties); the last item is the test target. Every arm ranks the whole catalogue; history items "
          "stay in the ranking unless stated. Recall@K = hit rate with one target; NDCG@K; means over users."),
    "B": ("docs/EVAL.md protocol B (sessions with feedback): train on the training days, test on the last days; "
          "the test target is a user's window session's positives in time order (at most m). recall@m / ndcg@m score the "
          "best-scored returned session against them; recall@K / ndcg@K the items of all returned sessions by score. "
          "Users without a positive in the window are not targets."),
    "C": ("docs/EVAL.md protocol C (simulated A/B on the synthetic world): every arm serves each test user its "
          "best-scored session; the world's own response model gives that session's true expected reward "
          "(clicks + long views + 2 x likes, with position, diversity and repeat effects)."),
}

DATA_CREDITS = {
    "kuairand": ("KuaiRand: Chongming Gao, Shijun Li, Yuan Zhang, Jiawei Chen, Biao Li, Wenqiang Lei, Peng Jiang, "
                 "Xiangnan He, \"KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed "
                 "Videos\", CIKM 2022. Licence CC BY-SA 4.0; results here are on a two-week slice of KuaiRand-Pure."),
    "movielens": ("MovieLens: F. Maxwell Harper and Joseph A. Konstan, \"The MovieLens Datasets: History and "
                  "Context\", ACM TiiS 2015 (GroupLens terms: cite, do not redistribute)."),
    "synthetic": "The synthetic short-video world of torchrec_onerec (generated from the run's seed; no external data).",
}


def credit_for(source: str) -> str:
    """The credit line of a ``data.source`` (generic files: the user's own data)."""
    return DATA_CREDITS.get(source, "The user's own data (no third-party credit recorded by this project).")


def _settings_table(settings: Mapping[str, object]) -> List[str]:
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings.items()]


def write_comparison_report(folder: Path, *, title: str, comparison: Comparison, protocols: Sequence[str],
                            settings: Mapping[str, object], deviations: Sequence[str], data_source: str,
                            per_user: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
                            curves: Optional[Mapping[str, Dict[str, Curve]]] = None,
                            curve_x_labels: Optional[Mapping[str, str]] = None,
                            extra_sections: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``report.md``, ``comparison.json`` and the figures into ``folder``.

    Args:
        folder (Path): where the report goes (created).
        title (str): the report's heading.
        comparison (Comparison): the arms' comparison.
        protocols (Sequence[str]): the docs/EVAL.md protocols the metrics follow (``"A"``, ``"B"``, ``"C"``).
        settings (Mapping[str, object]): what every arm ran with (n, m, beam, users ...), as a table.
        deviations (Sequence[str]): every way this run departs from the protocol (docs/EVAL.md: name them all).
        data_source (str): the ``data.source`` whose credit the report carries.
        per_user (Mapping[str, Mapping[str, np.ndarray]] | None): arm -> metric -> [U] values, for the
            distribution figure of ``true_reward`` (else the first compared metric).
        curves (Mapping[str, Dict[str, Curve]] | None): training curves per stage (``plots.plot_curves``).
        curve_x_labels (Mapping[str, str] | None): x-axis label per curve panel.
        extra_sections (Mapping[str, str] | None): heading -> markdown, appended before the credits.

    Returns:
        The path of ``report.md``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    figures: List[str] = []
    plot_metric_intervals(comparison, folder / "metrics.png")
    figures.append("metrics.png")
    if per_user:
        metric = TRUE_REWARD if TRUE_REWARD in comparison.metrics else comparison.metrics[0]
        unit = "expected clicks + long views + 2 x likes" if metric == TRUE_REWARD else "per-user value"
        plot_distributions({arm: per_user[arm][metric] for arm in comparison.arms if metric in per_user[arm]},
                           metric=metric, unit=unit, path=folder / "distribution.png")
        figures.append("distribution.png")
    if curves:
        plot_curves(curves, x_labels=curve_x_labels or {}, path=folder / "training_curves.png")
        figures.append("training_curves.png")
    lines = [f"# {title}", "", "## Protocol", ""]
    lines += [f"- {PROTOCOL_TEXT[p]}" for p in protocols]
    lines += ["", "## Settings", ""] + _settings_table(settings)
    lines += ["", "## Results", "", comparison.to_markdown()]
    lines += ["## Figures", ""] + [f"![{name}]({name})" for name in figures]
    lines += ["", "## Deviations from the protocol", ""]
    lines += [f"- {d}" for d in deviations] if deviations else ["- none"]
    for heading, text in (extra_sections or {}).items():
        lines += ["", f"## {heading}", "", text.rstrip()]
    lines += ["", "## Data credits", "", f"- {credit_for(data_source)}", ""]
    (folder / "comparison.json").write_text(json.dumps(comparison.to_json(), indent=2, default=float))
    report = folder / "report.md"
    report.write_text("\n".join(lines))
    return report
