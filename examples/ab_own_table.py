"""A/B test OneRec against a cascade on your own interaction table.

1. Your log as a CSV, one row per impression: ``user_id,item_id,timestamp,click,long_view,like`` (here the
   tiny synthetic world exported as such a file, with string ids and timestamps in seconds).
2. The ``onerec`` pipeline on it (``data.source=table``): docs/EVAL.md protocol B, because the table has
   per-impression feedback (day split, the test target is a user's session of clicked items); semantic IDs from
   collaborative embeddings, since the table has no item content. Arms: the package's cascade (two-tower
   retrieval -> DLRM ranker, trained on your table), OneRec and the popularity floor, scored on the same test
   users, with bootstrap intervals and lifts over the cascade in ``compare/report.md``. The same from the shell::

       onerec run configs/tiny.yaml data.source=table data.path=log.csv "data.feedback_cols=[click,long_view,like]" \\
           tokenizer.embedding_source=collaborative "compare.arms=[cascade,onerec,popularity]"

3. Your production cascade as one more arm: any function that returns, for the same test users, R sessions of
   m items (best first) is scored by ``score_sessions`` and compared with ``compare_arms``
   (``your_ab/report.md``, lifts over your cascade).

Everything is tiny-config sized (120 items, two training epochs), so the numbers only show the mechanics; for a
real A/B size the model and training as in ``configs/synthetic.yaml`` or ``configs/kuairand.yaml``.

Run (about 10 s on one CPU core)::

    python examples/ab_own_table.py [--run-dir runs/example_ab]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.config import OneRecConfig, load_config
from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.data.splits import split_data
from torchrec_onerec.datasets.load import load_dataset
from torchrec_onerec.datasets.synthetic import load_synthetic
from torchrec_onerec.eval.compare import compare_arms
from torchrec_onerec.eval.protocols import EvalResult, evaluation_users, score_sessions
from torchrec_onerec.pipeline import STAGES, run_pipeline

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
FEEDBACK = ["click", "long_view", "like"]
HEADLINE = ("ndcg@10", "recall@10")


def write_your_log(path: Path, seed: int) -> int:
    """Write a stand-in for your log export (the tiny synthetic world's impressions); returns its rows."""
    world_config = load_config(str(TINY)).data.synthetic
    data, _ = load_synthetic(world_config, seed=seed)
    log = data.interactions
    table = pd.DataFrame(
        {
            "user_id": [f"user_{u}" for u in data.raw_user_ids[log["user_id"]]],
            "item_id": [f"video_{i}" for i in data.raw_item_ids[log["item_id"]]],
            "timestamp": log["timestamp"] // 1000,
            **{column: log[column] for column in FEEDBACK},
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return len(table)


def your_cascade(
    train_sequences: pd.DataFrame, users: SampleSet, num_items: int, *, num_sessions: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Stand-in for your production cascade; call your serving system here instead.

    Retrieval: the items that most often followed the user's latest item in the training sequences; ranking: by
    training popularity among them (and after them). Returns sessions [U, R, M] (best first) and scores [U, R].
    """
    items, owners = train_sequences["item_id"].to_numpy(), train_sequences["user_id"].to_numpy()
    same_user = owners[1:] == owners[:-1]
    follows = np.zeros((num_items, num_items))
    np.add.at(follows, (items[:-1][same_user], items[1:][same_user]), 1.0)
    popularity = np.bincount(items, minlength=num_items)
    latest = users.history_values[users.history_offsets[1:] - 1]  # split.min_history >= 1: every history has one
    score = follows[latest] + popularity / (popularity.max() + 1.0)  # [U, I]: retrieval count, popularity breaks ties
    M = users.session_items
    ranked = np.argsort(-score, axis=1, kind="stable")[:, : num_sessions * M]
    scores = np.broadcast_to(-np.arange(num_sessions, dtype=np.float32), (len(users), num_sessions))
    return ranked.reshape(len(users), num_sessions, M), scores.copy()


def your_arm(cfg: OneRecConfig) -> EvalResult:
    """Your cascade scored like the pipeline's arms: the same test users, the same protocol and cut-offs."""
    data = load_dataset(cfg.data, seed=cfg.seed)  # the pipeline's data and split again (deterministic)
    split = split_data(data, cfg.split)
    rows, _ = evaluation_users(split.test)
    users = split.test.subset(rows)
    sessions, scores = your_cascade(
        split.train_sequences, users, data.num_items, num_sessions=math.ceil(max(cfg.eval.ks) / users.session_items)
    )
    metrics, per_user = score_sessions(
        cfg.split.protocol,
        sessions,
        scores,
        users.target,
        ks=cfg.eval.ks,
        num_items=data.num_items,
        legality=np.ones(len(users)),
    )
    per_user.update(user=users.user.copy(), sample=rows)  # what pairs your users with the other arms'
    return EvalResult(metrics, per_user, sessions, scores, {"arm": "your_cascade"})


def print_headline(comparison: Dict[str, Any]) -> None:
    """One line per arm: the headline metrics, with the lift over the baseline (* = the interval excludes 0)."""
    for arm in comparison["arms"]:
        cells = []
        for metric in HEADLINE:
            cell = f"{metric} {comparison['means'][arm][metric]['value']:.4f}"
            if arm != comparison["baseline"]:
                versus = comparison["versus"][arm][metric]
                significant = versus["difference"]["low"] > 0 or versus["difference"]["high"] < 0
                cell += f" ({versus['lift']['value']:+.1%}{'*' if significant else ''})"
            cells.append(cell)
        print(f"  {arm:12s}  " + ", ".join(cells))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/example_ab", help="where the log and the run are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    log = run_dir / "your_log.csv"
    print(f"your log: {log} ({write_your_log(log, args.seed)} impressions)")

    cfg = load_config(
        str(TINY),
        [
            f"run_dir={run_dir / 'run'}",
            f"seed={args.seed}",
            "data.source=table",
            f"data.path={log}",
            f"data.feedback_cols=[{','.join(FEEDBACK)}]",
            "split.protocol=B",
            "split.positive_col=click",
            "split.labels={swt: long_view, vtr: click, ltr: like}",
            "tokenizer.embedding_source=collaborative",
            "compare.arms=[cascade,onerec,popularity]",
            "compare.baseline=cascade",
        ],
    )
    stages = [stage for stage in STAGES if stage != "align"]  # no onerec_ipa arm, so no alignment stage
    result = run_pipeline(cfg, stages=stages)
    comparison = result["stages"]["compare"]  # type: ignore[index]
    print(f"\nA/B report: {comparison['report']}")
    print_headline(comparison)

    arms = {"your_cascade": your_arm(cfg)}
    saved = run_dir / "run" / "evaluate" / "arms"  # the evaluate stage's per-user results of each arm
    arms.update({arm: EvalResult.load(saved / f"{arm}.npz") for arm in cfg.compare.arms})
    yours = compare_arms(
        arms, baseline="your_cascade", resamples=cfg.compare.resamples, level=cfg.compare.level, seed=cfg.seed
    )
    report = run_dir / "your_ab" / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# Your cascade against OneRec ({yours.num_users} test users)\n\n" + yours.to_markdown())
    print(f"\nyour cascade as the baseline: {report}")
    print_headline(yours.to_json())
    return {arm: {m: yours.means[arm][m].value for m in HEADLINE} for arm in yours.arms}


if __name__ == "__main__":
    main()
