"""Schema of generative-model training (docs/METHOD.md section 2 on TorchRec: DMP, fused sparse optimiser, schedule,
checkpoints, model selection; facts on what works on CPU in ../shared/TORCHREC-CPU.md) and of the TorchRec stack
settings every model's training shares (sparse optimiser, clipping, sharding type, collective timeout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

from torchrec_onerec.errors import ConfigError
from torchrec_onerec.optim_config import OptimConfig

SPARSE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad", "adam")
CPU_FUSED_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
SHARDING_TYPES = ("", "table_wise", "row_wise", "column_wise")
AMP_MODES = ("none", "bf16")
TARGETS = ("positives", "impressions")
RANDOM_EXPOSURES = ("all", "engaged")
# The keys of the ``train`` section that every model's training reads (the rest is the generative model's own):
# what the fingerprints of the stages that train other models hash, so that retraining the generative model
# (``train.optim``, ``train.targets`` ...) does not redo them.
STACK_KEYS = ("grad_clip", "sparse_optimizer", "sharding_type", "collective_timeout_s")


@dataclass
class TrainConfig:
    """How the OneRec model is trained, and the TorchRec stack settings of every model's training.

    Args:
        optim: the OneRec model's epochs, learning rates, weight decay, schedule and early stopping (stop after
            ``optim.patience`` validations without improvement).
        grad_clip: max global L2 norm of the dense gradients (0 disables clipping; the norm is still logged).
            Every model's training.
        eval_every_epochs: validate every this many epochs, and after the last one (model selection on
            ``selection_metric``). Set it to ``optim.epochs`` to validate, and keep, the final model only: the
            choice when the validation set is too small to tell epochs apart (configs/ml-100k.yaml).
        sparse_optimizer: fused optimiser of the tables: ``rowwise_adagrad`` (one accumulator per row),
            ``adagrad``, ``sgd``, or ``adam`` (CUDA only: fbgemm fuses Adam on GPUs, not on CPUs). Every model's.
        selection_metric: validation metric that selects the best model and drives early stopping (higher is
            better): ``ndcg@10`` for protocol A; for protocol B set the key of the configured metric.
        max_steps: stop after this many optimiser steps in total (0 = no limit). The schedule still spans
            ``optim.epochs``, so a run stopped here and resumed with a larger value follows the same trajectory.
        checkpoint_every_steps: also checkpoint every this many steps inside an epoch (0 = only at epoch ends
            and at the end of training).
        log_every_steps: write a training-metrics record every this many steps.
        sharding_type: force one TorchRec sharding type on every table of every model (``table_wise``,
            ``row_wise``, ``column_wise``); ``""`` lets the planner choose. ``data_parallel`` fails on CPU
            (fbgemm's dense kernel pools sequence features), so it is not offered.
        collective_timeout_s: timeout of every collective: a rank that dies ends the job after at most this long.
            It must exceed one validation pass, which runs on rank 0 while the other ranks wait.
        amp: ``bf16`` runs the model's forward under ``torch.autocast`` in bfloat16 (matrix products and
            attention in bf16, losses and softmax in float32; the weights, the optimisers and the TorchRec tables
            stay float32); ``none`` trains in float32. bf16 needs no loss scaling; fp16 would, and the tables'
            fused optimiser cannot unscale, so it is not offered.
        label_weights: feedback signal -> weight (protocol B; ``split.labels`` names the signals): a target item's
            codes count ``1 + sum_s weight_s * label_s`` times in the NTP loss, so the items users went on to
            watch long or like teach more than bare clicks (the paper trains on its high-quality sessions; this
            keeps every session and weighs its items). ``{}``: every target code counts once.
        targets: what the generator learns to write (protocol B): ``positives`` (runs of m positives, the split's
            own training samples) or ``impressions`` (runs of m consecutive training-day impressions, clicked or
            not, after the same positive histories: the paper's exposed sessions,
            ``data.impression_targets``); with ``impressions``, ``label_weights`` sets what a click adds.
        random_exposures: with ``targets=impressions``, which impressions of a randomly exposing policy (rows with
            ``is_rand = 1``: KuaiRand's random log, the synthetic world's randomised sessions) are targets: ``all``
            or ``engaged`` (only those with a positive or some feedback signal). A random exposure says nothing
            about what a policy should show, only the user's response to it does; shown-only random rows teach the
            generator a uniform floor under every item. Data without ``is_rand`` is unaffected.
        sampled_siblings: with ``model.item_head=prefix``, train the item level with a sampled softmax within
            the cluster: each target is scored against its own output row and this many rows drawn uniformly from
            its cluster (one draw per cluster per batch, shared by its targets), each drawn logit corrected by
            log(cluster size / this), so that a step reads about (clusters in the batch) x this rows rather than
            every row of every cluster its targets fall in, which on a large catalogue is nearly the whole table.
            0 (default): every sibling. Generation, alignment and log-probabilities always normalise over the whole
            cluster.
    """

    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            epochs=20,
            learning_rate=1e-3,
            sparse_learning_rate=0.05,
            weight_decay=0.01,
            warmup_steps=100,
            lr_decay="cosine",
            min_lr_ratio=0.1,
            patience=3,
        )
    )
    grad_clip: float = 1.0
    eval_every_epochs: int = 1
    sparse_optimizer: str = "rowwise_adagrad"
    selection_metric: str = "ndcg@10"
    max_steps: int = 0
    checkpoint_every_steps: int = 0
    log_every_steps: int = 10
    sharding_type: str = ""
    collective_timeout_s: float = 1800.0
    amp: str = "none"
    label_weights: Dict[str, float] = field(default_factory=dict)
    targets: str = "positives"
    random_exposures: str = "all"
    sampled_siblings: int = 0

    def __post_init__(self) -> None:
        self.optim.check("train.optim")
        if self.collective_timeout_s <= 0:
            raise ConfigError(f"train.collective_timeout_s={self.collective_timeout_s} must be > 0")
        for name in ("grad_clip", "max_steps", "checkpoint_every_steps", "sampled_siblings"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 0")
        for name in ("eval_every_epochs", "log_every_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ConfigError(
                f"train.sparse_optimizer={self.sparse_optimizer!r} must be one of {list(SPARSE_OPTIMIZERS)}"
            )
        if not self.selection_metric:
            raise ConfigError("train.selection_metric is empty; name a validation metric such as 'ndcg@10'")
        if self.sharding_type not in SHARDING_TYPES:
            hint = " (data_parallel fails on CPU for sequence tables)" if self.sharding_type == "data_parallel" else ""
            raise ConfigError(f"train.sharding_type={self.sharding_type!r} must be one of {list(SHARDING_TYPES)}{hint}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"train.amp={self.amp!r} must be one of {list(AMP_MODES)}")
        if self.targets not in TARGETS:
            raise ConfigError(f"train.targets={self.targets!r} must be one of {list(TARGETS)}")
        if self.random_exposures not in RANDOM_EXPOSURES:
            raise ConfigError(
                f"train.random_exposures={self.random_exposures!r} must be one of {list(RANDOM_EXPOSURES)}"
            )
        negative = {k: v for k, v in self.label_weights.items() if v < 0}
        if negative:
            raise ConfigError(f"train.label_weights={dict(self.label_weights)}: weights must be >= 0 ({negative})")

    def signal_weights(self, signals: Sequence[str]) -> List[float]:
        """``label_weights`` in the order of a sample set's ``signals`` (0 for a signal it does not name).

        Raises:
            ConfigError: a weighted signal that the samples do not carry.
        """
        missing = [name for name in self.label_weights if name not in signals]
        if missing:
            raise ConfigError(
                f"train.label_weights names {missing}, which the training samples do not carry (their "
                f"signals: {list(signals)}); weigh only signals of split.labels present in the data"
            )
        return [float(self.label_weights.get(name, 0.0)) for name in signals]
