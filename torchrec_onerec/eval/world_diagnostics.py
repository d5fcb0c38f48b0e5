"""Protocol C diagnostics: where each arm's sessions stand between the world's floor and its ceiling, and why.

The A/B (``eval.simulated``) says which arm's sessions the world rewards more; this module says what the gap is
made of. For the compared users it builds reference sessions from the world's own knowledge, never from a model:

- ``ceiling``: each slot filled greedily with the item of highest true marginal reward given the slots already
  filled (``SyntheticWorld.greedy_sessions``): position, diversity and repeat effects included;
- ``ceiling without z``: the same rule for a world that knows every item's topic and quality and the user's
  interests, but not the user's idiosyncratic taste for each item (the pair term z(u, i) of the affinity), which
  nothing logged reveals for an item the user was never shown: the most any model can be expected to reach;
- ``ceiling from history``: the same again, the user's interests replaced by what their history shows (the
  topics of their history items, with the world's Dirichlet prior: ``history_interest``): the most a model that
  reads only the history can be expected to reach, if it knew every item's topic and quality exactly;
- ``top items``: the m items of highest true reward each shown alone, put together (no session effects);
- ``logging policy``: a fresh session of the policy that logged the data (``SyntheticWorld.logging_sessions``);
- ``uniform random``: m distinct items drawn uniformly.

For every arm's served session and every reference it reports the mean true reward and its share of the
ceiling's, and what the session is made of: distinct topics per session, mean item quality, the user's true
interest in the items' topics, how many items the user already engaged with, and catalogue coverage (distinct
items served over all users, as a share of the catalogue). A gap from low interest is personalisation; from
few topics, diversity; from low quality, item quality; low coverage with high quality is popularity.

Shape legend: U users, M session items.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

from torchrec_onerec.data.samples import SampleSet
from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.synthetic import SyntheticWorld
from torchrec_onerec.eval.protocols import EvalResult
from torchrec_onerec.eval.simulated import served_sessions, world_item_ids

CEILING = "ceiling"
REFERENCES = (
    CEILING,
    "ceiling without z",
    "ceiling from history",
    "top items",
    "logging policy",
    "uniform random",
)


def history_interest(world: SyntheticWorld, histories: Sequence[np.ndarray]) -> np.ndarray:
    """[U, num_topics] each user's interests as their history shows them: the posterior mean of a Dirichlet with
    the world's own concentration after counting the topics of the history's items (uniform for no history).

    Example:
        >>> from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
        >>> world = SyntheticWorld(SyntheticConfig(num_users=4, num_items=20, num_topics=4), seed=0)
        >>> items = np.flatnonzero(world.item_topic == 2)[:3]
        >>> est = history_interest(world, [items, np.array([], np.int64)])
        >>> int(est[0].argmax()), est[1].tolist(), bool(np.allclose(est.sum(axis=1), 1.0))
        (2, [0.25, 0.25, 0.25, 0.25], True)
    """
    topics, alpha = world.config.num_topics, world.config.interest_concentration
    counts = np.zeros((len(histories), topics))
    for row, items in enumerate(histories):
        items = np.asarray(items, np.int64)
        np.add.at(counts[row], world.item_topic[items[items >= 0]], 1.0)
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + topics * alpha)


def reference_sessions(
    world: SyntheticWorld, users: np.ndarray, m: int, *, seed: int, histories: Sequence[np.ndarray]
) -> Dict[str, np.ndarray]:
    """The world's reference sessions (module docstring) for raw world users [U] with these histories (U arrays of
    world item ids): ``{name: [U, m] world items}``.

    Example:
        >>> from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
        >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=30, num_topics=4), seed=0)
        >>> refs = reference_sessions(world, np.arange(10), 3, seed=0, histories=[np.arange(3)] * 10)
        >>> list(refs) == list(REFERENCES), refs[CEILING].shape
        (True, (10, 3))
        >>> reward = {k: world.session_reward(np.arange(10), v).mean() for k, v in refs.items()}
        >>> bool(reward["ceiling"] >= reward["top items"] > reward["uniform random"])
        True
    """
    if len(histories) != len(users):
        raise ValueError(f"{len(histories)} histories for {len(users)} users: pass one (maybe empty) per user")
    rng = np.random.default_rng([int(seed), 0xD1A6])
    random = np.argsort(rng.random((len(users), world.num_items)), axis=1)[:, :m]
    return {
        CEILING: world.greedy_sessions(users, m),
        "ceiling without z": world.greedy_sessions(users, m, pair_term=False),
        "ceiling from history": world.greedy_sessions(
            users, m, interest=history_interest(world, histories), pair_term=False
        ),
        "top items": world.best_items(users, m),
        "logging policy": world.logging_sessions(users, m, seed=seed),
        "uniform random": random.astype(np.int64),
    }


def session_profile(
    world: SyntheticWorld, users: np.ndarray, sessions: np.ndarray, histories: Sequence[np.ndarray]
) -> Dict[str, float]:
    """What served sessions are made of (module docstring), means over users.

    Args:
        world (SyntheticWorld): the world.
        users (np.ndarray): [U] raw world user ids.
        sessions (np.ndarray): [U, M] raw world item ids, -1 for an empty slot.
        histories (Sequence[np.ndarray]): U arrays of raw world item ids the user engaged with before.

    Returns:
        ``true_reward``, ``topics`` (distinct per session), ``quality`` and ``interest`` (means over real items),
        ``in_history`` (items per session the user engaged with before), ``coverage`` (distinct items / catalogue),
        ``empty_slots`` (share of slots without an item).

    Example:
        >>> from torchrec_onerec.datasets.synthetic_config import SyntheticConfig
        >>> world = SyntheticWorld(SyntheticConfig(num_users=4, num_items=20, num_topics=4), seed=0)
        >>> same = np.flatnonzero(world.item_topic == 0)[:2]
        >>> p = session_profile(world, np.array([0, 1]), np.array([same, [same[0], -1]]), [np.array([same[1]])] * 2)
        >>> p["topics"], p["in_history"], p["coverage"], p["empty_slots"]
        (1.0, 0.5, 0.1, 0.25)
    """
    users = np.asarray(users, np.int64)
    sessions = np.asarray(sessions, np.int64)
    real = sessions >= 0
    items = np.where(real, sessions, 0)
    topics = world.item_topic[items]
    count = np.maximum(real.sum(axis=1), 1)
    distinct = np.array([len(set(t[r].tolist())) for t, r in zip(topics, real)], np.float64)
    interest = world.user_interest[users[:, None], topics]
    in_history = np.array([np.isin(s[r], h).sum() for s, r, h in zip(sessions, real, histories)], np.float64)
    served = np.unique(sessions[real])
    return {
        "true_reward": float(world.session_reward(users, sessions).mean()),
        "topics": float(distinct.mean()),
        "quality": float((np.where(real, world.item_quality[items], 0.0).sum(1) / count).mean()),
        "interest": float((np.where(real, interest, 0.0).sum(1) / count).mean()),
        "in_history": float(in_history.mean()),
        "coverage": float(len(served) / world.num_items),
        "empty_slots": float(1.0 - real.mean()) if real.size else 0.0,
    }


def world_diagnostics(
    world: SyntheticWorld, data: InteractionData, results: Mapping[str, EvalResult], samples: SampleSet, *, seed: int
) -> Dict[str, Dict[str, float]]:
    """Profiles of every arm's served sessions and of the world's reference sessions for the same users.

    Args:
        world (SyntheticWorld): the world that logged ``data``.
        data (InteractionData): the loaded synthetic data (contiguous ids -> the world's raw ids).
        results (Mapping[str, EvalResult]): each arm's evaluation over the same samples, in the same order.
        samples (SampleSet): the evaluated samples (``per_user["sample"]`` indexes them): their histories.
        seed (int): seeds the logging-policy and random references.

    Returns:
        ``{row name: profile}`` with the references first (``REFERENCES``), then the arms; every profile also
        has ``share_of_ceiling`` (its true reward over the ceiling's) and ``kind`` (1.0 for a reference, 0.0
        for an arm).
    """
    if not results:
        raise ValueError("results is empty: pass at least one evaluated arm")
    orders = [r.per_user["sample"] for r in results.values()]
    if any(len(o) != len(orders[0]) or (o != orders[0]).any() for o in orders[1:]):
        raise ValueError(
            f"the arms {list(results)} were not evaluated on the same users in the same order; "
            "evaluate them on one sample set"
        )
    evaluated = samples.subset(np.asarray(orders[0], np.int64))
    users = np.asarray(data.raw_user_ids).astype(np.int64)[evaluated.user]
    raw_histories = [world_item_ids(data.raw_item_ids, evaluated[i].history) for i in range(len(evaluated))]
    m = next(iter(results.values())).sessions.shape[2]
    rows: Dict[str, Dict[str, float]] = {}
    for name, sessions in reference_sessions(world, users, m, seed=seed, histories=raw_histories).items():
        rows[name] = {**session_profile(world, users, sessions, raw_histories), "kind": 1.0}
    for arm, result in results.items():
        world_items = world_item_ids(data.raw_item_ids, served_sessions(result))
        rows[arm] = {**session_profile(world, users, world_items, raw_histories), "kind": 0.0}
    ceiling = rows[CEILING]["true_reward"]
    for row in rows.values():
        row["share_of_ceiling"] = row["true_reward"] / ceiling if ceiling > 0 else float("nan")
    return rows


def diagnostics_markdown(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The diagnostics as a markdown table (references in italics), with a line on how to read it.

    Example:
        >>> row = {"true_reward": 2.0, "share_of_ceiling": 0.5, "topics": 2.0, "quality": 0.1, "interest": 0.3,
        ...        "in_history": 0.0, "coverage": 0.2, "empty_slots": 0.0}
        >>> print(diagnostics_markdown({"ceiling": {**row, "kind": 1.0}, "cascade": {**row, "kind": 0.0}}))
        ... # doctest: +NORMALIZE_WHITESPACE +ELLIPSIS
        | sessions | true reward | share of ceiling | topics / session | quality | interest |
          items in history | coverage |
        |---|---|---|---|---|---|---|---|
        | *ceiling* | 2.000 | 50.0% | 2.00 | 0.100 | 0.300 | 0.00 | 20.0% |
        | cascade | 2.000 | 50.0% | 2.00 | 0.100 | 0.300 | 0.00 | 20.0% |
        <BLANKLINE>
        Rows in italics are the world's own reference sessions for the same users...
    """
    header = [
        "sessions",
        "true reward",
        "share of ceiling",
        "topics / session",
        "quality",
        "interest",
        "items in history",
        "coverage",
    ]
    lines: List[str] = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in rows.items():
        label = f"*{name}*" if r.get("kind", 0.0) else name
        lines.append(
            f"| {label} | {r['true_reward']:.3f} | {r['share_of_ceiling']:.1%} | {r['topics']:.2f} | "
            f"{r['quality']:.3f} | {r['interest']:.3f} | {r['in_history']:.2f} | {r['coverage']:.1%} |"
        )
    lines += [
        "",
        "Rows in italics are the world's own reference sessions for the same users, built from its true "
        "response, not by a model. ceiling: greedy by true marginal reward; ceiling without z: the same without "
        "the user's idiosyncratic taste for each item, which nothing logged reveals for unseen items; ceiling "
        "from history: the same again with the user's interests estimated from their history's topics (what a "
        "model reading the history could reach, knowing every item exactly); top items: the best single items "
        "put together; logging policy: a fresh session of the policy that logged the data. Columns: distinct "
        "topics per session, mean item quality, the user's true interest in the items' topics, items the "
        "user engaged with before, distinct items served over all users as a share of the catalogue. Low "
        "interest points at personalisation, few topics at diversity, low quality at item quality, low "
        "coverage at popularity.",
    ]
    return "\n".join(lines)
