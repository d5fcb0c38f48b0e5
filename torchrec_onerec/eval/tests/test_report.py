"""The comparison report: every section and figure is written, and it names the data's credit."""

from __future__ import annotations

import numpy as np

from torchrec_onerec.eval.compare import compare_arms
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.report import write_comparison_report


def _arm(values: np.ndarray) -> EvalResult:
    U = len(values)
    per_user = {
        "user": np.arange(U),
        "sample": np.arange(U),
        "true_reward": values,
        "ndcg@5": values / 10,
        "legality": np.ones(U),
    }
    return EvalResult({}, per_user, np.zeros((U, 1, 2), np.int64), np.zeros((U, 1), np.float32))


def test_report_has_tables_figures_deviations_and_credits(tmp_path):
    rng = np.random.default_rng(0)
    arms = {"cascade": _arm(rng.random(40)), "onerec": _arm(rng.random(40) + 0.5)}
    comparison = compare_arms(arms, baseline="cascade", resamples=100)
    report = write_comparison_report(
        tmp_path / "compare",
        title="A/B",
        comparison=comparison,
        protocols=["B", "C"],
        settings={"users": 40, "m": 2},
        deviations=["history items kept"],
        data_source="kuairand",
        per_user={a: r.per_user for a, r in arms.items()},
        curves={"train": {"loss": ([1, 2, 3], [3.0, 2.0, 1.5])}},
        curve_x_labels={"train": "optimiser step"},
    )
    text = report.read_text()
    for needed in (
        "protocol B",
        "protocol C",
        "| onerec |",
        "history items kept",
        "CC BY-SA 4.0",
        "metrics.png",
        "distribution.png",
        "training_curves.png",
        "legality",
    ):
        assert needed in text, needed
    for name in ("metrics.png", "distribution.png", "training_curves.png", "comparison.json"):
        assert (tmp_path / "compare" / name).stat().st_size > 1000, name


def test_the_reward_model_section_adds_the_randomised_sessions_when_the_data_has_them(tmp_path) -> None:
    import json

    from torchrec_onerec.eval.report import stage_sections

    def aucs(value: float) -> dict:
        return {"session_auc_same_length": value, "session_auc": value, "impression_auc": value}

    (tmp_path / "train-reward").mkdir()
    test = {"attention": {"vtr": aucs(0.61), "all": aucs(0.62), "randomised": {"vtr": aucs(0.55), "all": aucs(0.57)}}}
    (tmp_path / "train-reward/test_auc.json").write_text(json.dumps(test))
    section = stage_sections(tmp_path)["Session reward model (test days)"]
    assert "| attention / vtr | 0.61" in section and "| attention / all, randomised sessions | 0.57" in section
    assert "randomised / " not in section  # not read as a tower
    del test["attention"]["randomised"]
    (tmp_path / "train-reward/test_auc.json").write_text(json.dumps(test))
    assert "randomised sessions |" not in stage_sections(tmp_path)["Session reward model (test days)"]
