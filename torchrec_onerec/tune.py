"""``onerec tune``: choose a config on the validation users with Optuna, then score the choice on test once.

The search is the config's ``tune`` section (``tune_config.TuneConfig``): the keys to vary and what to try for
each, a trial budget, the seeds every trial runs at, and the arm and metric that score it. A trial is one set of
values; for each seed it runs, in ``<run_dir>/tune/trial-NNN/seed-S``, only the stages that arm reads (its
``arms.Arm.needs`` and what they read, with ``eval.split=valid``), then scores the arm on the validation users
(``arms.evaluate_arm``); its score is the mean over the seeds. Optuna's TPE sampler, seeded by the config's
``seed``, proposes the next trial from the scores so far. The test split is never read during the search.

Then ``<run_dir>/tune/`` holds ``trials.csv`` and ``trials.md`` (every trial: its values, the score at each seed,
the mean) and ``best.yaml``: the resolved config with the best trial's values, ``eval.split=test``, and a header
saying how it was chosen. With ``tune.score_test`` (the default), every stage of ``best.yaml`` then runs once in
``run_dir``, scoring every arm of ``compare.arms`` on the test users: that report is the result.

A trial directory that already completed its stages with the same inputs is reused (``pipeline`` fingerprints),
so an interrupted search resumes where it stopped. Tuning runs in one process (not under torchrun).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import optuna

from torchrec_onerec.arms import arm_for, evaluate_arm
from torchrec_onerec.config import OneRecConfig, load_config, to_yaml
from torchrec_onerec.context import PipelineContext
from torchrec_onerec.errors import ConfigError
from torchrec_onerec.pipeline import STAGES, run_pipeline, stage_closure
from torchrec_onerec.run_dir import RunDir, atomic_write_text

LOG = logging.getLogger("torchrec_onerec")


@dataclass
class TuneResult:
    """What ``tune`` found.

    Args:
        best_values (Dict[str, Any]): config key -> the best trial's value.
        best_score (float): its mean validation score.
        trials (List[Dict[str, Any]]): every trial: ``number``, ``values``, ``scores`` (per seed), ``score``.
        best_config (str): the written ``best.yaml``.
        test_run (Optional[Dict[str, object]]): the final run's ``run_pipeline`` result (None without
            ``tune.score_test``).
    """

    best_values: Dict[str, Any]
    best_score: float
    trials: List[Dict[str, Any]]
    best_config: str
    test_run: Optional[Dict[str, object]] = field(default=None)


def override(key: str, value: Any) -> str:
    """A ``key=value`` command-line override that OmegaConf reads back as ``value`` (lists and strings included).

    Example:
        >>> override("tokenizer.codebook_sizes", [32, 32]), override("model.history_tokens", "items")
        ('tokenizer.codebook_sizes=[32, 32]', 'model.history_tokens="items"')
    """
    return f"{key}={json.dumps(value)}"


def _suggest(trial: optuna.Trial, space: Dict[str, Any]) -> Dict[str, Any]:
    """The trial's value for every key of ``space`` (lists: one of the values; ranges: a number in it)."""
    values: Dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            # Optuna's categorical values must be scalars: choose among the values' JSON texts.
            values[key] = json.loads(trial.suggest_categorical(key, [json.dumps(v) for v in spec]))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log", False)))
        else:
            values[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False))
            )
    return values


def _validation_score(config: OneRecConfig) -> float:
    """Run the stages ``config.tune.arm`` reads in ``config.run_dir`` and score the arm on the validation users."""
    name, metric = config.tune.arm, config.tune.metric
    needed = {stage for need in arm_for(name).needs for stage in stage_closure(need, config)}
    ran = run_pipeline(config, stages=[s for s in STAGES if s in needed])["config"]  # with sizes_from_data set
    assert isinstance(ran, OneRecConfig)
    result, why = evaluate_arm(PipelineContext(ran, RunDir(config.run_dir)), name, reward_model=None)
    if result is None:
        raise ValueError(f"tune.arm={name!r} cannot be scored on this data: {why}")
    if metric not in result.metrics:
        raise ValueError(
            f"tune.metric={metric!r} is not a metric of arm {name!r}; its metrics are {sorted(result.metrics)}"
        )
    return float(result.metrics[metric])


def _table(trials: List[Dict[str, Any]], seeds: Sequence[int]) -> tuple[str, str]:
    """(csv, markdown) of the trials, best score marked in the markdown."""
    keys = list(dict.fromkeys(k for t in trials for k in t["values"]))
    header = ["trial", *keys, *(f"seed {s}" for s in seeds), "mean"]
    rows = [
        [
            t["number"],
            *(json.dumps(t["values"].get(k)) for k in keys),
            *(f"{v:.4f}" for v in t["scores"]),
            f"{t['score']:.4f}",
        ]
        for t in trials
    ]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    best = max(range(len(trials)), key=lambda i: trials[i]["score"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if i == best:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return out.getvalue(), "\n".join(lines) + "\n"


def tune(config_path: Optional[str], overrides: Sequence[str] = ()) -> TuneResult:
    """Search the ``tune`` section's space on the validation users, write the best config, score it on test once.

    Args:
        config_path: the YAML file (None: the defaults), as for ``onerec run``.
        overrides: ``key=value`` overrides; they hold for every trial and for the final run.

    Returns:
        TuneResult.

    Raises:
        ConfigError: the space is empty, names a key the config does not have, or ``tune.arm`` is not in
            ``compare.arms``.
        ValueError: the arm cannot be scored on this data, or the metric is not one of its metrics.
    """
    base = load_config(config_path, list(overrides))
    settings = base.tune
    if not settings.space:
        raise ConfigError(
            "tune.space is empty: name the config keys to try, e.g. "
            "tune.space='{train.optim.learning_rate: {low: 1e-4, high: 1e-2, log: true}}'"
        )
    if settings.arm not in base.compare.arms:
        raise ConfigError(
            f"tune.arm={settings.arm!r} is not in compare.arms={list(base.compare.arms)}; add it "
            "there, so that its stages run and the final test run scores it"
        )
    folder = Path(base.run_dir) / "tune"

    def trial_config(values: Dict[str, Any], *extra: str) -> OneRecConfig:
        return load_config(config_path, [*overrides, *(override(k, v) for k, v in values.items()), *extra])

    trial_config({k: (v[0] if isinstance(v, list) else v["low"]) for k, v in settings.space.items()})  # names bad keys

    trials: List[Dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        values = _suggest(trial, dict(settings.space))
        scores = []
        for seed in settings.seeds:
            run_dir = folder / f"trial-{trial.number:03d}" / f"seed-{seed}"
            scores.append(
                _validation_score(trial_config(values, f"seed={seed}", "eval.split=valid", f"run_dir={run_dir}"))
            )
        score = sum(scores) / len(scores)
        trials.append({"number": trial.number, "values": values, "scores": scores, "score": score})
        LOG.info(
            "tune: trial %d/%d %s: validation %s of %s %s, mean %.4f",
            trial.number + 1,
            settings.trials,
            values,
            settings.metric,
            settings.arm,
            [round(s, 4) for s in scores],
            score,
        )
        return score

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=base.seed))
    study.optimize(objective, n_trials=settings.trials)
    best = max(trials, key=lambda t: t["score"])
    table_csv, table_md = _table(trials, settings.seeds)
    atomic_write_text(folder / "trials.csv", table_csv)
    atomic_write_text(folder / "trials.md", table_md)
    chosen = trial_config(best["values"], "eval.split=test")
    header = (
        f"# Chosen by `onerec tune` on validation {settings.metric} of arm {settings.arm}, the mean over seeds "
        f"{list(settings.seeds)}:\n# trial {best['number']} of {settings.trials}, {best['score']:.4f} "
        f"(every trial: {folder / 'trials.md'}). The test split was not read to choose.\n"
        + "".join(f"# {override(k, v)}\n" for k, v in best["values"].items())
    )
    best_path = folder / "best.yaml"
    atomic_write_text(best_path, header + to_yaml(chosen))
    LOG.info(
        "tune: best trial %d, validation %s %.4f; config written to %s",
        best["number"],
        settings.metric,
        best["score"],
        best_path,
    )
    test_run = run_pipeline(chosen) if settings.score_test else None
    return TuneResult(best["values"], best["score"], trials, str(best_path), test_run)
