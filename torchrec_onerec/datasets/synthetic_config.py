"""Schema of the synthetic short-video world (the embedded default data set)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SyntheticConfig:
    """Sizes and difficulty of the synthetic world (see ``torchrec_onerec.datasets.synthetic``).

    Args:
        num_users: users in the world.
        num_items: items (videos) in the catalogue.
        num_topics: latent topics; each user has a mixture of interests over them, each item one main topic.
        content_dim: width of the item content embedding the tokenizer reads.
        num_days: days of logged traffic.
        sessions_per_user: mean logged sessions per user over all days (Poisson).
        impressions_per_session: items the logging policy shows in one session.
        interest_concentration: Dirichlet concentration of user interests (smaller: more focused users).
        noise: standard deviation of the user-item idiosyncratic affinity (larger: harder to predict).
        position_decay: per-position multiplicative drop of attention within a session (0: none).
        diversity_weight: how much a repeated topic within a session lowers engagement (0: none).
        logging_temperature: softmax temperature of the logging policy over true affinity (large: random).
        random_session_rate: share of sessions shown by a uniformly random policy instead of the logging policy
            (randomised traffic, as KuaiRand's randomly exposed videos); their rows have ``is_rand = 1``. The
            logging policy shows what it expects a user to like, so in its traffic what a session holds is
            confounded with who the user is (runs of one topic go to the users who like that topic most, and
            "more of the same" looks good to a reward model); in randomised sessions it is not. 0: none.
        start_date: first logged day, ``YYYY-MM-DD`` (UTC).
    """

    num_users: int = 5000
    num_items: int = 2000
    num_topics: int = 20
    content_dim: int = 32
    num_days: int = 14
    sessions_per_user: float = 6.0
    impressions_per_session: int = 8
    interest_concentration: float = 0.3
    noise: float = 0.5
    position_decay: float = 0.05
    diversity_weight: float = 0.3
    logging_temperature: float = 1.0
    random_session_rate: float = 0.0
    start_date: str = "2024-01-01"

    def __post_init__(self) -> None:
        for name in ("num_users", "num_items", "num_topics", "content_dim", "num_days", "impressions_per_session"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.synthetic.{name}={getattr(self, name)} must be >= 1")
        if self.num_topics > self.num_items:
            raise ValueError(
                f"data.synthetic.num_topics={self.num_topics} exceeds num_items={self.num_items}; lower num_topics"
            )
        for name in ("sessions_per_user", "interest_concentration", "logging_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"data.synthetic.{name}={getattr(self, name)} must be > 0")
        if not 0.0 <= self.random_session_rate <= 1.0:
            raise ValueError(f"data.synthetic.random_session_rate={self.random_session_rate} must lie in [0, 1]")
        for name in ("noise", "position_decay", "diversity_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.synthetic.{name}={getattr(self, name)} must be >= 0")
