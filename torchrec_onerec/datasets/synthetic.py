"""The synthetic short-video world: the embedded default data set and the simulator of docs/EVAL.md protocol C.

Protocol C (simulated A/B) needs a world that knows every user's true response to any recommended session,
and OneRec's session-wise generation, reward model and preference alignment (docs/METHOD.md sections 2-4) need
sessions whose order and diversity change what users do. This world provides both:

- Users have interests over ``num_topics`` topics (Dirichlet with ``interest_concentration``); each item has
  one main topic and a quality q(i) ~ N(0, QUALITY_STD).
- Affinity a(u, i) = INTEREST_SCALE * interest[u, topic(i)] + q(i) + noise * z(u, i). The idiosyncratic term
  z(u, i) ~ N(0, 1) is fixed per pair and computed from a hash of (seed, u, i) (splitmix64, Box-Muller), so any
  pair costs O(1) and no users x items matrix is ever stored, whatever the catalogue size.
- Responses at slot p = 0, 1, ... of a session, with c the number of earlier items of the same topic:
  P(click) = exp(-position_decay * p) * exp(-diversity_weight * c) * sigmoid(a + CLICK_BIAS),
  P(long_view) = P(click) * sigmoid(a + LONG_VIEW_BIAS), P(like) = P(long_view) * sigmoid(a + LIKE_BIAS):
  a long view needs a click and a like needs a long view, so P(like) <= P(long_view) <= P(click). A repeated
  item and an empty slot (-1) get 0. Order and diversity change the reward, so session-level choices matter.
- Item content (what a tokenizer reads) = topic centroid + q(i) * a quality direction + N(0, CONTENT_NOISE)
  per dimension: a noisy view of topic and quality that knows nothing of users.
- The logging policy shows ``impressions_per_session`` distinct items per session, drawn in order without
  replacement (Plackett-Luce) from (1 - LOGGING_EXPLORATION) * softmax(a / logging_temperature) +
  LOGGING_EXPLORATION / num_items; responses are sampled from the probabilities above.
- Randomised traffic: a share ``random_session_rate`` of the sessions (chosen from a stream of their own, so
  the other sessions are logged exactly as without it) shows distinct items drawn uniformly from the catalogue
  instead, marked ``is_rand = 1``.

The default world (5,000 users x 2,000 items, about 240k impressions) builds and logs in under a second on
one CPU core (0.8 s measured).
"""

from __future__ import annotations

import datetime
from typing import Dict, Optional, Tuple

import numpy as np
import pandas as pd

from torchrec_onerec.datasets.interactions import InteractionData
from torchrec_onerec.datasets.synthetic_arrays import in_blocks, pair_noise, sigmoid, top_k, user_block
from torchrec_onerec.datasets.synthetic_config import SyntheticConfig

INTEREST_SCALE = 6.0  # affinity gained from a topic holding all of a user's interest
QUALITY_STD = 0.5
CONTENT_NOISE = 0.5
CLICK_BIAS = -2.0
LONG_VIEW_BIAS = -0.5
LIKE_BIAS = -3.0
LOGGING_EXPLORATION = 0.1  # share of the logging policy spread uniformly over the catalogue
SESSION_GAP_MS = 3_600_000  # at least an hour from one session's last impression to the next session
IMPRESSION_GAP_MS = (5_000, 120_000)  # range of the gap between consecutive impressions of a session
DEFAULT_WEIGHTS: Dict[str, float] = {"click": 1.0, "long_view": 1.0, "like": 2.0}
_DAY_MS = 86_400_000
_QUALITY_TAGS = np.array([" quality_low", " quality_mid", " quality_high"])


def _parse_date_ms(text: str) -> int:
    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise ValueError(f"data.synthetic.start_date={text!r} is not a date; write it as YYYY-MM-DD") from None
    return int(day.timestamp()) * 1000


class SyntheticWorld:
    """A fully observed short-video world: latent user interests, items, true responses and a logged policy.

    Args:
        config (SyntheticConfig): sizes and difficulty.
        seed (int): the world and its log are a function of (config, seed); ``log()`` returns the same data
            on every call.

    Attributes:
        num_users, num_items: sizes.
        user_interest: [U, num_topics] float64 interests (rows sum to 1).
        item_topic: [I] int64 main topic per item.
        item_quality: [I] float64 quality per item.
        item_content: [I, content_dim] float32 content embedding.

    Example:
        >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
        >>> world.item_topic.shape, world.item_content.shape, world.item_content.dtype
        ((20,), (20, 32), dtype('float32'))
        >>> sorted(set(world.item_topic.tolist()))
        [0, 1, 2, 3]
    """

    SIGNALS = ("click", "long_view", "like")

    def __init__(self, config: SyntheticConfig, *, seed: int) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative int")
        if config.impressions_per_session > config.num_items:
            raise ValueError(
                f"data.synthetic.impressions_per_session={config.impressions_per_session} exceeds "
                f"num_items={config.num_items}; a session shows distinct items, so lower it"
            )
        self._session_slot_ms = SESSION_GAP_MS + (config.impressions_per_session - 1) * IMPRESSION_GAP_MS[1]
        if self._session_slot_ms > config.num_days * _DAY_MS:
            raise ValueError(
                f"data.synthetic.impressions_per_session={config.impressions_per_session}: a session plus its "
                f"gap lasts up to {self._session_slot_ms / 3.6e6:.1f} h, longer than num_days={config.num_days}; "
                "raise num_days or lower impressions_per_session"
            )
        self._start_ms = _parse_date_ms(config.start_date)
        self.config = config
        self.num_users, self.num_items = config.num_users, config.num_items
        world_seq, self._log_seq, self._random_seq = np.random.SeedSequence(int(seed)).spawn(3)
        rng = np.random.default_rng(world_seq)
        num_topics = config.num_topics
        self.user_interest = rng.dirichlet(np.full(num_topics, config.interest_concentration), size=self.num_users)
        topic = rng.integers(num_topics, size=self.num_items)
        topic[rng.permutation(self.num_items)[:num_topics]] = np.arange(num_topics)  # every topic has an item
        self.item_topic = topic.astype(np.int64)
        self.item_quality = rng.normal(0.0, QUALITY_STD, size=self.num_items)
        centroids = rng.normal(size=(num_topics, config.content_dim))
        direction = rng.normal(size=config.content_dim)
        direction /= np.linalg.norm(direction)
        content = centroids[self.item_topic] + self.item_quality[:, None] * direction  # [I, d]
        content += rng.normal(0.0, CONTENT_NOISE, size=content.shape)
        self.item_content = content.astype(np.float32)
        self._noise_key = rng.integers(2**64, dtype=np.uint64)

    def _affinity(
        self, users: np.ndarray, items: np.ndarray, interest: Optional[np.ndarray] = None, pair_term: bool = True
    ) -> np.ndarray:
        """True affinity a(u, i) for broadcastable arrays of valid user and item ids (not checked); ``interest``
        [b, T] (users [b, 1]) in place of the users' own, and no z(u, i) unless ``pair_term``."""
        if interest is None:
            topic_interest = self.user_interest[users, self.item_topic[items]]
        else:
            topic_interest = interest[np.arange(len(interest))[:, None], self.item_topic[items]]
        affinity = INTEREST_SCALE * topic_interest + self.item_quality[items]
        if pair_term:
            affinity = affinity + self.config.noise * pair_noise(self._noise_key, users, items, self.num_items)
        return affinity

    def item_probabilities(self, users: np.ndarray, sessions: np.ndarray) -> Dict[str, np.ndarray]:
        """True probability of each signal for every slot of each session, given the whole session.

        Args:
            users (np.ndarray): [B] int user ids.
            sessions (np.ndarray): [B, M] int item ids in display order, -1 for an empty slot.

        Returns:
            ``{signal: [B, M] float64}`` for each of ``SIGNALS``; 0 for empty slots and repeated items.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> probs = world.item_probabilities(np.array([0, 1]), np.array([[3, 5, 3], [7, -1, 2]]))
            >>> probs["click"].shape, float(probs["click"][0, 2]), float(probs["like"][1, 1])
            ((2, 3), 0.0, 0.0)
            >>> bool((probs["like"] <= probs["long_view"]).all() and (probs["long_view"] <= probs["click"]).all())
            True
        """
        users, sessions = self._check_sessions(users, sessions)
        click, long_view_given_click, like_given_long_view = self._responses(users, sessions)
        long_view = click * long_view_given_click
        return {"click": click, "long_view": long_view, "like": long_view * like_given_long_view}

    def session_reward(
        self, users: np.ndarray, sessions: np.ndarray, weights: Optional[Dict[str, float]] = None
    ) -> np.ndarray:
        """Expected reward of each session: sum over slots and signals of weight * probability.

        Args:
            users (np.ndarray): [B] int user ids.
            sessions (np.ndarray): [B, M] int item ids, -1 for an empty slot.
            weights (Optional[Dict[str, float]]): weight per signal; ``DEFAULT_WEIGHTS`` (click 1, long_view 1,
                like 2) when None; a signal left out weighs 0.

        Returns:
            [B] float64 expected rewards.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> reward = world.session_reward(np.array([0, 0]), np.array([[3, 5], [3, -1]]))
            >>> reward.shape, bool(reward[0] > reward[1] > 0)
            ((2,), True)
        """
        weights = self._check_weights(weights)
        probs = self.item_probabilities(users, sessions)
        reward = np.zeros(len(probs["click"]))
        for signal, weight in weights.items():
            reward += weight * probs[signal].sum(axis=1)
        return reward

    def best_items(self, users: np.ndarray, k: int, weights: Optional[Dict[str, float]] = None) -> np.ndarray:
        """Oracle: the k items of highest expected reward shown alone (first slot, no session effects).

        Args:
            users (np.ndarray): [B] int user ids.
            k (int): items per user, 1 <= k <= num_items.
            weights (Optional[Dict[str, float]]): as in ``session_reward``.

        Returns:
            [B, k] int64 item ids, best first.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> best = world.best_items(np.array([0, 1]), 3)
            >>> best.shape, bool((world.session_reward(np.array([0]), best[:1, :1]) >=
            ...                   world.session_reward(np.array([0]), best[:1, 1:2])).all())
            ((2, 3), True)
        """
        users = self._check_users(users)
        weights = self._check_weights(weights)
        self._check_item_count("k", k)
        return in_blocks(users, k, lambda block: top_k(self._item_values(block, weights), k), self.num_items)

    def log(self) -> InteractionData:
        """Logged traffic of the logging policy (see the module docstring), as canonical ``InteractionData``.

        Each user has Poisson(``sessions_per_user``) sessions, at least one (every user has traffic) and at
        most as many as fit in ``num_days``, at uniformly random times from ``start_date`` (UTC), at least an
        hour apart; inside a session impressions are 5 s to 2 min apart. Rows come user by user, session by
        session, in time order, M = ``impressions_per_session`` rows per session, so
        ``item_id.reshape(-1, M)`` recovers the sessions.

        Returns:
            InteractionData ``synthetic``: interactions (``user_id``, ``item_id``, ``timestamp`` int64 ms,
            ``date`` int64 YYYYMMDD, ``click``, ``long_view``, ``like``, ``is_rand`` int8 0/1), items (``item_id``,
            ``topic`` int64, ``quality`` float64, ``tags`` e.g. ``"topic_3 quality_high"``), users (``user_id``,
            ``main_interest`` int64: the top topic), raw ids ``arange``, ``item_embeddings = item_content``.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> data = world.log()
            >>> list(data.interactions.columns)
            ['user_id', 'item_id', 'timestamp', 'date', 'click', 'long_view', 'like', 'is_rand']
            >>> len(data.interactions) % world.config.impressions_per_session, data.num_users, data.num_items
            (0, 10, 20)
        """
        cfg, num_users, num_items = self.config, self.num_users, self.num_items
        m = cfg.impressions_per_session
        rng = np.random.default_rng(self._log_seq)
        span_ms = cfg.num_days * _DAY_MS
        n_sessions = np.clip(rng.poisson(cfg.sessions_per_user, size=num_users), 1, span_ms // self._session_slot_ms)
        first = np.concatenate([[0], np.cumsum(n_sessions)])  # [U + 1] first session row of each user
        session_user = np.repeat(np.arange(num_users), n_sessions)  # [S]
        num_sessions = len(session_user)

        # Start times: sorted uniform points on the span less one slot per session, plus one slot per earlier
        # session of the same user, so sessions are in order and at least SESSION_GAP_MS apart.
        rank = np.arange(num_sessions) - first[session_user]
        free_ms = span_ms - n_sessions[session_user] * self._session_slot_ms
        draw = np.floor(rng.random(num_sessions) * (free_ms + 1)).astype(np.int64)
        draw = draw[np.lexsort((draw, session_user))]  # sorted within each user
        start = self._start_ms + draw + rank * self._session_slot_ms  # [S]
        gaps = rng.integers(IMPRESSION_GAP_MS[0], IMPRESSION_GAP_MS[1] + 1, size=(num_sessions, m - 1))
        timestamp = start[:, None] + np.concatenate([np.zeros((num_sessions, 1), np.int64), gaps.cumsum(1)], 1)

        sessions = np.empty((num_sessions, m), dtype=np.int64)
        step = user_block(num_items)
        for lo in range(0, num_users, step):
            hi = min(lo + step, num_users)
            policy = self._logging_policy(np.arange(lo, hi))  # [b, I]
            rows = session_user[first[lo] : first[hi]] - lo
            # Exponential race: items ordered by arrival E_i / p_i (E_i ~ Exp(1)) are a Plackett-Luce draw from p.
            arrival = rng.standard_exponential((len(rows), num_items), dtype=np.float32) / policy[rows]
            sessions[first[lo] : first[hi]] = top_k(-arrival, m)
        is_rand = self._randomise(sessions)

        click_p, long_view_p, like_p = self._responses(session_user, sessions)
        click = rng.random(sessions.shape) < click_p
        long_view = click & (rng.random(sessions.shape) < long_view_p)
        like = long_view & (rng.random(sessions.shape) < like_p)

        when = pd.DatetimeIndex(pd.to_datetime(timestamp.ravel(), unit="ms"))
        interactions = pd.DataFrame(
            {
                "user_id": np.repeat(session_user, m).astype(np.int64),
                "item_id": sessions.ravel(),
                "timestamp": timestamp.ravel().astype(np.int64),
                "date": (when.year * 10000 + when.month * 100 + when.day).to_numpy().astype(np.int64),
                "click": click.ravel().astype(np.int8),
                "long_view": long_view.ravel().astype(np.int8),
                "like": like.ravel().astype(np.int8),
                "is_rand": np.repeat(is_rand, m).astype(np.int8),
            }
        )
        quality_bucket = np.digitize(self.item_quality, [-QUALITY_STD / 2, QUALITY_STD / 2])
        tags = np.char.add(np.char.add("topic_", self.item_topic.astype(str)), _QUALITY_TAGS[quality_bucket])
        items_table = pd.DataFrame(
            {"item_id": np.arange(num_items), "topic": self.item_topic, "quality": self.item_quality, "tags": tags}
        )
        users_table = pd.DataFrame(
            {"user_id": np.arange(num_users), "main_interest": self.user_interest.argmax(axis=1).astype(np.int64)}
        )
        return InteractionData(
            name="synthetic",
            interactions=interactions,
            items=items_table,
            raw_user_ids=np.arange(num_users),
            raw_item_ids=np.arange(num_items),
            users=users_table,
            item_embeddings=self.item_content,
            dropped={},
        ).validate()

    def _logging_policy(self, users: np.ndarray) -> np.ndarray:
        """[b, I] float32 display probabilities of the logging policy for a block of valid users (rows sum to 1)."""
        logits = self._affinity(users[:, None], np.arange(self.num_items)[None, :]) / self.config.logging_temperature
        policy = np.exp(logits - logits.max(axis=1, keepdims=True))
        policy = (1 - LOGGING_EXPLORATION) * policy / policy.sum(axis=1, keepdims=True)
        return (policy + LOGGING_EXPLORATION / self.num_items).astype(np.float32)

    def logging_sessions(self, users: np.ndarray, m: int, *, seed: int) -> np.ndarray:
        """Sessions of m items the logging policy would show these users now (a fresh Plackett-Luce draw).

        Args:
            users (np.ndarray): [B] int user ids.
            m (int): items per session, 1 <= m <= num_items.
            seed (int): the draw is a function of (world, users, m, seed).

        Returns:
            [B, m] int64 distinct item ids per row, in display order.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> s = world.logging_sessions(np.array([0, 3]), 4, seed=1)
            >>> s.shape, all(len(set(row)) == 4 for row in s.tolist())
            ((2, 4), True)
        """
        users = self._check_users(users)
        self._check_item_count("m", m)
        rng = np.random.default_rng([int(seed), 0x106])

        def draw(block: np.ndarray) -> np.ndarray:
            arrival = rng.standard_exponential((len(block), self.num_items), dtype=np.float32)
            return top_k(-arrival / self._logging_policy(block), m)

        return in_blocks(users, m, draw, self.num_items)

    def greedy_sessions(
        self,
        users: np.ndarray,
        m: int,
        weights: Optional[Dict[str, float]] = None,
        *,
        interest: Optional[np.ndarray] = None,
        pair_term: bool = True,
    ) -> np.ndarray:
        """The ceiling: each user's session of m items filled slot by slot with the item of highest true marginal
        reward given the slots already filled.

        A slot's expected reward depends on the items before it (same-topic count, repeats) and never on the
        items after it, so slot p's marginal reward is the item's own reward at p; the greedy pick at p is the
        unused item maximising novelty(same-topic count so far) * item value (attention at p is common to all).
        With ``interest`` or ``pair_term=False`` the rule is the same over a world that knows less: every item's
        topic and quality, but not z(u, i), or only the interests given.

        Args:
            users (np.ndarray): [B] int user ids.
            m (int): items per session, 1 <= m <= num_items.
            weights (Optional[Dict[str, float]]): as in ``session_reward``.
            interest (Optional[np.ndarray]): [B, num_topics] interests to use in place of the users' own (None:
                their true interests).
            pair_term (bool): include the pair term z(u, i) in the affinity.

        Returns:
            [B, m] int64 distinct item ids.

        Example:
            >>> world = SyntheticWorld(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=0)
            >>> users = np.arange(10)
            >>> greedy = world.greedy_sessions(users, 3)
            >>> top = world.best_items(users, 3)
            >>> bool((world.session_reward(users, greedy) >= world.session_reward(users, top) - 1e-12).all())
            True
        """
        users = self._check_users(users)
        weights = self._check_weights(weights)
        self._check_item_count("m", m)
        if interest is not None and np.shape(interest) != (len(users), self.config.num_topics):
            raise ValueError(
                f"interest has shape {np.shape(interest)}, expected ({len(users)}, {self.config.num_topics}): "
                "one row of topic interests per user"
            )

        def greedy(positions: np.ndarray) -> np.ndarray:
            block = users[positions]
            rows_interest = None if interest is None else np.asarray(interest, np.float64)[positions]
            value = self._item_values(block, weights, interest=rows_interest, pair_term=pair_term)  # [b, I]
            rows = np.arange(len(block))
            shown = np.zeros((len(block), self.config.num_topics))  # same-topic items placed so far
            used = np.zeros(value.shape, dtype=bool)
            picks = np.empty((len(block), m), dtype=np.int64)
            for p in range(m):
                novelty = np.exp(-self.config.diversity_weight * shown[:, self.item_topic])
                pick = np.where(used, -np.inf, novelty * value).argmax(axis=1)
                picks[:, p] = pick
                used[rows, pick] = True
                shown[rows, self.item_topic[pick]] += 1
            return picks

        return in_blocks(np.arange(len(users)), m, greedy, self.num_items)

    def _item_values(
        self,
        users: np.ndarray,
        weights: Dict[str, float],
        *,
        interest: Optional[np.ndarray] = None,
        pair_term: bool = True,
    ) -> np.ndarray:
        """[b, I] expected weighted reward of every item alone in slot 0 for valid users (``_affinity``'s options)."""
        a = self._affinity(users[:, None], np.arange(self.num_items)[None, :], interest, pair_term)
        click = sigmoid(a + CLICK_BIAS)
        long_view = click * sigmoid(a + LONG_VIEW_BIAS)
        signals = {"click": click, "long_view": long_view, "like": long_view * sigmoid(a + LIKE_BIAS)}
        return sum(weight * signals[signal] for signal, weight in weights.items())

    def _check_item_count(self, name: str, value: int) -> None:
        """Items asked for per user (``name`` = the argument): an int in [1, num_items]."""
        if not isinstance(value, (int, np.integer)) or not 1 <= value <= self.num_items:
            raise ValueError(f"{name}={value!r} must be an int in [1, num_items={self.num_items}]")

    def _randomise(self, sessions: np.ndarray) -> np.ndarray:
        """Replace a ``random_session_rate`` share of the logged sessions [S, M], in place, by uniformly random
        distinct items; returns [S] bool, True for a replaced session."""
        rng = np.random.default_rng(self._random_seq)
        chosen = rng.random(len(sessions)) < self.config.random_session_rate
        rows, m, num_items = np.flatnonzero(chosen), sessions.shape[1], self.num_items
        sessions[rows] = in_blocks(rows, m, lambda block: top_k(rng.random((len(block), num_items)), m), num_items)
        return chosen

    def _responses(self, users: np.ndarray, sessions: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """P(click), P(long_view | click), P(like | long_view), each [B, M], for checked inputs."""
        m = sessions.shape[1]
        valid = sessions >= 0
        items = np.where(valid, sessions, 0)
        a = self._affinity(users[:, None], items)  # [B, M]
        topics = self.item_topic[items]
        earlier = np.tri(m, m, k=-1, dtype=bool)[None] & valid[:, None, :]  # [B, M, M]: slot q is before slot p
        same_topic_before = ((topics[:, :, None] == topics[:, None, :]) & earlier).sum(axis=2)
        repeated = ((items[:, :, None] == items[:, None, :]) & earlier).any(axis=2)
        attention = np.exp(-self.config.position_decay * np.arange(m))  # [M]
        novelty = np.exp(-self.config.diversity_weight * same_topic_before)
        click = np.where(valid & ~repeated, attention * novelty * sigmoid(a + CLICK_BIAS), 0.0)
        return click, sigmoid(a + LONG_VIEW_BIAS), sigmoid(a + LIKE_BIAS)

    def _check_users(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users)
        if users.ndim != 1 or not (np.issubdtype(users.dtype, np.integer) or users.size == 0):
            raise ValueError(f"users must be a 1-D integer array, got shape {users.shape} and dtype {users.dtype}")
        users = users.astype(np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.num_users):
            raise ValueError(
                f"users span [{users.min()}, {users.max()}] but the world has {self.num_users} users "
                f"(ids 0..{self.num_users - 1})"
            )
        return users

    def _check_sessions(self, users: np.ndarray, sessions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        users = self._check_users(users)
        sessions = np.asarray(sessions)
        if sessions.ndim != 2 or not (np.issubdtype(sessions.dtype, np.integer) or sessions.size == 0):
            raise ValueError(
                f"sessions must be a 2-D [B, M] integer array of item ids, got shape {sessions.shape} "
                f"and dtype {sessions.dtype}"
            )
        if sessions.shape[0] != len(users):
            raise ValueError(f"sessions has {sessions.shape[0]} rows but users has {len(users)}; pass one per user")
        sessions = sessions.astype(np.int64)
        if sessions.size and (sessions.min() < -1 or sessions.max() >= self.num_items):
            raise ValueError(
                f"sessions hold item ids in [{sessions.min()}, {sessions.max()}]; valid ids are "
                f"0..{self.num_items - 1}, and -1 marks an empty slot"
            )
        return users, sessions

    def _check_weights(self, weights: Optional[Dict[str, float]]) -> Dict[str, float]:
        if weights is None:
            return dict(DEFAULT_WEIGHTS)
        unknown = set(weights) - set(self.SIGNALS)
        if unknown:
            raise ValueError(f"weights has unknown signals {sorted(unknown)}; the signals are {self.SIGNALS}")
        if not all(np.isfinite(float(w)) for w in weights.values()):
            raise ValueError(f"weights={weights} must be finite numbers")
        return {signal: float(w) for signal, w in weights.items()}


def load_synthetic(config: SyntheticConfig, *, seed: int) -> Tuple[InteractionData, SyntheticWorld]:
    """Build the synthetic world and its logged traffic (the project's embedded default data set).

    Args:
        config (SyntheticConfig): sizes and difficulty.
        seed (int): the data and the world are a function of (config, seed).

    Returns:
        (data, world): the logged ``InteractionData`` and the world that answers protocol C's questions.

    Example:
        >>> data, world = load_synthetic(SyntheticConfig(num_users=10, num_items=20, num_topics=4), seed=1)
        >>> data.name, data.num_users, world.num_items
        ('synthetic', 10, 20)
    """
    world = SyntheticWorld(config, seed=seed)
    return world.log(), world
