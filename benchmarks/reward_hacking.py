"""Why alignment to the learned session reward model can lower the true reward (reward hacking), as JSON lines.

Reads a finished synthetic run (``onerec run configs/synthetic.yaml``: its data, codebook, trained model
``train/``, reward model ``train-reward/`` and aligned model ``align/``) and compares, on ``--users`` test users
drawn once from the seed, what the reward model believes with what the world (protocol C) knows:

- ``reward_model``: each user's history with every catalogue item as a 1-item session: within-user Spearman
  correlation of the reward model's reward with the world's true reward, with the user's true interest in the
  item's topic and with the item's quality; ``item_mean_share``, the share of the score's variance that an
  item-only effect explains (the same for the truth); and ``history_topic_gain``: for fake users whose history
  is 10 items of one topic, the mean reward of that topic's items minus that of other topics' items (0 = the
  history does not personalise the model at all). The truth's own values sit beside each number.
- ``session_mix`` (same users): for each user, 5 items of their top topic against the same top-topic items
  interleaved with items of their second topic (``mixed``) or of their 11th topic (``far``): how often the reward
  model, and the world, prefer the mixed session. The world's diversity penalty favours a mix with a liked
  topic; a reward model that learnt "more of the same topic" from the logs (the logging policy shows runs of
  one topic to the users who like it most) prefers the single-topic session.
- ``generation`` per policy (``ntp`` = the trained model, ``aligned`` = the last alignment iteration): N beam
  candidates per user (``--candidates``, as alignment draws them); of the top beam (the served session): true
  reward, reward-model reward, coverage (distinct items over users), median popularity rank and mean training
  count of its items, distinct topics per session, the user's true interest in the items' topics, item quality,
  items that are in the user's history, true click probability per slot.
- ``ranking`` per policy: over each user's N candidates (what pair selection compares): mean within-user
  Spearman of the reward model's reward (and of the policy's log-probability) with the true reward; the true
  reward of the candidate the reward model ranks best and worst (alignment's chosen / rejected), how often the
  chosen is truly better than the rejected; and the within-user Spearman of the reward model and of the truth
  with topics per session, interest, quality and history overlap (where they disagree, alignment is pushed
  away from the truth).
- ``ceilings``: the same ranking numbers for scores that know part of the truth, over the trained model's
  candidates: per-item true reward without session effects, the same without the idiosyncratic user-item noise
  (interest and quality only: the most a reward model can learn from content and history), quality only and
  topic novelty only.

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/reward_hacking.py [--run-dir runs/synthetic]
        [--reward-model PATH] [--aligned PATH] [--users 300] [--candidates 32] [--seed 0]

About 15 s on one CPU core for 300 users and 32 candidates. Measured on ``runs/synthetic`` (reward model of
the id-only defaults) and on the same run with this package's reward defaults (semantic IDs, no user-id row,
``reward.embedding_init=0.5``, learning rate 3e-3, ``reward.optim.epochs=5``):

- ``history_topic_gain`` 0.000 -> 0.388; ``item_mean_share`` 0.73 -> 0.65 (truth 0.21); catalogue Spearman with
  the user's interest -0.002 -> 0.065 (truth 0.39), with quality 0.79 -> 0.70 (truth 0.60);
- trained model's candidates: Spearman with the true reward 0.106 -> 0.197 (the policy's own log-probability:
  0.118); with interest -0.17 -> -0.04 (truth +0.22), topics 0.27 -> 0.09 (truth 0.32);
- ``session_mix`` prefers_mixed 0.49 -> 0.40 (truth 0.69), prefers_far 0.53 -> 0.31 (truth 0.18);
- the aligned model's top beam: interest 0.122 -> 0.207 (trained model 0.231), true reward 3.54 -> 4.33 (4.42);
- ceilings: items alone 0.80, interest and quality 0.395, quality only 0.35.

On the world with a fifth of its sessions randomised (``data.synthetic.random_session_rate=0.2``, the default
since; its own trained and aligned models): over the trained model's candidates, Spearman with the true reward
0.274 and the chosen candidate truly better than the rejected in 76% of pairs (69% above); the aligned model's
top beam holds 2.07 topics per session (trained model 1.36), quality 1.10 (0.89), interest 0.137 (0.187), median
popularity rank 15 (59): alignment raises the true reward through diversity and quality, and moves towards
popular items and away from the user's interest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from torchrec_onerec.alignment.ipa import model_file
from torchrec_onerec.alignment.candidates import scored_candidates
from torchrec_onerec.config import load_config
from torchrec_onerec.data.samples import Sample, SampleSet
from torchrec_onerec.datasets.synthetic import CLICK_BIAS, INTEREST_SCALE, LIKE_BIAS, LONG_VIEW_BIAS, SyntheticWorld
from torchrec_onerec.eval.protocols import evaluation_users
from torchrec_onerec.eval.simulated import world_reward_fn
from torchrec_onerec.models.reward import SessionRewardModel
from torchrec_onerec.models.reward_scoring import session_rewards
from torchrec_onerec.run_dir import RunDir
from torchrec_onerec.context import PipelineContext
from torchrec_onerec.train.export import load_exported
from torchrec_onerec.train.reward_io import load_reward_model

CPU = torch.device("cpu")
HISTORY_ITEMS = 10  # items of one topic in a fake user's history (history_topic_gain)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks of each row of x [U, N] (ties share their mean rank)."""
    order = np.argsort(x, axis=1, kind="stable")
    ranks = np.empty_like(x, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(x.shape[1], dtype=np.float64)[None].repeat(len(x), 0), axis=1)
    for u in range(len(x)):  # ties: the mean rank of the tied group
        values, inverse = np.unique(x[u], return_inverse=True)
        if len(values) < x.shape[1]:
            ranks[u] = (np.bincount(inverse, ranks[u]) / np.bincount(inverse))[inverse]
    return ranks


def within_user_spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over rows of the Spearman correlation of x [U, N] and y [U, N] (rows where either is constant skipped)."""
    rx, ry = _ranks(np.asarray(x, np.float64)), _ranks(np.asarray(y, np.float64))
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    norm = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    keep = norm > 0
    return float(((rx * ry).sum(1)[keep] / norm[keep]).mean()) if keep.any() else float("nan")


def _item_reward(affinity: np.ndarray) -> np.ndarray:
    """The world's expected click + long view + 2 like of an item alone in slot 0, from its affinity."""
    sig = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    return sig(affinity + CLICK_BIAS) * (1 + sig(affinity + LONG_VIEW_BIAS) * (1 + 2 * sig(affinity + LIKE_BIAS)))


def _item_mean_share(scores: np.ndarray) -> float:
    """Share of the variance of scores [U, I] explained by the item (column) means."""
    total = ((scores - scores.mean()) ** 2).mean()
    return float(1.0 - ((scores - scores.mean(0)) ** 2).mean() / total) if total > 0 else float("nan")


def reward_model_lines(model: SessionRewardModel, world: SyntheticWorld, users: SampleSet) -> Dict[str, Any]:
    """Catalogue-level facts of the reward model against the world (module docstring, ``reward_model``)."""
    num_items = world.num_items
    sessions = np.full((len(users), num_items, 1), -1, np.int64)
    sessions[:, :, 0] = np.arange(num_items)
    scores = session_rewards(model, users, sessions, batch_size=8192, device=CPU)  # [U, I]
    truth = world.session_reward(
        np.repeat(users.user, num_items), np.tile(np.arange(num_items), len(users))[:, None]
    ).reshape(len(users), num_items)
    interest = world.user_interest[users.user][:, world.item_topic]
    quality = np.broadcast_to(world.item_quality, truth.shape)
    num_topics = world.config.num_topics
    fake = SampleSet.from_samples(
        [
            Sample(
                int(users.user[0]),
                np.flatnonzero(world.item_topic == t)[:HISTORY_ITEMS],
                np.array([0]),
                np.zeros((1, len(users.signals)), np.float32),
            )
            for t in range(num_topics)
        ],
        users.signals,
    )
    by_history = session_rewards(model, fake, sessions[:num_topics], batch_size=8192, device=CPU)  # [T, I]
    topic_means = np.stack([by_history[:, world.item_topic == t].mean(1) for t in range(num_topics)], 1)  # [T, T]
    off_diagonal = (topic_means.sum() - np.trace(topic_means)) / (num_topics * (num_topics - 1))
    return {
        "users": len(users),
        "items": num_items,
        "spearman_true": within_user_spearman(scores, truth),
        "spearman_interest": within_user_spearman(scores, interest),
        "spearman_interest_truth": within_user_spearman(truth, interest),
        "spearman_quality": within_user_spearman(scores, quality),
        "spearman_quality_truth": within_user_spearman(truth, quality),
        "item_mean_share": _item_mean_share(scores),
        "item_mean_share_truth": _item_mean_share(truth),
        "history_topic_gain": float(np.trace(topic_means) / num_topics - off_diagonal),
        "history_topic_gain_relative": float(
            (np.trace(topic_means) / num_topics - off_diagonal) / max(abs(off_diagonal), 1e-12)
        ),
    }


def session_mix_lines(
    model: SessionRewardModel, world: SyntheticWorld, users: SampleSet, *, seed: int
) -> Dict[str, float]:
    """How often the reward model and the world prefer a two-topic session to a one-topic one (``session_mix``)."""
    rng = np.random.default_rng([seed, 0x5E5])
    by_interest = np.argsort(-world.user_interest[users.user], axis=1)
    sessions = np.zeros((len(users), 3, 5), np.int64)
    for u in range(len(users)):
        own, second, far = (
            rng.choice(np.flatnonzero(world.item_topic == by_interest[u, k]), 5, replace=False) for k in (0, 1, 10)
        )
        sessions[u, 0] = own
        sessions[u, 1] = [own[0], second[0], own[1], second[1], own[2]]
        sessions[u, 2] = [own[0], far[0], own[1], far[1], own[2]]
    truth = world.session_reward(np.repeat(users.user, 3), sessions.reshape(-1, 5)).reshape(len(users), 3)
    estimate = session_rewards(model, users, sessions, batch_size=4096, device=CPU)
    return {
        "users": len(users),
        "prefers_mixed": float((estimate[:, 1] > estimate[:, 0]).mean()),
        "prefers_mixed_truth": float((truth[:, 1] > truth[:, 0]).mean()),
        "prefers_far": float((estimate[:, 2] > estimate[:, 0]).mean()),
        "prefers_far_truth": float((truth[:, 2] > truth[:, 0]).mean()),
    }


def _session_features(world: SyntheticWorld, users: SampleSet, items: np.ndarray) -> Dict[str, np.ndarray]:
    """Per candidate session [U, N]: distinct topics, mean interest, mean quality, items in the user's history."""
    topics = world.item_topic[items]  # [U, N, M]
    sorted_topics = np.sort(topics, axis=2)
    distinct = 1 + (np.diff(sorted_topics, axis=2) != 0).sum(2)
    interest = world.user_interest[users.user[:, None, None], topics].mean(2)
    in_history = np.stack([np.isin(items[u], users[u].history).sum(1) for u in range(len(users))])
    return {
        "topics": distinct.astype(np.float64),
        "interest": interest,
        "quality": world.item_quality[items].mean(2),
        "in_history": in_history.astype(np.float64),
    }


def _ranking(score: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Within-user Spearman, and the truth of the best / worst candidate by ``score`` (alignment's pair); the
    pair counts only for users whose scores are not all equal (``users_with_pair``)."""
    rows = np.arange(len(truth))
    best, worst = score.argmax(1), score.argmin(1)
    paired = score[rows, best] > score[rows, worst]
    right = truth[rows, best] > truth[rows, worst]
    return {
        "spearman": within_user_spearman(score, truth),
        "true_of_best": float(truth[rows, best].mean()),
        "true_of_worst": float(truth[rows, worst].mean()),
        "pair_right_way": float(right[paired].mean()) if paired.any() else float("nan"),
        "users_with_pair": int(paired.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/synthetic")
    parser.add_argument("--reward-model", default="", help="default: RUN_DIR/train-reward/reward_model.pt")
    parser.add_argument("--aligned", default="", help="default: the align stage's last model ('' and no align: skip)")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    run = Path(args.run_dir)
    cfg = load_config(str(run / "config.yaml"), [])
    ctx = PipelineContext(cfg, RunDir(run))
    world, data, split, book = ctx.world, ctx.data, ctx.split, ctx.codebook
    if world is None:
        raise SystemExit(f"{run} is not a synthetic run (data.source={cfg.data.source}); protocol C needs the world")
    reward_path = Path(args.reward_model) if args.reward_model else run / "train-reward" / "reward_model.pt"
    reward_model = load_reward_model(reward_path, num_items=data.num_items, signals=split.train.signals)
    rows, _ = evaluation_users(split.test)
    rng = np.random.default_rng(args.seed)
    users = split.test.subset(np.sort(rng.choice(rows, size=min(args.users, len(rows)), replace=False)))
    policies = {"ntp": Path(ctx.run.read_json("train/summary.json")["best_model_path"])}
    aligned = Path(args.aligned) if args.aligned else None
    if aligned is None and (run / "align" / "summary.json").is_file():
        completed = ctx.run.read_json("align/summary.json").get("iterations", 0)
        aligned = run / "align" / model_file(completed) if completed else None
    if aligned is not None:
        policies["aligned"] = aligned
    common = {"bench": "reward_hacking", "run_dir": str(run), "reward_model": str(reward_path)}
    print(
        json.dumps(
            {
                **common,
                "line": "setup",
                "users": len(users),
                "candidates": args.candidates,
                "policies": {k: str(v) for k, v in policies.items()},
                "reward_config": reward_model.config.__dict__,
                "seconds": round(time.perf_counter() - start, 1),
            }
        ),
        flush=True,
    )
    print(json.dumps({**common, "line": "reward_model", **reward_model_lines(reward_model, world, users)}), flush=True)
    print(
        json.dumps({**common, "line": "session_mix", **session_mix_lines(reward_model, world, users, seed=args.seed)}),
        flush=True,
    )

    true_reward = world_reward_fn(world, data)
    popularity = np.bincount(split.train_sequences["item_id"].to_numpy(), minlength=data.num_items)
    popularity_rank = np.argsort(np.argsort(-popularity, kind="stable"), kind="stable")
    index = book.prefix_index()
    ntp_candidates: Dict[str, np.ndarray] = {}
    for name, path in policies.items():
        model = load_exported(path, cfg.model, book.vocab_sizes)
        parts: List[Dict[str, np.ndarray]] = []
        for cand in scored_candidates(
            model,
            users,
            true_reward,
            codes=book.codes,
            prefix_index=index,
            num_candidates=args.candidates,
            batch_size=32,
        ):
            estimated = session_rewards(reward_model, users.subset(cand.rows), cand.items, batch_size=4096, device=CPU)
            parts.append(
                {
                    "items": cand.items,
                    "truth": cand.rewards,
                    "estimate": estimated,
                    "log_prob": cand.log_probs.cpu().numpy(),
                }
            )
        got = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        if not np.isfinite(got["log_prob"]).all():
            raise SystemExit("filler candidates came back; lower --candidates")
        items, truth, estimate = got["items"], got["truth"], got["estimate"]
        top = items[:, 0]  # [U, M] the most probable session: the one served
        slots = world.item_probabilities(users.user, top)["click"]
        features = _session_features(world, users, items)
        print(
            json.dumps(
                {
                    **common,
                    "line": "generation",
                    "policy": name,
                    "model": str(path),
                    "true_reward_top": float(truth[:, 0].mean()),
                    "true_reward_mean": float(truth.mean()),
                    "true_reward_max": float(truth.max(1).mean()),
                    "estimated_reward_top": float(estimate[:, 0].mean()),
                    "estimated_reward_mean": float(estimate.mean()),
                    "coverage_top": int(len(np.unique(top))),
                    "popularity_rank_median_top": float(np.median(popularity_rank[top])),
                    "popularity_count_mean_top": float(popularity[top].mean()),
                    **{f"{key}_top": float(value[:, 0].mean()) for key, value in features.items()},
                    "click_per_slot_top": [round(float(v), 4) for v in slots.mean(0)],
                }
            ),
            flush=True,
        )
        line = {
            **common,
            "line": "ranking",
            "policy": name,
            **_ranking(estimate, truth),
            "spearman_log_prob": within_user_spearman(got["log_prob"], truth),
            "true_of_top_beam": float(truth[:, 0].mean()),
            "true_of_truly_best": float(truth.max(1).mean()),
        }
        for key, value in features.items():
            line[f"spearman_{key}_estimate"] = within_user_spearman(value, estimate)
            line[f"spearman_{key}_truth"] = within_user_spearman(value, truth)
        print(json.dumps(line), flush=True)
        if name == "ntp":
            ntp_candidates = {"items": items, "truth": truth}

    items, truth = ntp_candidates["items"], ntp_candidates["truth"]
    U, N, M = items.shape
    who = np.repeat(users.user, N)[:, None]
    flat = items.reshape(U * N, M)
    topics = world.item_topic[flat]
    earlier_same = (topics[:, :, None] == topics[:, None, :]) & np.tri(M, M, k=-1, dtype=bool)[None]
    novelty = np.exp(-world.config.diversity_weight * earlier_same.sum(2))
    without_noise = INTEREST_SCALE * world.user_interest[who, topics] + world.item_quality[flat]
    scores = {
        "items_alone": _item_reward(world._affinity(who, flat)).sum(1),
        "interest_and_quality": _item_reward(without_noise).sum(1),
        "quality_only": world.item_quality[flat].sum(1),
        "novelty_only": novelty.sum(1),
    }
    print(
        json.dumps(
            {
                **common,
                "line": "ceilings",
                "policy": "ntp",
                **{name: _ranking(value.reshape(U, N), truth) for name, value in scores.items()},
                "seconds": round(time.perf_counter() - start, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
