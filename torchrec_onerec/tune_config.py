"""Schema of the ``tune`` config section: the search that ``onerec tune`` runs (``torchrec_onerec.tune``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from torchrec_onerec.errors import ConfigError

RANGE_KEYS = {"low", "high", "log"}


@dataclass
class TuneConfig:
    """A search over config keys, each trial scored on the validation users only.

    Args:
        space: config key -> what to try: a list of values (each tried as given, e.g. ``[[32], [32, 32]]`` for
            ``tokenizer.codebook_sizes``), or a range ``{low: 1e-4, high: 1e-2, log: true}`` (integers when
            ``low`` and ``high`` are both integers). Empty: nothing to tune.
        trials: how many configs Optuna's TPE sampler (seeded by ``seed``) tries.
        seeds: every trial runs once per seed (the data, initial weights and batch order follow it); its score is
            the mean over them.
        arm: the arm of ``compare.arms`` whose validation metric scores a trial; only the stages it reads run.
        metric: that metric (``ndcg@10``, ``recall@10`` ...; higher is better).
        score_test: after the search, run every stage of the best config once more on the test split, in
            ``run_dir`` (its report is the result); false: only write the best config.

    Example:
        >>> TuneConfig(space={"train.optim.learning_rate": {"low": 1e-4}})
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: tune.space['train.optim.learning_rate'] = {'low': 0.0001} ...
    """

    space: Dict[str, Any] = field(default_factory=dict)
    trials: int = 10
    seeds: List[int] = field(default_factory=lambda: [0, 1])
    arm: str = "onerec"
    metric: str = "ndcg@10"
    score_test: bool = True

    def __post_init__(self) -> None:
        if self.trials < 1 or not self.seeds:
            raise ConfigError(f"tune.trials={self.trials} must be >= 1 and tune.seeds={list(self.seeds)} non-empty")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"tune.seeds={list(self.seeds)} repeats a seed")
        for key, spec in dict(self.space).items():
            if isinstance(spec, list):
                if not spec:
                    raise ConfigError(f"tune.space[{key!r}] is an empty list; give the values to try")
                continue
            if not (
                isinstance(spec, dict) and {"low", "high"} <= set(spec) <= RANGE_KEYS and spec["low"] < spec["high"]
            ):
                raise ConfigError(
                    f"tune.space[{key!r}] = {spec!r} must be a list of values or "
                    "{low: a, high: b, log: false} with a < b"
                )
