"""The comparison report: ``report.md`` (protocol, settings, tables with intervals, deviations, data credits)
and its PNG figures, written into one folder of the run directory; and the sections it gathers from the other
stages' files (training curves, reward-model and ranker AUCs, alignment iterations).

What every report states (docs/EVAL.md: a deviation must be named in the report): the protocol and how its
targets are built, the settings every arm ran with, the users compared, each arm's metrics with intervals and
its lift over the baseline, the deviations from the protocol, and the credits of the data it was measured on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.data.config import SplitConfig
from torchrec_onerec.eval.compare import Comparison
from torchrec_onerec.eval.config import EvalConfig
from torchrec_onerec.eval.plots import Curve, plot_curves, plot_distributions, plot_metric_intervals
from torchrec_onerec.eval.simulated import TRUE_REWARD

PROTOCOL_TEXT = {
    "A": (
        "docs/EVAL.md protocol A (next item, leave-one-out, full ranking): per user, interactions in time order "
        "(stable on ties); the last item is the test target. Every arm ranks the whole catalogue; history items "
        "stay in the ranking unless stated. Recall@K = hit rate with one target; NDCG@K; means over users."
    ),
    "B": (
        "docs/EVAL.md protocol B (sessions with feedback): train on the training days, test on the last days; "
        "the test target is a user's window session's positives in time order (at most m). recall@m / ndcg@m score "
        "the best-scored returned session against them; recall@K / ndcg@K the items of all returned sessions by "
        "score. Users without a positive in the window are not targets."
    ),
    "C": (
        "docs/EVAL.md protocol C (simulated A/B on the synthetic world): every arm serves each test user its "
        "best-scored session; the world's own response model gives that session's true expected reward "
        "(clicks + long views + 2 x likes, with position, diversity and repeat effects)."
    ),
}

DATA_CREDITS = {
    "kuairand": (
        "KuaiRand: Chongming Gao, Shijun Li, Yuan Zhang, Jiawei Chen, Biao Li, Wenqiang Lei, Peng Jiang, "
        'Xiangnan He, "KuaiRand: An Unbiased Sequential Recommendation Dataset with Randomly Exposed '
        'Videos", CIKM 2022. Licence CC BY-SA 4.0; results here are on a two-week slice of KuaiRand-Pure.'
    ),
    "movielens": (
        'MovieLens: F. Maxwell Harper and Joseph A. Konstan, "The MovieLens Datasets: History and '
        'Context", ACM TiiS 2015 (GroupLens terms: cite, do not redistribute).'
    ),
    "synthetic": (
        "The synthetic short-video world of torchrec_onerec (generated from the run's seed; no external data)."
    ),
}


def credit_for(source: str) -> str:
    """The credit line of a ``data.source`` (generic files: the user's own data)."""
    return DATA_CREDITS.get(source, "The user's own data (no third-party credit recorded by this project).")


def _settings_table(settings: Mapping[str, object]) -> List[str]:
    return ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings.items()]


def write_comparison_report(
    folder: Path,
    *,
    title: str,
    comparison: Comparison,
    protocols: Sequence[str],
    settings: Mapping[str, object],
    deviations: Sequence[str],
    data_source: str,
    per_user: Optional[Mapping[str, Mapping[str, np.ndarray]]] = None,
    curves: Optional[Mapping[str, Dict[str, Curve]]] = None,
    curve_x_labels: Optional[Mapping[str, str]] = None,
    extra_sections: Optional[Mapping[str, str]] = None,
) -> Path:
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
        plot_distributions(
            {arm: per_user[arm][metric] for arm in comparison.arms if metric in per_user[arm]},
            metric=metric,
            unit=unit,
            path=folder / "distribution.png",
        )
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


def evaluation_markdown(
    name: str, split: SplitConfig, evaluation: EvalConfig, metrics: Dict[str, Dict[str, float]]
) -> str:
    """A table of every arm's metrics (``metrics``: arm -> metric -> value), with the protocol they follow."""
    keys = [k for k in next(iter(metrics.values())) if "@" in k or k == TRUE_REWARD]
    lines = [
        f"## Test metrics ({name}, docs/EVAL.md protocol {split.protocol})",
        "",
        f"history n = {split.max_history}, session m = {split.session_items}, "
        f"beam {evaluation.beam_size}, returned {evaluation.num_return}, "
        f"history items {'excluded' if evaluation.exclude_history else 'kept'} in generation",
        "",
        "| arm | users | " + " | ".join(keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for arm, values in metrics.items():
        lines.append(
            f"| {arm} | {int(values['num_users'])} | "
            + " | ".join(f"{values[k]:.4f}" if k in values else "-" for k in keys)
            + " |"
        )
    return "\n".join(lines) + "\n"


def _jsonl_curves(path: Path, x: str, columns: List[str]) -> Dict[str, Curve]:
    if not path.is_file():
        return {}
    return _frame_curves(pd.read_json(path, lines=True), x, columns)


def _frame_curves(frame: pd.DataFrame, x: str, columns: List[str]) -> Dict[str, Curve]:
    return {c: (frame[x].tolist(), frame[c].tolist()) for c in columns if c in frame.columns and x in frame.columns}


def _csv_curves(path: Path, x: str, columns: List[str]) -> Dict[str, Curve]:
    return _frame_curves(pd.read_csv(path), x, columns) if path.is_file() else {}


def training_curves(run: Path, selection_metric: str) -> Tuple[Dict[str, Dict[str, Curve]], Dict[str, str]]:
    """The curves the report plots, from whatever stage files exist in the run directory ``run``: panel ->
    curves, panel -> x label."""
    panels = {
        "OneRec training loss": (
            _csv_curves(run / "train/metrics.csv", "step", ["loss", "ntp_loss"]),
            "optimiser step",
        ),
        f"OneRec validation {selection_metric}": (
            _csv_curves(run / "train/validation.csv", "epoch", [selection_metric]),
            "epoch",
        ),
        "Reward model validation AUC (same-length sessions)": (
            _jsonl_curves(run / "train-reward/metrics.jsonl", "epoch", ["valid_session_auc_same_length"]),
            "epoch",
        ),
        "Cascade ranker validation AUC": (_csv_curves(run / "cascade/ranker.csv", "epoch", ["auc_mean"]), "epoch"),
        "Alignment: held-out reward (align.reward_source)": (
            _jsonl_curves(
                run / "align/iterations.jsonl",
                "iteration",
                ["heldout_reward_top_after", "heldout_reward_mean_after", "heldout_reward_max_after"],
            ),
            "alignment iteration",
        ),
        "Alignment: DPO accuracy": (
            _jsonl_curves(run / "align/iterations.jsonl", "iteration", ["train_dpo_accuracy"]),
            "alignment iteration",
        ),
    }
    curves = {title: named for title, (named, _) in panels.items() if named}
    return curves, {title: label for title, (_, label) in panels.items()}


def _table(rows: List[List[object]], header: List[str]) -> str:
    cells = [
        [
            str(int(v)) if isinstance(v, float) and v.is_integer() else f"{v:.4f}" if isinstance(v, float) else str(v)
            for v in row
        ]
        for row in rows
    ]
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        + ["| " + " | ".join(row) + " |" for row in cells]
    )


def stage_sections(run: Path) -> Dict[str, str]:
    """Report sections from the training stages' own results in the run directory ``run``: reward-model AUCs
    (against its baseline pooling), the cascade ranker's AUCs, and the alignment iterations."""
    sections: Dict[str, str] = {}
    reward = run / "train-reward/test_auc.json"
    if reward.is_file():
        test = json.loads(reward.read_text())
        signals = [k for k in next(iter(test.values())) if k not in ("all", "randomised")]
        rows = [
            [
                f"{pooling} / {signal}",
                v[signal]["session_auc_same_length"],
                v[signal]["session_auc"],
                v[signal]["impression_auc"],
            ]
            for pooling, v in test.items()
            for signal in [*signals, "all"]
        ]
        rows += [  # the sessions a randomly exposing policy showed: the logged ones most like another policy's
            [
                f"{pooling} / all, randomised sessions",
                v["randomised"]["all"]["session_auc_same_length"],
                v["randomised"]["all"]["session_auc"],
                v["randomised"]["all"]["impression_auc"],
            ]
            for pooling, v in test.items()
            if "randomised" in v
        ]
        sections["Session reward model (test days)"] = (
            "AUC per tower on the test days. Session level: a session's label is 1 when any of its items has the "
            "signal; the same-length column compares only sessions with the same number of items (the plain "
            "session AUC mostly measures session length). Impression level: every impression scored as a one-item "
            "session. The first pooling is the configured model, the second its baseline (`reward.baseline_pooling`). "
            "Where the data marks randomly exposed impressions (`is_rand`), the `all, randomised sessions` rows give "
            "the means over those sessions alone: the logged sessions most like the ones the model scores when it "
            "chooses and aligns (sessions no logging policy chose)."
            "\n\n" + _table(rows, ["pooling / tower", "session AUC (same length)", "session AUC", "impression AUC"])
        )
    cascade = run / "cascade/summary.json"
    if cascade.is_file():
        result = json.loads(cascade.read_text())
        tasks = sorted(result["ranker_test_auc"])
        sections["Cascade ranker"] = (
            "AUC of the DLRM ranker's tasks, the kept epoch (selected on validation)."
            "\n\n"
            + _table(
                [[split, *[result[f"ranker_{split}_auc"][t] for t in tasks]] for split in ("valid", "test")],
                ["split", *tasks],
            )
        )
    aligned = run / "align/iterations.jsonl"
    if aligned.is_file():
        records = pd.read_json(aligned, lines=True)
        columns = [
            c
            for c in (
                "iteration",
                "pairs",
                "train_dpo_accuracy",
                "heldout_reward_top_before",
                "heldout_reward_top_after",
                "heldout_reward_mean_after",
                "heldout_reward_max_after",
                "heldout_kl_to_reference_after",
            )
            if c in records.columns
        ]
        sections["Alignment iterations"] = (
            "Per iteration: preference pairs, DPO accuracy on them during training, and the alignment reward "
            "(`align.reward_source`: the reward model, the cascade's ranker or their mix) of the sessions generated "
            "for held-out (validation) users before and after the iteration (top session, mean and max over the "
            "beam), with the KL to the reference on those sessions."
            "\n\n" + _table(records[columns].values.tolist(), columns)
        )
    return sections


def protocol_deviations(split: SplitConfig, evaluation: EvalConfig) -> List[str]:
    """The ways a run departs from docs/EVAL.md's protocol, for the report."""
    out: List[str] = []
    if evaluation.exclude_history:
        out.append("history items are excluded from generation (docs/EVAL.md keeps them in the ranking)")
    if split.protocol == "B":
        out.append(
            f"sessions by the '{split.session_rule}' rule"
            + ("" if split.session_rule == "window" else f" (gap {split.session_gap_minutes} min)")
        )
        if split.positive_col != "click":
            out.append(f"positive item rule: {split.positive_col} = 1 (docs/EVAL.md: is_click = 1)")
        if split.train_stride not in (0, split.session_items):
            out.append(f"training runs of m start every {split.train_stride} positives (overlapping targets)")
    if split.max_history != 50:
        out.append(f"history length n = {split.max_history} (the common choice is 50)")
    return out
