"""Schema of the ``align`` config section: iterative preference alignment with DPO (docs/METHOD.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.optim_config import OptimConfig

REWARD_SOURCES = ("model", "ranker", "mix", "world")
OBJECTIVES = ("dpo", "grpo")


@dataclass
class AlignConfig:
    """How the generative model is aligned to a reward (``torchrec_onerec.alignment.ipa.align_iteratively``).

    Args:
        iterations: alignment iterations; after each, the aligned model becomes the next reference.
        sample_fraction: r_DPO, the share of training samples that get a preference pair in each iteration
            (paper: 1%; small data sets need more, up to 1.0). At least one sample is drawn.
        num_candidates: N, sessions beam-searched per sampled user (paper: 128; CPU runs: 16-32); the best and
            the worst by reward become the chosen and the rejected session.
        sampled_candidates: S in [0, N], how many of the N candidates are drawn from the model by constrained
            sampling (``generation.sampling``) instead of beam search: beams are the N most probable sessions and
            often differ in a slot or two, samples spread over what the model deems possible (on-policy
            exploration, as the OneRec technical report's RL samples). 0 (the paper): beam search only.
        sample_temperature: the temperature of those draws (1: the model's own distribution).
        objective: ``dpo`` (the paper: the best and the worst candidate of each sampled user form a pair) or
            ``grpo`` (group-relative policy optimisation: ``group_size`` of the candidates, each with its reward
            standardised over the user's candidates as its advantage, ``alignment.groups`` and ``.grpo``).
        group_size: G, even, <= num_candidates: under ``grpo``, the candidates a user's group keeps (the G/2
            best and the G/2 worst; each adds a training row).
        grpo_clip: eps of the GRPO ratio clip, in (0, 1).
        beta: DPO temperature beta on the log-probability ratios to the reference.
        dpo_weight: lambda in L = L_NTP + lambda * L_DPO (L_GRPO under ``objective=grpo``).
        chosen_nll_weight: mu, a third term mu * L_chosen: the mean negative log-likelihood per code of the chosen
            sessions (iterative RPO, Pang et al. 2024). DPO alone can widen a pair's margin by lowering the
            rejected session while the chosen one's probability falls too; this term raises the chosen session
            itself. 0 (the paper): DPO alone.
        batch_size: training samples per global batch (the pair rows of those samples come on top).
        optim: each iteration's epochs (passes over the training samples: every sample gives L_NTP, the sampled
            ones add their pair's L_DPO in the same batch), learning rates (constant by default) and weight
            decay; the optimisers start afresh every iteration (clipping from the ``train`` section).
        generation_batch_size: users per beam-search batch when sampling candidates and scoring generation.
        eval_users: held-out users (drawn once) whose generated sessions are scored before and after every
            iteration; 0 skips that evaluation.
        exclude_history: never generate an item of the user's history (as ``eval.exclude_history``).
        reward_source: what alignment maximises: ``model`` (the session reward model of ``train-reward``, the
            paper's method); ``ranker`` (the cascade's ranker, the OneRec technical report's choice: its combined
            item score summed over the session, ``alignment.rewards``); ``mix`` (both, each standardised over a
            user's candidates, weighted by ``ranker_weight``); or ``world`` (the synthetic world's true expected
            reward; synthetic data only: it separates what alignment can do from what the reward model's errors
            let it do, and is never a way to choose a config).
        disable_dropout: train the policy without dropout, so that its log-probabilities of a pair and the
            reference's (computed in eval mode) start equal and the DPO log-ratios measure only what training
            changed; False keeps the model's dropout (``model.dropout``) during alignment.
        ranker_weight: under ``reward_source=mix``, the ranker's weight; the reward model's is 1 - ranker_weight.
        ranker_diversity: with the ranker as reward (``ranker`` or ``mix``), the weight w of the cascade's MMR
            diversity term: each session item counts (1 - w) * its ranker score - w * its largest cosine to the
            items before it (the two-tower item vectors), as the ``cascade_rerank`` arm orders candidates. 0: the
            ranker's score alone, which knows nothing of diversity within a session.
        train_fraction: share of the training samples (drawn once, seeded) that alignment reads: L_NTP on them,
            pairs for ``sample_fraction`` of them. 1.0 (the paper) reads all; lower it where one pass over the
            training data per iteration is too long (large data on a CPU).

    Example:
        >>> AlignConfig().num_candidates, AlignConfig(sample_fraction=0.5).sample_fraction
        (128, 0.5)
        >>> AlignConfig(num_candidates=1)
        Traceback (most recent call last):
        ...
        torchrec_onerec.errors.ConfigError: align.num_candidates=1 must be >= 2: a pair needs a best and a worst session
    """

    iterations: int = 3
    sample_fraction: float = 0.01
    num_candidates: int = 128
    sampled_candidates: int = 0
    sample_temperature: float = 1.0
    objective: str = "dpo"
    group_size: int = 8
    grpo_clip: float = 0.2
    beta: float = 0.1
    dpo_weight: float = 1.0
    chosen_nll_weight: float = 0.0
    batch_size: int = 128
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(epochs=1, learning_rate=1e-4, sparse_learning_rate=0.01, weight_decay=0.01)
    )
    generation_batch_size: int = 32
    eval_users: int = 256
    exclude_history: bool = False
    train_fraction: float = 1.0
    reward_source: str = "model"
    ranker_weight: float = 0.5
    ranker_diversity: float = 0.0
    disable_dropout: bool = True

    def __post_init__(self) -> None:
        self.optim.check("align.optim")
        for name in ("iterations", "batch_size", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"align.{name}={getattr(self, name)} must be >= 1")
        if self.reward_source not in REWARD_SOURCES:
            raise ConfigError(
                f"align.reward_source={self.reward_source!r} must be one of {REWARD_SOURCES}: 'model' "
                "(the reward model), 'ranker' (the cascade's ranker), 'mix' (both) or 'world' (the "
                "synthetic world's true reward)"
            )
        for name in ("ranker_weight", "ranker_diversity"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"align.{name}={getattr(self, name)} must lie in [0, 1]")
        if not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"align.train_fraction={self.train_fraction} must lie in (0, 1] (1.0 = every sample)")
        if not 0.0 < self.sample_fraction <= 1.0:
            raise ConfigError(
                f"align.sample_fraction={self.sample_fraction} must lie in (0, 1] (the paper's r_DPO is 0.01)"
            )
        if self.num_candidates < 2:
            raise ConfigError(
                f"align.num_candidates={self.num_candidates} must be >= 2: a pair needs a best and a worst session"
            )
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"align.objective={self.objective!r} must be one of {OBJECTIVES}")
        if self.group_size < 2 or self.group_size % 2 or self.group_size > self.num_candidates:
            raise ConfigError(
                f"align.group_size={self.group_size} must be even, >= 2 and <= "
                f"align.num_candidates={self.num_candidates}"
            )
        if not 0.0 < self.grpo_clip < 1.0:
            raise ConfigError(f"align.grpo_clip={self.grpo_clip} must lie in (0, 1)")
        if not 0 <= self.sampled_candidates <= self.num_candidates:
            raise ConfigError(
                f"align.sampled_candidates={self.sampled_candidates} must lie in [0, "
                f"align.num_candidates={self.num_candidates}]"
            )
        for name in ("beta", "sample_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"align.{name}={getattr(self, name)} must be > 0")
        for name in ("dpo_weight", "chosen_nll_weight", "eval_users"):
            if getattr(self, name) < 0:
                raise ConfigError(f"align.{name}={getattr(self, name)} must be >= 0")
